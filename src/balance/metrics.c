/* Load, skew and selectivity metrics (ALGORITHMS.md section 3; carl/balance.h). */
#include <stdlib.h>
#include <string.h>

#include "carl/balance.h"
#include "kern/kern.h"

double carl_score_entropy(const float *s, int E, int score) {
  double a = 0, h = 0;
  if (score == CARL_SCORE_SIGMOID)
    for (int e = 0; e < E; e++) a += s[e];
  else
    a = 1;
  for (int e = 0; e < E; e++) {
    double p = s[e] / a;
    if (p > 0) h -= p * log(p);
  }
  return h;
}


void carl_load_experts(const int32_t *experts, int64_t T, int k, int E, double *load) {
  for (int e = 0; e < E; e++) load[e] = 0;
  for (int64_t i = 0; i < T * k; i++) {
    int32_t e = experts[i];
    if (e >= 0 && e < E) load[e] += 1;
  }
}

carl_status carl_load_groups(const double *expert_load, int E, const carl_topo_t *topo, const carl_placement_t *place,
                             int level, double *out, int *ngroups) {
  if (!expert_load || !out || E < 1) return carl_fail(CARL_ERR_INVALID, "group loads: NULL argument or E < 1");
  const int D = topo ? topo->devices : (place ? place->D : 1);
  const int P = topo && topo->devices_per_node > 0 ? topo->devices_per_node : D;
  if (D < 1) return carl_fail(CARL_ERR_INVALID, "group loads: %d devices", D);
  const int G = level == 1 ? (D + P - 1) / P : D;
  for (int g = 0; g < G; g++) out[g] = 0;
  if (!place) {
    for (int e = 0; e < E; e++) {
      int d = (int)((int64_t)e * D / E);
      out[level == 1 ? d / P : d] += expert_load[e];
    }
  } else {
    if (place->E != E) return carl_fail(CARL_ERR_INVALID, "placement: %d experts, loads have %d", place->E, E);
    if (place->D != D) return carl_fail(CARL_ERR_INVALID, "placement: %d devices, topology has %d", place->D, D);
    int *nrep = calloc((size_t)E, sizeof *nrep);
    if (!nrep) return carl_fail(CARL_ERR_NOMEM, "group loads: out of memory");
    for (int i = 0; i < place->D * place->slots; i++) {
      int32_t e = place->slot_expert[i];
      if (e >= E || e < -1) {
        free(nrep);
        return carl_fail(CARL_ERR_INVALID, "placement: slot %d holds expert %d, outside 0..%d", i, e, E - 1);
      }
      if (e >= 0) nrep[e]++;
    }
    for (int e = 0; e < E; e++)
      if (nrep[e] == 0 && expert_load[e] > 0) {
        free(nrep);
        return carl_fail(CARL_ERR_INVALID, "placement: expert %d has load but no replica", e);
      }
    for (int d = 0; d < place->D; d++)
      for (int j = 0; j < place->slots; j++) {
        int32_t e = place->slot_expert[d * place->slots + j];
        if (e >= 0) out[level == 1 ? d / P : d] += expert_load[e] / nrep[e];
      }
    free(nrep);
  }
  if (ngroups) *ngroups = G;
  return CARL_OK;
}

static int carl__dcmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

void carl_skew(const double *load, int n, carl_skew_t *o) {
  memset(o, 0, sizeof *o);
  if (n < 1) return;
  double sum = 0, mx = load[0], mn = load[0];
  for (int i = 0; i < n; i++) {
    sum += load[i];
    mx = load[i] > mx ? load[i] : mx;
    mn = load[i] < mn ? load[i] : mn;
  }
  double mean = sum / n;
  o->max = mx;
  o->min = mn;
  o->mean = mean;
  if (!(mean > 0)) return;
  o->max_over_mean = mx / mean;
  o->maxvio = mx / mean - 1;
  double v = 0;
  for (int i = 0; i < n; i++) v += (load[i] - mean) * (load[i] - mean);
  o->cv = sqrt(v / n) / mean;
  /* Gini from the sorted loads: sum_i sum_j |x_i - x_j| = 2 sum_i (2i - n + 1) x_(i), i = 0.. */
  double *x = malloc((size_t)n * sizeof *x);
  if (!x) {
    o->gini = NAN;
    return;
  }
  memcpy(x, load, (size_t)n * sizeof *x);
  qsort(x, (size_t)n, sizeof *x, carl__dcmp);
  double g = 0;
  for (int i = 0; i < n; i++) g += (2.0 * i - n + 1) * x[i];
  o->gini = 2 * g / (2.0 * n * (double)n * mean);
  free(x);
}

double carl_drop_rate(const int32_t *experts, int64_t T, int k) {
  if (T * k <= 0) return 0;
  int64_t d = 0;
  for (int64_t i = 0; i < T * k; i++) d += experts[i] < 0;
  return (double)d / (double)(T * k);
}

void carl_token_selectivity(const float *s, int E, int k, const int32_t *ex, int32_t *idx, float *val, double *retained,
                            double *jaccard) {
  carl_kern_topk_row(s, E, k, idx, val);
  double num = 0, den = 0;
  int inter = 0, nsel = 0;
  for (int j = 0; j < k; j++) {
    den += val[j];
    if (ex[j] < 0 || ex[j] >= E) continue;
    num += s[ex[j]];
    nsel++;
    for (int i = 0; i < k; i++) inter += idx[i] == ex[j];
  }
  *retained = den > 0 ? num / den : 1.0;
  const int uni = nsel + k - inter;
  *jaccard = uni > 0 ? (double)inter / uni : 1.0;
}

/* Per-token selectivity figures, summed in fixed blocks: which = 0 retained mass, 1 Jaccard,
 * 2 token entropy. */
static carl_status carl__per_token(const float *logits, int64_t T, int E, int score, const int32_t *experts, int k,
                                   int which, double *result) {
  if (!logits || !result || (which < 2 && !experts)) return carl_fail(CARL_ERR_INVALID, "metric: NULL argument");
  if (T < 1 || E < 1 || k < 1 || k > E)
    return carl_fail(CARL_ERR_INVALID, "metric: T = %lld, E = %d, k = %d out of range", (long long)T, E, k);
  const int64_t nb = (T + CARL_KERN_BLOCK - 1) / CARL_KERN_BLOCK;
  double *part = calloc((size_t)nb, sizeof *part);
  if (!part) return carl_fail(CARL_ERR_NOMEM, "metric: out of memory");
  int64_t bad = INT64_MAX;
  int nomem = 0;
#pragma omp parallel if((int64_t)T * E >= CARL_OMP_MIN_WORK) reduction(min : bad) reduction(| : nomem)
  {
    float *s = malloc((size_t)E * sizeof *s), *val = malloc((size_t)k * sizeof *val);
    int32_t *idx = malloc((size_t)k * sizeof *idx);
    if (!s || !val || !idx) nomem = 1;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
      if (!s || !val || !idx) continue;
      int64_t t1 = (b + 1) * CARL_KERN_BLOCK < T ? (b + 1) * CARL_KERN_BLOCK : T;
      for (int64_t t = b * CARL_KERN_BLOCK; t < t1; t++) {
        if (isnan(carl_kern_score_row(logits + t * E, E, score, s))) {
          if (t < bad) bad = t;
          continue;
        }
        const int32_t *ex = experts ? experts + t * k : NULL;
        if (which == 2) {
          part[b] += carl_score_entropy(s, E, score);
          continue;
        }
        double ret, jac;
        carl_token_selectivity(s, E, k, ex, idx, val, &ret, &jac);
        part[b] += which == 0 ? ret : jac;
      }
    }
    free(s);
    free(val);
    free(idx);
  }
  carl_status st = CARL_OK;
  if (nomem) st = carl_fail(CARL_ERR_NOMEM, "metric: out of memory");
  else if (bad != INT64_MAX) st = carl_fail(CARL_ERR_NUMERIC, "logits: token %lld has a NaN or infinite value", (long long)bad);
  if (st == CARL_OK) {
    double a = 0;
    for (int64_t b = 0; b < nb; b++) a += part[b];
    *result = a / (double)T;
  }
  free(part);
  return st;
}

carl_status carl_retained_mass(const float *logits, int64_t T, int E, int score, const int32_t *experts, int k, double *rho) {
  return carl__per_token(logits, T, E, score, experts, k, 0, rho);
}

carl_status carl_topk_jaccard(const float *logits, int64_t T, int E, int score, const int32_t *experts, int k,
                              double *jaccard) {
  return carl__per_token(logits, T, E, score, experts, k, 1, jaccard);
}

carl_status carl_routing_entropy(const float *logits, int64_t T, int E, int score, const int32_t *experts, int k,
                                 double *token_entropy, double *load_entropy) {
  if (token_entropy) CARL_TRY(carl__per_token(logits, T, E, score, NULL, 1, 2, token_entropy));
  if (load_entropy) {
    if (!experts || k < 1) return carl_fail(CARL_ERR_INVALID, "load entropy: experts is NULL");
    double *l = calloc((size_t)E, sizeof *l);
    if (!l) return carl_fail(CARL_ERR_NOMEM, "load entropy: out of memory");
    carl_load_experts(experts, T, k, E, l);
    double L = 0, h = 0;
    for (int e = 0; e < E; e++) L += l[e];
    for (int e = 0; e < E; e++)
      if (l[e] > 0) h -= l[e] / L * log(l[e] / L);
    *load_entropy = h;
    free(l);
  }
  return CARL_OK;
}
