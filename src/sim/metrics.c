/* Per-step load, skew and selectivity metrics of ALGORITHMS.md section 3, from the balance module. */
#include <stdlib.h>
#include <string.h>

#include "carl/balance.h"
#include "carl/sim.h"

carl_status carl_sim_metrics(const carl_topo_t *topo, const carl_placement_t *pl, int64_t T, int E, int k, int score,
                             const float *z, const int32_t *experts, carl_sim_metrics_t *m) {
  memset(m, 0, sizeof *m);
  if (T < 1 || E < 1 || k < 1 || k > E) return carl_fail(CARL_ERR_INVALID, "metrics: T, E >= 1 and 1 <= k <= E required");
  const int D = topo ? topo->devices : 1, N = topo ? topo->nodes : 1;
  double *load = malloc(((size_t)E + D + N) * sizeof(double));
  if (!load) return carl_fail(CARL_ERR_NOMEM, "metrics: out of memory");
  double *dload = load + E, *nload = dload + D;
  carl_status st = CARL_OK;
  int ng = 0;
  carl_skew_t sk;
  carl_load_experts(experts, T, k, E, load);
  carl_skew(load, E, &sk);
  m->skew_expert = sk.max_over_mean;
  m->cv_expert = sk.cv;
  if ((st = carl_load_groups(load, E, topo, pl, 0, dload, &ng)) != CARL_OK) goto out;
  carl_skew(dload, ng, &sk);
  m->skew_device = sk.max_over_mean;
  if ((st = carl_load_groups(load, E, topo, pl, 1, nload, &ng)) != CARL_OK) goto out;
  carl_skew(nload, ng, &sk);
  m->skew_node = sk.max_over_mean;
  m->drop_rate = carl_drop_rate(experts, T, k);
  if ((st = carl_retained_mass(z, T, E, score, experts, k, &m->retained)) != CARL_OK) goto out;
  if ((st = carl_topk_jaccard(z, T, E, score, experts, k, &m->jaccard)) != CARL_OK) goto out;
  st = carl_routing_entropy(z, T, E, score, NULL, k, &m->entropy, NULL);
out:
  free(load);
  return st;
}
