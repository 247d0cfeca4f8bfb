/* Per-step load, skew and selectivity metrics of ALGORITHMS.md section 3. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/sim.h"

/* ---- metrics --------------------------------------------------------------------------------- */
static double max_over_mean(const double *v, int n) {
  double mx = 0, sum = 0;
  for (int i = 0; i < n; i++) {
    sum += v[i];
    if (v[i] > mx) mx = v[i];
  }
  return sum > 0 ? mx / (sum / n) : 1.0;
}

/* indices of the k largest of v[0..n) (ties: lower index first), in descending order */
static void topk_idx(const float *v, int n, int k, int *idx) {
  for (int j = 0; j < k; j++) idx[j] = -1;
  for (int e = 0; e < n; e++) {
    int pos = k;
    while (pos > 0 && (idx[pos - 1] < 0 || v[e] > v[idx[pos - 1]])) pos--;
    if (pos >= k) continue;
    for (int j = k - 1; j > pos; j--) idx[j] = idx[j - 1];
    idx[pos] = e;
  }
}

carl_status carl_sim_metrics(const carl_topo_t *topo, const carl_placement_t *pl, int64_t T, int E, int k,
                             const float *z, const int32_t *experts, const int32_t *src, carl_sim_metrics_t *m) {
  memset(m, 0, sizeof *m);
  if (T < 1 || E < 1 || k < 1 || k > E) return carl_fail(CARL_ERR_INVALID, "metrics: T, E >= 1 and 1 <= k <= E required");
  const int D = topo ? topo->devices : 1, N = topo ? topo->nodes : 1;
  double *eload = calloc((size_t)E, sizeof(double));
  double *dload = calloc((size_t)D, sizeof(double));
  double *nload = calloc((size_t)N, sizeof(double));
  float *s = malloc((size_t)E * sizeof(float));
  int *top = malloc((size_t)k * sizeof(int));
  if (!eload || !dload || !nload || !s || !top) {
    free(eload); free(dload); free(nload); free(s); free(top);
    return carl_fail(CARL_ERR_NOMEM, "metrics: out of memory");
  }
  int64_t dropped = 0;
  double ret = 0, jac = 0, ent = 0;
  for (int64_t t = 0; t < T; t++) {
    const float *zt = z + (size_t)t * E;
    const int32_t *ex = experts + (size_t)t * k;
    double mx = -INFINITY, sum = 0;
    for (int e = 0; e < E; e++)
      if (zt[e] > mx) mx = zt[e];
    for (int e = 0; e < E; e++) sum += exp((double)zt[e] - mx);
    double h = 0;
    for (int e = 0; e < E; e++) {
      double ls = (double)zt[e] - mx - log(sum);
      s[e] = (float)exp(ls);
      h -= exp(ls) * ls;
    }
    ent += h;
    topk_idx(s, E, k, top);
    double best = 0, got = 0;
    int inter = 0, chosen = 0;
    for (int j = 0; j < k; j++) best += s[top[j]];
    for (int j = 0; j < k; j++) {
      int e = ex[j];
      if (e < 0) {
        dropped++;
        continue;
      }
      if (e >= E) {
        free(eload); free(dload); free(nload); free(s); free(top);
        return carl_fail(CARL_ERR_INVALID, "metrics: expert id %d out of range [0, %d)", e, E);
      }
      chosen++;
      got += s[e];
      eload[e] += 1;
      for (int i = 0; i < k; i++)
        if (top[i] == e) inter++;
      int a = src ? src[t] : (int)(t * D / T);
      int dev = (topo && pl) ? carl_plan_replica(topo, pl, e, a, t) : (pl ? pl->home[e] : 0);
      if (dev >= 0 && dev < D) {
        dload[dev] += 1;
        nload[topo ? carl_topo_node(topo, dev) : 0] += 1;
      }
    }
    ret += best > 0 ? got / best : 0;
    int uni = chosen + k - inter;
    jac += uni > 0 ? (double)inter / uni : 0;
  }
  m->skew_expert = max_over_mean(eload, E);
  m->skew_device = max_over_mean(dload, D);
  m->skew_node = max_over_mean(nload, N);
  double mean = 0, var = 0;
  for (int e = 0; e < E; e++) mean += eload[e];
  mean /= E;
  for (int e = 0; e < E; e++) var += (eload[e] - mean) * (eload[e] - mean);
  m->cv_expert = mean > 0 ? sqrt(var / E) / mean : 0;
  m->drop_rate = (double)dropped / ((double)T * k);
  m->retained = ret / (double)T;
  m->jaccard = jac / (double)T;
  m->entropy = ent / (double)T;
  free(eload); free(dload); free(nload); free(s); free(top);
  return CARL_OK;
}
