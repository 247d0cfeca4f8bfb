/* Placement refresh inside the simulated training loop (the `traffic` algorithm of the placement
 * module on the accumulated statistics), and the migration it costs. */
#include <string.h>

#include "carl/place.h"
#include "sim/sim_internal.h"

carl_status carl__sim_refresh(const carl_topo_t *topo, const carl_placement_t *old, const carl_place_stats_t *stats,
                              int layer, double expert_bytes, carl_placement_t *out, double *migrate_s) {
  carl_place_input_t in;
  CARL_TRY(carl_place_stats_layer(stats, layer, &in));
  carl_place_opts_t o;
  carl_place_opts_default(&o);
  o.algo = CARL_PLACE_TRAFFIC;
  o.slots = old->slots;
  CARL_TRY(carl_place_compute(topo, &in, &o, out));
  carl_migration_t mig;
  carl_status st = carl_place_migrate(topo, old, out, 1, expert_bytes, &mig);
  if (st != CARL_OK) {
    carl_placement_free(out);
    return st;
  }
  *migrate_s = mig.time_s;
  carl_migration_free(&mig);
  return CARL_OK;
}
