/* sinkhorn: S-BASE balanced routing (Clark et al. 2022), as in Megatron-LM's moe_utils.sinkhorn.
 * C = exp(z); repeat d0 = (1/T) / (C d1 + 1e-8), d1 = (1/E) / (C^T d0 + 1e-8) until
 * mean|d1 - d1_old| <= tol (default 1e-4) or max_iter iterations; plan P = diag(d0) C diag(d1);
 * S_t = TopK(P[t, .]); g = softmax(z) at S_t (sigmoid when k = 1), not renormalised. No aux loss.
 * Iterations in fp64; C is kept in fp32. When max z > 80, C = exp(z - (max z - 80)) (a constant
 * factor, absorbed by d0 up to the 1e-8 guards) so that C stays finite. Selection uses
 * z + log d1, which orders each row exactly as P does. The score option is set from k. */
#include <stdlib.h>

#include "route/router_impl.h"

typedef struct {
  double tol;
  int max_iter;
  int last_iters;    /* iterations of the last route */
  double last_err;   /* mean |d1 - d1_old| at the end of the last route */
} sk_t;

static carl_status sk_init(carl_router_t *r) {
  sk_t *st = calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "sinkhorn: out of memory");
  r->state = st;
  CARL_TRY(carl_router_opt_real(r, "tol", 0, 1, &st->tol));
  CARL_TRY(carl_router_opt_int(r, "max_iter", 1, 100000, &st->max_iter));
  r->opt[CARL_OPT_SCORE] = (int)r->opt[CARL_OPT_K] == 1 ? CARL_SCORE_SIGMOID : CARL_SCORE_SOFTMAX;
  return CARL_OK;
}

carl_status carl_sinkhorn_scalings(const float *z, int64_t T, int E, double tol, int max_iter, double *d0 /* [T] */,
                                   double *d1 /* [E] */, float *Cbuf /* [T, E] scratch */, int *iters, double *err);

carl_status carl_sinkhorn_scalings(const float *z, int64_t T, int E, double tol, int max_iter, double *d0, double *d1,
                                   float *Cb, int *iters, double *err) {
  float gmax = -INFINITY;
  int64_t bad = INT64_MAX;
#pragma omp parallel for if((int64_t)T * E >= CARL_OMP_MIN_WORK) schedule(static) reduction(max : gmax) reduction(min : bad)
  for (int64_t i = 0; i < T * E; i++) {
    if (!isfinite(z[i])) {
      if (i / E < bad) bad = i / E;
    } else if (z[i] > gmax) {
      gmax = z[i];
    }
  }
  if (bad != INT64_MAX) return carl_fail(CARL_ERR_NUMERIC, "logits: token %lld has a NaN or infinite value", (long long)bad);
  const float shift = gmax > 80 ? gmax - 80 : 0;
#pragma omp parallel for if((int64_t)T * E >= CARL_OMP_MIN_WORK) schedule(static)
  for (int64_t i = 0; i < T * E; i++) Cb[i] = (float)exp((double)z[i] - shift);
  const int64_t nb = (T + CARL_KERN_BLOCK - 1) / CARL_KERN_BLOCK;
  double *part = malloc((size_t)nb * (size_t)E * sizeof *part);
  double *old = malloc((size_t)E * sizeof *old);
  if (!part || !old) {
    free(part);
    free(old);
    return carl_fail(CARL_ERR_NOMEM, "sinkhorn: out of memory");
  }
  for (int64_t t = 0; t < T; t++) d0[t] = 1;
  for (int e = 0; e < E; e++) d1[e] = 1;
  const double eps = 1e-8;
  int it = 0;
  double e_err = INFINITY;
  while (it < max_iter) {
    it++;
#pragma omp parallel for if((int64_t)T * E >= CARL_OMP_MIN_WORK) schedule(static)
    for (int64_t t = 0; t < T; t++) {
      const float *c = Cb + t * E;
      double a = 0;
      for (int e = 0; e < E; e++) a += (double)c[e] * d1[e];
      d0[t] = (1.0 / (double)T) / (a + eps);
    }
#pragma omp parallel for if((int64_t)T * E >= CARL_OMP_MIN_WORK) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
      double *pp = part + b * E;
      for (int e = 0; e < E; e++) pp[e] = 0;
      int64_t t1 = (b + 1) * CARL_KERN_BLOCK < T ? (b + 1) * CARL_KERN_BLOCK : T;
      for (int64_t t = b * CARL_KERN_BLOCK; t < t1; t++) {
        const float *c = Cb + t * E;
        for (int e = 0; e < E; e++) pp[e] += (double)c[e] * d0[t];
      }
    }
    double diff = 0;
    for (int e = 0; e < E; e++) {
      double a = 0;
      for (int64_t b = 0; b < nb; b++) a += part[b * E + e];
      old[e] = d1[e];
      d1[e] = (1.0 / (double)E) / (a + eps);
      diff += fabs(d1[e] - old[e]);
    }
    e_err = diff / E;
    if (e_err <= tol) break;
  }
  if (iters) *iters = it;
  if (err) *err = e_err;
  free(part);
  free(old);
  return CARL_OK;
}

static carl_status sk_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  sk_t *st = r->state;
  const int64_t T = in->T;
  const int E = in->E;
  if (!in->logits) return carl_fail(CARL_ERR_INVALID, "logits: NULL");
  double *d0 = malloc((size_t)T * sizeof *d0), *d1 = malloc((size_t)E * sizeof *d1);
  float *Cb = malloc((size_t)T * (size_t)E * sizeof *Cb), *ld1 = malloc((size_t)E * sizeof *ld1);
  carl_status rc = CARL_OK;
  if (!d0 || !d1 || !Cb || !ld1) rc = carl_fail(CARL_ERR_NOMEM, "sinkhorn: out of memory (T = %lld, E = %d)", (long long)T, E);
  if (rc == CARL_OK) rc = carl_sinkhorn_scalings(in->logits, T, E, st->tol, st->max_iter, d0, d1, Cb, &st->last_iters, &st->last_err);
  free(Cb);
  free(d0);
  if (rc == CARL_OK) {
    for (int e = 0; e < E; e++) ld1[e] = (float)log(d1[e]);
    carl_select_t sel = {.on_logits = 1, .bias = ld1, .nrows = 1};
    rc = carl_route_select(r, in, out, &sel);
  }
  free(d1);
  free(ld1);
  return rc;
}

static void sk_free(carl_router_t *r) { free(r->state); }

static const carl_opt_t sk_opts[] = {
    {"renorm", 0, "0: gates are the raw softmax (sigmoid for k = 1) scores, as in Megatron"},
    {"z_loss", 1e-3, "router z-loss coefficient"},
    {"tol", 1e-4, "stop when mean |d1 - d1_old| <= tol"},
    {"max_iter", 100, "cap on the Sinkhorn iterations"},
};

const carl_router_impl_t carl__router_sinkhorn = {
    .name = "sinkhorn",
    .help = "S-BASE: top-k of the Sinkhorn-balanced plan of exp(z); gates softmax(z) (sigmoid for k = 1)",
    .opts = sk_opts,
    .nopts = 4,
    .init = sk_init,
    .route = sk_route,
    .free = sk_free,
};
