/* Balancing losses with exact gradients w.r.t. the logits (carl/balance.h): the Switch/GShard
 * auxiliary loss (= CARL's L_E), CARL's group loss L_G, and the ST-MoE router z-loss. */
#include <stdlib.h>
#include <string.h>

#include "carl/balance.h"
#include "kern/kern.h"

/* p = softmax(z) (score 0) or sigmoid(z) / sum sigmoid(z) (score 1), from s = score_row's output;
 * returns the sum of sigmoids (1 for softmax). */
static float carl__prob_row(const float *s, int E, int score, float *p) {
  if (score != CARL_SCORE_SIGMOID) {
    memcpy(p, s, (size_t)E * sizeof *p);
    return 1.0f;
  }
  double a = 0;
  for (int e = 0; e < E; e++) a += s[e];
  for (int e = 0; e < E; e++) p[e] = (float)(s[e] / a);
  return (float)a;
}

static carl_status carl__bad(const float *logits, int64_t t, int E) {
  const float *z = logits + t * E;
  int e = 0;
  while (e < E && isfinite(z[e])) e++;
  return carl_fail(CARL_ERR_NUMERIC, "logits: token %lld, expert %d is not finite", (long long)t, e < E ? e : 0);
}

carl_status carl_loss_linear_p(const float *logits, int64_t T, int E, int score, const double *c, double *value,
                               double *P, float *dlogits) {
  if (!logits || !c || !value) return carl_fail(CARL_ERR_INVALID, "balance loss: NULL argument");
  if (T < 1 || E < 1) return carl_fail(CARL_ERR_INVALID, "balance loss: T = %lld, E = %d must be >= 1", (long long)T, E);
  const int64_t nb = (T + CARL_KERN_BLOCK - 1) / CARL_KERN_BLOCK;
  double *part = calloc((size_t)nb * (size_t)E, sizeof *part);
  if (!part) return carl_fail(CARL_ERR_NOMEM, "balance loss: out of memory");
  int64_t bad = INT64_MAX;
  int nomem = 0;
#pragma omp parallel if((int64_t)T * E >= CARL_OMP_MIN_WORK) reduction(min : bad) reduction(| : nomem)
  {
    float *s = malloc((size_t)E * sizeof *s), *p = malloc((size_t)E * sizeof *p);
    if (!s || !p) nomem = 1;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
      if (!s || !p) continue;
      int64_t t1 = (b + 1) * CARL_KERN_BLOCK < T ? (b + 1) * CARL_KERN_BLOCK : T;
      double *pp = part + b * E;
      for (int64_t t = b * CARL_KERN_BLOCK; t < t1; t++) {
        if (isnan(carl_kern_score_row(logits + t * E, E, score, s))) {
          if (t < bad) bad = t;
          continue;
        }
        float A = carl__prob_row(s, E, score, p);
        for (int e = 0; e < E; e++) pp[e] += p[e];
        if (!dlogits) continue;
        /* value = sum_e c_e P_e, P_e = (1/T) sum_t p[t,e]  ->  dvalue/dp[t,e] = c_e / T */
        double dot = 0;
        for (int e = 0; e < E; e++) dot += (double)p[e] * c[e];
        float *dz = dlogits + t * E;
        if (score == CARL_SCORE_SIGMOID) {
          /* p = sig / A: dp_e/dz_b = sig_b (1 - sig_b) / A * (delta_eb - p_e) */
          for (int e = 0; e < E; e++) dz[e] += (float)((double)s[e] * (1.0 - s[e]) / A * (c[e] - dot) / (double)T);
        } else {
          for (int e = 0; e < E; e++) dz[e] += (float)((double)p[e] * (c[e] - dot) / (double)T);
        }
      }
    }
    free(s);
    free(p);
  }
  carl_status st = CARL_OK;
  if (nomem) st = carl_fail(CARL_ERR_NOMEM, "balance loss: out of memory");
  else if (bad != INT64_MAX) st = carl__bad(logits, bad, E);
  if (st == CARL_OK) {
    double v = 0;
    for (int e = 0; e < E; e++) {
      double a = 0;
      for (int64_t b = 0; b < nb; b++) a += part[b * E + e];
      a /= (double)T;
      if (P) P[e] = a;
      v += c[e] * a;
    }
    *value = v;
  }
  free(part);
  return st;
}

static carl_status carl__fractions(const int32_t *experts, int64_t T, int k, int E, double *f) {
  if (!experts) return carl_fail(CARL_ERR_INVALID, "balance loss: experts is NULL");
  if (k < 1) return carl_fail(CARL_ERR_INVALID, "k: %d, must be >= 1", k);
  for (int64_t i = 0; i < T * k; i++)
    if (experts[i] >= E) return carl_fail(CARL_ERR_INVALID, "experts: entry %lld is %d, outside -1..%d", (long long)i, experts[i], E - 1);
  carl_load_experts(experts, T, k, E, f);
  for (int e = 0; e < E; e++) f[e] /= (double)T * (double)k;
  return CARL_OK;
}

carl_status carl_loss_expert(const float *logits, int64_t T, int E, int score, const int32_t *experts, int k, double coef,
                             double *value, float *dlogits) {
  double *c = calloc((size_t)E, sizeof *c);
  if (!c) return carl_fail(CARL_ERR_NOMEM, "aux loss: out of memory");
  carl_status st = carl__fractions(experts, T, k, E, c);
  if (st == CARL_OK) {
    for (int e = 0; e < E; e++) c[e] *= coef * E;
    st = carl_loss_linear_p(logits, T, E, score, c, value, NULL, dlogits);
  }
  free(c);
  return st;
}

/* c_e = coef * f'_{group(e)}, f'_g = mean of f over the experts of g. */
static carl_status carl__group_coef(const double *f, int E, const int32_t *group, int G, double coef, double *c) {
  if (!group || G < 1) return carl_fail(CARL_ERR_INVALID, "group loss: group map is NULL or G = %d", G);
  double *fg = calloc((size_t)G, sizeof *fg);
  int *ng = calloc((size_t)G, sizeof *ng);
  if (!fg || !ng) {
    free(fg);
    free(ng);
    return carl_fail(CARL_ERR_NOMEM, "group loss: out of memory");
  }
  carl_status st = CARL_OK;
  for (int e = 0; e < E && st == CARL_OK; e++) {
    if (group[e] < 0 || group[e] >= G) st = carl_fail(CARL_ERR_INVALID, "group of expert %d: %d, outside 0..%d", e, group[e], G - 1);
    else {
      fg[group[e]] += f[e];
      ng[group[e]]++;
    }
  }
  if (st == CARL_OK)
    for (int e = 0; e < E; e++) c[e] = coef * fg[group[e]] / ng[group[e]];
  free(fg);
  free(ng);
  return st;
}

carl_status carl_loss_group(const float *logits, int64_t T, int E, int score, const int32_t *experts, int k,
                            const int32_t *group, int G, double coef, double *value, float *dlogits) {
  double *f = calloc((size_t)E, sizeof *f), *c = calloc((size_t)E, sizeof *c);
  carl_status st = (!f || !c) ? carl_fail(CARL_ERR_NOMEM, "group loss: out of memory") : CARL_OK;
  if (st == CARL_OK) st = carl__fractions(experts, T, k, E, f);
  if (st == CARL_OK) st = carl__group_coef(f, E, group, G, coef, c);
  if (st == CARL_OK) st = carl_loss_linear_p(logits, T, E, score, c, value, NULL, dlogits);
  free(f);
  free(c);
  return st;
}

/* cE = coef_E * E * f (L_E), cG = coef_G * f' of the expert's group (L_G); f from load [E] (kept
 * pairs per expert) when given, else from experts. */
static carl_status carl__dual_coef(const int32_t *experts, const double *load, int64_t T, int k, int E,
                                   const int32_t *group, int G, double coef_E, double coef_G, double *cE, double *cG) {
  double *f = calloc((size_t)E, sizeof *f);
  carl_status st = f ? CARL_OK : carl_fail(CARL_ERR_NOMEM, "dual loss: out of memory");
  if (st == CARL_OK && load)
    for (int e = 0; e < E; e++) f[e] = load[e] / ((double)T * (double)k);
  else if (st == CARL_OK)
    st = carl__fractions(experts, T, k, E, f);
  if (st == CARL_OK) st = carl__group_coef(f, E, group, G, coef_G, cG);
  for (int e = 0; st == CARL_OK && e < E; e++) cE[e] = coef_E * E * f[e];
  free(f);
  return st;
}

carl_status carl_loss_dual(const float *logits, int64_t T, int E, int score, const int32_t *experts, int k,
                           const int32_t *group, int G, double coef_E, double coef_G, double *L_E, double *L_G,
                           float *dlogits) {
  double *cE = calloc((size_t)E, sizeof *cE), *cG = calloc((size_t)E, sizeof *cG), *c = calloc((size_t)E, sizeof *c),
         *P = calloc((size_t)E, sizeof *P);
  carl_status st = (!c || !cE || !cG || !P) ? carl_fail(CARL_ERR_NOMEM, "dual loss: out of memory") : CARL_OK;
  if (st == CARL_OK) st = carl__dual_coef(experts, NULL, T, k, E, group, G, coef_E, coef_G, cE, cG);
  if (st == CARL_OK) {
    for (int e = 0; e < E; e++) c[e] = cE[e] + cG[e];
    double v;
    st = carl_loss_linear_p(logits, T, E, score, c, &v, P, dlogits);
  }
  if (st == CARL_OK) {
    double a = 0, b = 0;
    for (int e = 0; e < E; e++) {
      a += cE[e] * P[e];
      b += cG[e] * P[e];
    }
    if (L_E) *L_E = a;
    if (L_G) *L_G = b;
  }
  free(c);
  free(cE);
  free(cG);
  free(P);
  return st;
}

carl_status carl_loss_dual_value(const int32_t *experts, const double *load, int64_t T, int k, int E, const double *psum,
                                 const int32_t *group, int G, double coef_E, double coef_G, double *L_E, double *L_G) {
  if ((!experts && !load) || !psum) return carl_fail(CARL_ERR_INVALID, "dual loss: NULL argument");
  if (T < 1 || E < 1) return carl_fail(CARL_ERR_INVALID, "dual loss: T = %lld, E = %d must be >= 1", (long long)T, E);
  double *cE = calloc((size_t)E, sizeof *cE), *cG = calloc((size_t)E, sizeof *cG);
  carl_status st = (!cE || !cG) ? carl_fail(CARL_ERR_NOMEM, "dual loss: out of memory") : CARL_OK;
  if (st == CARL_OK) st = carl__dual_coef(experts, load, T, k, E, group, G, coef_E, coef_G, cE, cG);
  if (st == CARL_OK) {
    double a = 0, b = 0;
    for (int e = 0; e < E; e++) {
      a += cE[e] * (psum[e] / (double)T);
      b += cG[e] * (psum[e] / (double)T);
    }
    if (L_E) *L_E = a;
    if (L_G) *L_G = b;
  }
  free(cE);
  free(cG);
  return st;
}

double carl_loss_expert_value(const double *load, const double *psum, int64_t T, int k, int E, double coef) {
  double v = 0;
  for (int e = 0; e < E; e++) v += load[e] / ((double)T * k) * (psum[e] / (double)T);
  return coef * E * v;
}

carl_status carl_loss_z(const float *logits, int64_t T, int E, double coef, double *value, float *dlogits) {
  if (!logits || !value) return carl_fail(CARL_ERR_INVALID, "z-loss: NULL argument");
  if (T < 1 || E < 1) return carl_fail(CARL_ERR_INVALID, "z-loss: T = %lld, E = %d must be >= 1", (long long)T, E);
  const int64_t nb = (T + CARL_KERN_BLOCK - 1) / CARL_KERN_BLOCK;
  double *part = calloc((size_t)nb, sizeof *part);
  if (!part) return carl_fail(CARL_ERR_NOMEM, "z-loss: out of memory");
  int64_t bad = INT64_MAX;
  int nomem = 0;
#pragma omp parallel if((int64_t)T * E >= CARL_OMP_MIN_WORK) reduction(min : bad) reduction(| : nomem)
  {
    float *s = malloc((size_t)E * sizeof *s);
    if (!s) nomem = 1;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
      if (!s) continue;
      int64_t t1 = (b + 1) * CARL_KERN_BLOCK < T ? (b + 1) * CARL_KERN_BLOCK : T;
      for (int64_t t = b * CARL_KERN_BLOCK; t < t1; t++) {
        float lse = carl_kern_score_row(logits + t * E, E, CARL_SCORE_SOFTMAX, s);
        if (isnan(lse)) {
          if (t < bad) bad = t;
          continue;
        }
        part[b] += (double)lse * lse;
        if (dlogits) {
          double g = coef * 2.0 * lse / (double)T;
          float *dz = dlogits + t * E;
          for (int e = 0; e < E; e++) dz[e] += (float)(g * s[e]);
        }
      }
    }
    free(s);
  }
  carl_status st = CARL_OK;
  if (nomem) st = carl_fail(CARL_ERR_NOMEM, "z-loss: out of memory");
  else if (bad != INT64_MAX) st = carl__bad(logits, bad, E);
  if (st == CARL_OK) {
    double v = 0;
    for (int64_t b = 0; b < nb; b++) v += part[b];
    *value = coef * v / (double)T;
  }
  free(part);
  return st;
}
