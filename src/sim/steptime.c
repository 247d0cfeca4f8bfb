/* Step time inside the simulated training loop: the layer time of carl/steptime.h for one
 * layer's decision, added to the step's compute and layer-time columns. */
#include <stdlib.h>

#include "carl/steptime.h"
#include "sim/sim_internal.h"

carl_status carl__sim_steptime(const carl_sim_config_t *cfg, const carl_topo_t *topo, const carl_placement_t *pl,
                               const int32_t *experts, const int32_t *src, int64_t T, int k, const carl_cost_t *cost,
                               double acc[3]) {
  if (!cfg->step_time) return CARL_OK;
  const int D = topo->devices;
  int64_t *rows = malloc(sizeof(int64_t) * 2 * (size_t)D);
  if (!rows) return carl_fail(CARL_ERR_NOMEM, "sim: out of memory for the step time of %d devices", D);
  int64_t *tokens = rows + D;
  carl_steptime_t st;
  carl_status rc = carl_steptime_load(topo, pl, experts, src, T, k, rows, tokens);
  if (rc == CARL_OK) rc = carl_steptime_layer(topo, cost->dispatch, rows, tokens, &cfg->steptime, &st);
  free(rows);
  if (rc != CARL_OK) return rc;
  acc[0] += st.compute_s * 1e3;
  acc[1] += st.compute_mean_s * 1e3;
  acc[2] += st.layer_s * 1e3;
  return CARL_OK;
}
