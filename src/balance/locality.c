/* LocMoE (ALGORITHMS.md 2.8): the locality loss mu * KL(D_c || D_l) per node with its gradient
 * (research/routers.md 2.3, the discrete reading of the paper's continuous definition), and the
 * minimum expert capacity of Theorem 1 (research/routers.md 2.4). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "carl/balance.h"

carl_status carl_locality_loss(int64_t T, int E, const float *s, const int32_t *tok_node, int nodes,
                               const uint8_t *local, double eps, double mu, double *value, float *dlogits) {
  if (T < 0 || E < 1) return carl_fail(CARL_ERR_INVALID, "locality loss: T=%lld, E=%d", (long long)T, E);
  if (nodes < 1) return carl_fail(CARL_ERR_INVALID, "locality loss: nodes: %d must be >= 1", nodes);
  if (!(eps > 0 && eps < 1)) return carl_fail(CARL_ERR_INVALID, "loc_eps: %g must lie in (0, 1)", eps);
  if (!(mu >= 0) || !isfinite(mu)) return carl_fail(CARL_ERR_INVALID, "mu: %g must be finite and >= 0", mu);
  CARL_ASSERT(value && (T == 0 || (s && tok_node)) && local);
  double *Dc = calloc((size_t)nodes * E, sizeof *Dc);   /* [nodes, E] sums, then means */
  double *G = calloc((size_t)nodes * E, sizeof *G);     /* [nodes, E] dL/dD_c */
  int64_t *cnt = calloc((size_t)nodes, sizeof *cnt);
  if (!Dc || !G || !cnt) {
    free(Dc); free(G); free(cnt);
    return carl_fail(CARL_ERR_NOMEM, "locality loss: %d x %d", nodes, E);
  }
  for (int64_t t = 0; t < T; t++) {
    int n = tok_node[t];
    CARL_ASSERT(n >= 0 && n < nodes);
    cnt[n]++;
    for (int e = 0; e < E; e++) Dc[(size_t)n * E + e] += s[t * E + e];
  }
  int used = 0;
  for (int n = 0; n < nodes; n++) used += cnt[n] > 0;
  double L = 0;
  for (int n = 0; n < nodes && used > 0; n++) {
    if (!cnt[n]) continue;
    int nloc = 0;
    for (int e = 0; e < E; e++) nloc += local[(size_t)n * E + e] != 0;
    for (int e = 0; e < E; e++) {
      double dl;
      if (nloc == 0 || nloc == E) dl = 1.0 / E;
      else dl = local[(size_t)n * E + e] ? (1 - eps) / nloc : eps / (E - nloc);
      double dc = Dc[(size_t)n * E + e] / (double)cnt[n];
      Dc[(size_t)n * E + e] = dc;
      double lg = log(dc > DBL_MIN ? dc : DBL_MIN) - log(dl);
      if (dc > 0) L += dc * lg;
      /* d/dD_c of D_c ln(D_c/D_l) = ln(D_c/D_l) + 1; the +1 cancels through the softmax Jacobian
       * (sum_e ds_e/dz_j = 0) but is kept so the formula reads as written. */
      G[(size_t)n * E + e] = mu / used * (lg + 1);
    }
  }
  *value = used ? mu * L / used : 0;
  if (dlogits) {
    /* D_c(e) = (1/T_n) sum_t s[t,e];  ds_e/dz_j = s_e (delta_ej - s_j)
     * => dL/dz[t,j] = (1/T_n) s_j (G_j - sum_e G_e s_e). */
    for (int64_t t = 0; t < T; t++) {
      int n = tok_node[t];
      const double *g = G + (size_t)n * E;
      const float *st = s + t * E;
      double dot = 0;
      for (int e = 0; e < E; e++) dot += g[e] * st[e];
      double inv = 1.0 / (double)cnt[n];
      for (int j = 0; j < E; j++) dlogits[t * E + j] += (float)(inv * st[j] * (g[j] - dot));
    }
  }
  free(Dc); free(G); free(cnt);
  return CARL_OK;
}

/* ---- Theorem 1 ------------------------------------------------------------------------------------ */
/* Continued fraction of I_x(a, b) (modified Lentz; Numerical Recipes 6.4), valid for
 * x < (a + 1) / (a + b + 2). */
static double betacf(double a, double b, double x) {
  const double tiny = 1e-300, eps = 1e-15;
  double qab = a + b, qap = a + 1, qam = a - 1;
  double c = 1, d = 1 - qab * x / qap;
  if (fabs(d) < tiny) d = tiny;
  d = 1 / d;
  double h = d;
  for (int m = 1; m <= 100000; m++) {
    int m2 = 2 * m;
    double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    if (fabs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (fabs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    if (fabs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (fabs(c) < tiny) c = tiny;
    d = 1 / d;
    double del = d * c;
    h *= del;
    if (fabs(del - 1) < eps) break;
  }
  return h;
}

/* x^a (1-x)^b / (a B(a, b)) * cf: the lower tail I_x(a, b) when x is below the switch point. */
static double betai_lower(double a, double b, double x) {
  if (x <= 0) return 0;
  double lf = lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x);
  return exp(lf) * betacf(a, b, x) / a;
}

double carl_betai(double a, double b, double x) {
  if (!(a > 0) || !(b > 0) || !(x >= 0 && x <= 1)) return NAN;
  if (x == 0) return 0;
  if (x == 1) return 1;
  if (x < (a + 1) / (a + b + 2)) return betai_lower(a, b, x);
  return 1 - betai_lower(b, a, 1 - x);
}

double carl_betai_upper(double a, double b, double x) {
  if (!(a > 0) || !(b > 0) || !(x >= 0 && x <= 1)) return NAN;
  if (x == 0) return 1;
  if (x == 1) return 0;
  if (x < (a + 1) / (a + b + 2)) return 1 - betai_lower(a, b, x);
  return betai_lower(b, a, 1 - x); /* 1 - I_x(a, b) = I_{1-x}(b, a) */
}

double carl_locmoe_p_delta(double delta, int d) {
  if (d < 2 || isnan(delta)) return NAN;
  if (delta <= 0) return 1;
  if (delta >= 1) return 0;
  return carl_betai_upper(0.5, (d - 1) / 2.0, delta * delta);
}

int64_t carl_locmoe_ec_min(double delta, int d, int E) {
  if (E < 1) return -1;
  double p = carl_locmoe_p_delta(delta, d);
  if (isnan(p)) return -1;
  double v = ceil(1.0 / (E * p)); /* p = 0 gives +inf */
  const double cap = (double)(INT64_MAX / 4);
  return v >= cap ? INT64_MAX / 4 : (int64_t)v;
}

