/* The MoE feed-forward layer: router -> group by expert -> SwiGLU experts (sgemm) -> weighted
 * combine, and its backward. See moe.h. */
#include "model/moe.h"

#include <stdlib.h>
#include <string.h>

static void *carl__grow(void *p, size_t bytes, int *ok) {
  void *q = realloc(p, bytes ? bytes : 1);
  if (!q) *ok = 0;
  return q ? q : p;
}

carl_status carl__moe_reserve(const carl__moe_t *L, carl__moe_act_t *A, int64_t T) {
  if (T <= A->cap) return CARL_OK;
  const size_t t = (size_t)T, tk = t * (size_t)L->k, d = (size_t)L->d, f = (size_t)L->f, E = (size_t)L->E,
               fs = (size_t)L->fs, F = sizeof(float);
  int ok = 1;
  A->logits = carl__grow(A->logits, t * E * F, &ok);
  A->dlogits = carl__grow(A->dlogits, t * E * F, &ok);
  A->experts = carl__grow(A->experts, tk * sizeof(int32_t), &ok);
  A->weights = carl__grow(A->weights, tk * F, &ok);
  A->dweights = carl__grow(A->dweights, tk * F, &ok);
  A->load = carl__grow(A->load, E * sizeof(int64_t), &ok);
  A->off = carl__grow(A->off, (E + 1) * sizeof(int64_t), &ok);
  A->row_tok = carl__grow(A->row_tok, tk * sizeof(int32_t), &ok);
  A->slot_row = carl__grow(A->slot_row, tk * sizeof(int32_t), &ok);
  A->xg = carl__grow(A->xg, tk * d * F, &ok);
  A->h = carl__grow(A->h, tk * 2 * f * F, &ok);
  A->a = carl__grow(A->a, tk * f * F, &ok);
  A->ye = carl__grow(A->ye, tk * d * F, &ok);
  A->dye = carl__grow(A->dye, tk * d * F, &ok);
  A->dh = carl__grow(A->dh, tk * 2 * f * F, &ok);
  A->da = carl__grow(A->da, tk * f * F, &ok);
  if (fs) {
    A->sh_h = carl__grow(A->sh_h, t * 2 * fs * F, &ok);
    A->sh_a = carl__grow(A->sh_a, t * fs * F, &ok);
    A->sh_dh = carl__grow(A->sh_dh, t * 2 * fs * F, &ok);
    A->sh_da = carl__grow(A->sh_da, t * fs * F, &ok);
  }
  if (!ok) return carl_fail(CARL_ERR_NOMEM, "MoE layer: cannot allocate activations for %lld tokens", (long long)T);
  A->cap = T;
  return CARL_OK;
}

void carl__moe_act_free(carl__moe_act_t *A) {
  void *ps[] = {A->logits, A->dlogits, A->experts, A->weights, A->dweights, A->load, A->off, A->row_tok,
                A->slot_row, A->xg, A->h, A->a, A->ye, A->dye, A->dh, A->da, A->sh_h, A->sh_a, A->sh_dh, A->sh_da};
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
  memset(A, 0, sizeof *A);
}

carl_status carl__moe_forward(const carl__moe_t *L, const carl__moe_w_t *W, carl__moe_act_t *A, carl_route_in_t *in,
                              const float *x, float *y) {
  const int64_t T = in->T;
  const int d = L->d, f = L->f, E = L->E, k = L->k;
  CARL_TRY(carl__moe_reserve(L, A, T));
  A->T = T;
  /* 1. router logits z [T, E] = x W_r^T and the routing decision */
  carl_linear_fwd(A->logits, x, W->router, T, d, E);
  in->logits = A->logits;
  in->E = E;
  in->x = x;
  in->d = d;
  memset(&A->out, 0, sizeof A->out);
  A->out.experts = A->experts;
  A->out.weights = A->weights;
  A->out.dlogits = A->dlogits;
  CARL_TRY(carl_router_route(L->router, in, &A->out));
  /* 2. group (token, slot) pairs by expert: counting sort, token order kept within an expert */
  memset(A->load, 0, sizeof(int64_t) * (size_t)E);
  for (int64_t i = 0; i < T * k; i++) {
    int32_t e = A->experts[i];
    if (e < -1 || e >= E)
      return carl_fail(CARL_ERR_INVALID, "router '%s': expert id %d for (token %lld, slot %lld) is outside -1..%d",
                       carl_router_name(L->router), e, (long long)(i / k), (long long)(i % k), E - 1);
    if (e >= 0) A->load[e]++;
  }
  A->off[0] = 0;
  for (int e = 0; e < E; e++) A->off[e + 1] = A->off[e] + A->load[e];
  {
    int64_t *fill = calloc((size_t)E, sizeof *fill);
    if (!fill) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of memory");
    for (int64_t i = 0; i < T * k; i++) {
      int32_t e = A->experts[i];
      if (e < 0) {
        A->slot_row[i] = -1;
        continue;
      }
      int64_t r = A->off[e] + fill[e]++;
      A->slot_row[i] = (int32_t)r;
      A->row_tok[r] = (int32_t)(i / k);
    }
    free(fill);
  }
  const int64_t R = A->off[E];
  /* 3. gather */
#pragma omp parallel for schedule(static) if (R * d >= CARL_OMP_MIN_WORK)
  for (int64_t r = 0; r < R; r++) memcpy(A->xg + r * d, x + (int64_t)A->row_tok[r] * d, sizeof(float) * (size_t)d);
  /* 4. experts: H = X_e W13_e^T, A = swiglu(H), Y_e = A W2_e^T; the products of all experts run
   * in one parallel pass over their tiles (carl_sgemm_batch) */
  carl_gemm_t *job = malloc(sizeof *job * 2 * (size_t)E);
  if (!job) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of memory");
  for (int e = 0; e < E; e++) {
    const int64_t r0 = A->off[e], n = A->load[e];
    job[e] = (carl_gemm_t){0, 1, n, 2 * f, d, 1.0f, A->xg + r0 * d, d, W->w13 + (int64_t)e * 2 * f * d, d, 0.0f,
                           A->h + r0 * 2 * f, 2 * f};
  }
  carl_sgemm_batch(E, job);
  carl_swiglu_fwd(A->a, A->h, R, f);
  for (int e = 0; e < E; e++) {
    const int64_t r0 = A->off[e], n = A->load[e];
    job[e] = (carl_gemm_t){0, 1, n, d, f, 1.0f, A->a + r0 * f, f, W->w2 + (int64_t)e * d * f, f, 0.0f, A->ye + r0 * d, d};
  }
  carl_sgemm_batch(E, job);
  free(job);
  /* 5. shared expert (into y), then the weighted combine in slot order */
  if (L->fs) {
    carl_linear_fwd(A->sh_h, x, W->sw13, T, d, 2 * L->fs);
    carl_swiglu_fwd(A->sh_a, A->sh_h, T, L->fs);
    carl_linear_fwd(y, A->sh_a, W->sw2, T, L->fs, d);
  } else {
    memset(y, 0, sizeof(float) * (size_t)T * (size_t)d);
  }
#pragma omp parallel for schedule(static) if (T * d >= CARL_OMP_MIN_WORK)
  for (int64_t t = 0; t < T; t++) {
    float *yt = y + t * d;
    for (int s = 0; s < k; s++) {
      int32_t r = A->slot_row[t * k + s];
      if (r < 0) continue;
      const float g = A->weights[t * k + s], *ys = A->ye + (int64_t)r * d;
      for (int j = 0; j < d; j++) yt[j] += g * ys[j];
    }
  }
  return CARL_OK;
}

carl_status carl__moe_backward(const carl__moe_t *L, const carl__moe_w_t *W, const carl__moe_w_t *G,
                               carl__moe_act_t *A, const carl_route_in_t *in, const float *x, const float *dy,
                               float *dx) {
  const int64_t T = A->T;
  const int d = L->d, f = L->f, E = L->E, k = L->k;
  const int64_t R = A->off[E];
  CARL_ASSERT(in->T == T);
  /* d(gates) and d(Y_e): dweights[t,s] = dy_t . Y_r;  dY_r = g[t,s] dy_t */
#pragma omp parallel for schedule(static) if (T * d >= CARL_OMP_MIN_WORK)
  for (int64_t t = 0; t < T; t++) {
    const float *dyt = dy + t * d;
    for (int s = 0; s < k; s++) {
      int32_t r = A->slot_row[t * k + s];
      if (r < 0) {
        A->dweights[t * k + s] = 0.0f;
        continue;
      }
      const float g = A->weights[t * k + s], *ys = A->ye + (int64_t)r * d;
      float *dys = A->dye + (int64_t)r * d;
      double acc = 0;
      for (int j = 0; j < d; j++) {
        acc += (double)dyt[j] * ys[j];
        dys[j] = g * dyt[j];
      }
      A->dweights[t * k + s] = (float)acc;
    }
  }
  /* experts backward: dA = dY W2_e, dW2_e += dY^T A; dH = swiglu'; dW13_e += dH^T X; dX = dH W13_e
   * (each pass: the products of all experts over their tiles at once) */
  carl_gemm_t *job = malloc(sizeof *job * 2 * (size_t)E);
  if (!job) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of memory");
  int nj = 0;
  for (int e = 0; e < E; e++) {
    const int64_t r0 = A->off[e], n = A->load[e];
    if (!n) continue; /* an expert without rows gets no gradient (K = 0 would still scale by beta) */
    const float *w2 = W->w2 + (int64_t)e * d * f;
    job[nj++] = (carl_gemm_t){0, 0, n, f, d, 1.0f, A->dye + r0 * d, d, w2, f, 0.0f, A->da + r0 * f, f};
    job[nj++] = (carl_gemm_t){1, 0, d, f, (int)n, 1.0f, A->dye + r0 * d, d, A->a + r0 * f, f, 1.0f,
                              G->w2 + (int64_t)e * d * f, f};
  }
  carl_sgemm_batch(nj, job);
  carl_swiglu_bwd(A->dh, A->da, A->h, R, f);
  nj = 0;
  for (int e = 0; e < E; e++) {
    const int64_t r0 = A->off[e], n = A->load[e];
    if (!n) continue;
    const float *w13 = W->w13 + (int64_t)e * 2 * f * d;
    job[nj++] = (carl_gemm_t){1, 0, 2 * f, d, (int)n, 1.0f, A->dh + r0 * 2 * f, 2 * f, A->xg + r0 * d, d, 1.0f,
                              G->w13 + (int64_t)e * 2 * f * d, d};
    /* dX_e overwrites dY_e, which the previous pass was the last to read */
    job[nj++] = (carl_gemm_t){0, 0, n, d, 2 * f, 1.0f, A->dh + r0 * 2 * f, 2 * f, w13, d, 0.0f, A->dye + r0 * d, d};
  }
  carl_sgemm_batch(nj, job);
  free(job);
  /* shared expert: dx = its input gradient (or 0) */
  if (L->fs) {
    carl_linear_bwd(A->sh_da, G->sw2, dy, A->sh_a, W->sw2, T, L->fs, d, 0);
    carl_swiglu_bwd(A->sh_dh, A->sh_da, A->sh_h, T, L->fs);
    carl_linear_bwd(dx, G->sw13, A->sh_dh, x, W->sw13, T, d, 2 * L->fs, 0);
  } else {
    memset(dx, 0, sizeof(float) * (size_t)T * (size_t)d);
  }
  /* scatter back in slot order (no atomics) */
#pragma omp parallel for schedule(static) if (T * d >= CARL_OMP_MIN_WORK)
  for (int64_t t = 0; t < T; t++) {
    float *dxt = dx + t * d;
    for (int s = 0; s < k; s++) {
      int32_t r = A->slot_row[t * k + s];
      if (r < 0) continue;
      const float *g = A->dye + (int64_t)r * d;
      for (int j = 0; j < d; j++) dxt[j] += g[j];
    }
  }
  /* router: dz = d(router losses)/dz (from route) + d(gates)/dz^T d(gates); then W_r and x */
  carl_route_out_t out = A->out;
  CARL_TRY(carl_router_backward(L->router, in, &out, A->dweights, A->dlogits));
  carl_linear_bwd(dx, G->router, A->dlogits, x, W->router, T, d, E, 1);
  return CARL_OK;
}
