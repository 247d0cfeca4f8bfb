/* bip: BIP-based balancing (Yuan Sun, arXiv 2502.15451; research/routers.md 4.2, reconstruction
 * from the LP dual). Per-expert duals q (state across steps): S_t = TopK(s - q), gates from s.
 * After the step, T_iter times (fp64):
 *   p_i = max(0, (k+1)-th largest_j (s_ij - q_j))
 *   q_j = max(0, (floor(kT/E)+1)-th largest_i (s_ij - p_i))
 * Route with the old q, then update (as Loss-Free and QB do: no leak from future tokens).
 * clamp = 0 drops the max(0, .) (the equality-constrained, quantile-balancing variant).
 * State: q [E] (float64 state file). */
#include <stdlib.h>

#include "route/router_impl.h"

typedef struct {
  int E;
  int iters;
  int clamp;
  double *q;  /* [E] duals */
  float *nq;  /* [E] -q, the selection bias */
} bip_t;

static carl_status bip_init(carl_router_t *r) {
  bip_t *st = calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "bip: out of memory");
  r->state = st;
  CARL_TRY(carl_router_opt_int(r, "T_iter", 1, 1000, &st->iters));
  CARL_TRY(carl_router_opt_int(r, "clamp", 0, 1, &st->clamp));
  return CARL_OK;
}

static carl_status bip_alloc(bip_t *st, int E) {
  st->q = calloc((size_t)E, sizeof *st->q);
  st->nq = calloc((size_t)E, sizeof *st->nq);
  if (!st->q || !st->nq) return carl_fail(CARL_ERR_NOMEM, "bip: out of memory");
  st->E = E;
  return CARL_OK;
}

static carl_status bip_size(carl_router_t *r, int E) {
  bip_t *st = r->state;
  if (st->E == E) return CARL_OK;
  if (st->E != 0) return carl_fail(CARL_ERR_STATE, "bip: duals have %d entries but the logits have E = %d", st->E, E);
  return bip_alloc(st, E);
}

static carl_status bip_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  CARL_TRY(bip_size(r, in->E));
  bip_t *st = r->state;
  for (int e = 0; e < st->E; e++) st->nq[e] = (float)-st->q[e];
  return carl_route_topk_biased(r, in, out, st->nq, 1, NULL);
}

/* The m-th largest (1-based) of a[0..n-1]; reorders a. Quickselect with median-of-three pivots. */
static double kth_largest(double *a, int64_t n, int64_t m) {
  int64_t lo = 0, hi = n - 1, want = m - 1;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    double x = a[lo], y = a[mid], z = a[hi];
    double piv = (x > y) ? ((y > z) ? y : (x > z ? z : x)) : ((x > z) ? x : (y > z ? z : y));
    int64_t i = lo, j = hi;
    while (i <= j) { /* descending: larger values to the left */
      while (a[i] > piv) i++;
      while (a[j] < piv) j--;
      if (i <= j) {
        double t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else return a[want];
  }
  return a[want];
}

static carl_status bip_update(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out) {
  (void)out;
  CARL_TRY(bip_size(r, in->E));
  bip_t *st = r->state;
  const int64_t T = in->T;
  const int E = in->E, k = (int)r->opt[CARL_OPT_K];
  const int score = (int)r->opt[CARL_OPT_SCORE];
  float *s = malloc((size_t)T * (size_t)E * sizeof *s);
  double *p = malloc((size_t)T * sizeof *p);
  if (!s || !p) {
    free(s);
    free(p);
    return carl_fail(CARL_ERR_NOMEM, "bip: out of memory for the dual update (T = %lld)", (long long)T);
  }
  carl_status rc = carl_route_scores(NULL, in->logits, T, E, score, s);
  const int64_t cap = (int64_t)floor((double)k * (double)T / (double)E);
  int nomem = 0;
  for (int it = 0; it < st->iters && rc == CARL_OK; it++) {
#pragma omp parallel if((int64_t)T * E >= CARL_OMP_MIN_WORK) reduction(| : nomem)
    {
      double *row = malloc((size_t)E * sizeof *row);
      double *col = malloc((size_t)T * sizeof *col);
      if (!row || !col) nomem = 1;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; t++) {
        if (!row) continue;
        if (k + 1 > E) {
          p[t] = 0;
          continue;
        }
        for (int e = 0; e < E; e++) row[e] = (double)s[t * E + e] - st->q[e];
        double v = kth_largest(row, E, k + 1);
        p[t] = st->clamp && v < 0 ? 0 : v;
      }
#pragma omp for schedule(static)
      for (int e = 0; e < E; e++) {
        if (!col) continue;
        if (cap + 1 > T) {
          st->q[e] = 0;
          continue;
        }
        for (int64_t t = 0; t < T; t++) col[t] = (double)s[t * E + e] - p[t];
        double v = kth_largest(col, T, cap + 1);
        st->q[e] = st->clamp && v < 0 ? 0 : v;
      }
      free(row);
      free(col);
    }
    if (nomem) rc = carl_fail(CARL_ERR_NOMEM, "bip: out of memory");
  }
  free(s);
  free(p);
  return rc;
}

static carl_status bip_save(const carl_router_t *r, const char *path) {
  const bip_t *st = r->state;
  return carl_route_state_save(path, "bip", CARL_STATE_F64, st->E, st->q);
}

static carl_status bip_load(carl_router_t *r, const char *path) {
  bip_t *st = r->state;
  void *a = NULL;
  int64_t n = 0;
  CARL_TRY(carl_route_state_load(path, "bip", CARL_STATE_F64, -1, NULL, &a, &n));
  if ((st->E > 0 && n != st->E) || n < 1 || n > (1 << 24)) {
    free(a);
    return carl_fail(CARL_ERR_STATE, "%s: duals have %lld entries, this router has E = %d", path, (long long)n, st->E);
  }
  carl_status rc = st->E == 0 ? bip_alloc(st, (int)n) : CARL_OK;
  if (rc == CARL_OK) memcpy(st->q, a, (size_t)n * sizeof *st->q);
  free(a);
  return rc;
}

static void bip_free(carl_router_t *r) {
  bip_t *st = r->state;
  if (st) {
    free(st->q);
    free(st->nq);
  }
  free(st);
}

static const carl_opt_t bip_opts[] = {
    {"T_iter", 2, "dual iterations per step (p then q), fp64"},
    {"clamp", 1, "1: duals clipped at 0 (BIP); 0: unclipped (quantile-balancing variant)"},
};

const carl_router_impl_t carl__router_bip = {
    .name = "bip",
    .help = "BIP balancing: TopK(s - q) with per-expert LP duals q updated after each step",
    .opts = bip_opts,
    .nopts = 2,
    .init = bip_init,
    .route = bip_route,
    .update = bip_update,
    .save = bip_save,
    .load = bip_load,
    .free = bip_free,
};
