/* Per-step load, skew and selectivity metrics of ALGORITHMS.md section 3, from the balance module. */
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include "carl/balance.h"
#include "carl/step.h"
#include "kern/kern.h"

/* Retained mass, Jaccard with the unconstrained top-k and routing entropy in one pass over the
 * tokens (one score row each), with the per-token terms of carl_retained_mass, carl_topk_jaccard
 * and carl_routing_entropy (tests/test_sim_run.c checks the agreement). */
static carl_status selectivity(const float *z, int64_t T, int E, int k, int score, const int32_t *experts,
                               carl_step_metrics_t *m) {
  float *s = malloc((size_t)E * sizeof(float)), *val = malloc((size_t)k * sizeof(float));
  int32_t *idx = malloc((size_t)k * sizeof(int32_t));
  if (!s || !val || !idx) {
    free(s); free(val); free(idx);
    return carl_fail(CARL_ERR_NOMEM, "metrics: out of memory");
  }
  double ret = 0, jac = 0, ent = 0;
  carl_status st = CARL_OK;
  for (int64_t t = 0; t < T; t++) {
    if (isnan(carl_kern_score_row(z + (size_t)t * E, E, score, s))) {
      st = carl_fail(CARL_ERR_NUMERIC, "logits: token %lld has a NaN or infinite value", (long long)t);
      break;
    }
    ent += carl_score_entropy(s, E, score);
    double r1, j1;
    carl_token_selectivity(s, E, k, experts + (size_t)t * k, idx, val, &r1, &j1);
    ret += r1;
    jac += j1;
  }
  m->retained = ret / (double)T;
  m->jaccard = jac / (double)T;
  m->entropy = ent / (double)T;
  free(s); free(val); free(idx);
  return st;
}

carl_status carl_step_metrics(const carl_topo_t *topo, const carl_placement_t *pl, int64_t T, int E, int k, int score,
                              const float *z, const int32_t *experts, carl_step_metrics_t *m, double *load_expert,
                              double *load_device, double *load_node) {
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
  st = selectivity(z, T, E, k, score, experts, m);
  if (load_expert) memcpy(load_expert, load, sizeof(double) * (size_t)E);
  if (load_device) memcpy(load_device, dload, sizeof(double) * (size_t)D);
  if (load_node) memcpy(load_node, nload, sizeof(double) * (size_t)N);
out:
  free(load);
  return st;
}
