/* The MoE feed-forward layer: router and plan (the step) -> dispatch (executor) -> SwiGLU
 * experts per physical slot (sgemm) -> weighted sum per copy -> combine (executor), and its
 * backward. See moe.h. */
#include "model/moe.h"

#include <stdlib.h>
#include <string.h>


static void *carl__grow(void *p, size_t bytes, int *ok) {
  void *q = realloc(p, bytes ? bytes : 1);
  if (!q) *ok = 0;
  return q ? q : p;
}

carl_status carl__moe_reserve(const carl__moe_t *L, carl__moe_act_t *A, int64_t T) {
  if (T <= A->cap_t) return CARL_OK;
  const size_t t = (size_t)T, tk = t * (size_t)L->k, E = (size_t)L->E, fs = (size_t)L->fs, F = sizeof(float);
  int ok = 1;
  A->logits = carl__grow(A->logits, t * E * F, &ok);
  A->dlogits = carl__grow(A->dlogits, t * E * F, &ok);
  A->experts = carl__grow(A->experts, tk * sizeof(int32_t), &ok);
  A->weights = carl__grow(A->weights, tk * F, &ok);
  A->dweights = carl__grow(A->dweights, tk * F, &ok);
  A->load = carl__grow(A->load, E * sizeof(int64_t), &ok);
  if (fs) {
    A->sh_h = carl__grow(A->sh_h, t * 2 * fs * F, &ok);
    A->sh_a = carl__grow(A->sh_a, t * fs * F, &ok);
    A->sh_dh = carl__grow(A->sh_dh, t * 2 * fs * F, &ok);
    A->sh_da = carl__grow(A->sh_da, t * fs * F, &ok);
  }
  if (!ok) return carl_fail(CARL_ERR_NOMEM, "MoE layer: cannot allocate activations for %lld tokens", (long long)T);
  A->cap_t = T;
  return CARL_OK;
}

/* Copy- and row-sized buffers for the plan of this forward. */
static carl_status carl__moe_reserve_plan(const carl__moe_t *L, carl__moe_act_t *A, int64_t copies, int64_t rows) {
  const size_t d = (size_t)L->d, f = (size_t)L->f, F = sizeof(float);
  int ok = 1;
  if (copies > A->cap_c) {
    A->xc = carl__grow(A->xc, (size_t)copies * d * F, &ok);
    A->yc = carl__grow(A->yc, (size_t)copies * d * F, &ok);
    if (ok) A->cap_c = copies;
  }
  if (rows > A->cap_r) {
    const size_t r = (size_t)rows;
    A->xg = carl__grow(A->xg, r * d * F, &ok);
    A->h = carl__grow(A->h, r * 2 * f * F, &ok);
    A->a = carl__grow(A->a, r * f * F, &ok);
    A->ye = carl__grow(A->ye, r * d * F, &ok);
    A->dye = carl__grow(A->dye, r * d * F, &ok);
    A->dh = carl__grow(A->dh, r * 2 * f * F, &ok);
    A->da = carl__grow(A->da, r * f * F, &ok);
    if (ok) A->cap_r = rows;
  }
  if (!ok)
    return carl_fail(CARL_ERR_NOMEM, "MoE layer: cannot allocate %lld copies and %lld rows", (long long)copies,
                     (long long)rows);
  return CARL_OK;
}

void carl__moe_act_free(carl__moe_act_t *A) {
  void *ps[] = {A->xall, A->tokall, A->logits, A->dlogits, A->experts, A->weights, A->dweights, A->load, A->xc, A->yc, A->xg, A->h,
                A->a, A->ye, A->dye, A->dh, A->da, A->sh_h, A->sh_a, A->sh_dh, A->sh_da};
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
  memset(A, 0, sizeof *A);
}

static void carl__moe_copy_sum(const carl_plan_t *p, const float *gate, const float *rows, int d, float *v, int64_t c) {
  float *vc = v + c * d;
  memset(vc, 0, sizeof(float) * (size_t)d);
  for (int64_t q = p->copy_row_off[c]; q < p->copy_row_off[c + 1]; q++) {
    const int64_t r = p->copy_row[q];
    const float g = gate ? gate[p->row_slot[r]] : 1.0f, *y = rows + r * d;
    for (int j = 0; j < d; j++) vc[j] += g * y[j];
  }
}

/* v[c] = sum over the rows of copy c (ascending slot) of (gate of the row, or 1) x rows[r]: the
 * per-copy partial sum the executor combines. With several ranks (own >= 0) only the copies that
 * rank `own` receives: first-hop pairs a -> own and forwarded pairs f -> own. */
static void carl__moe_copy_sums(const carl_plan_t *p, const float *gate, const float *rows, int d, float *v, int own) {
  const int64_t nc = p->n_send + p->n_fwd;
  if (own >= 0) {
    const int D = p->D;
    for (int a = 0; a < D; a++) {
      for (int64_t c = p->send_off[a * D + own]; c < p->send_off[a * D + own + 1]; c++)
        carl__moe_copy_sum(p, gate, rows, d, v, c);
      for (int64_t i = p->fwd_off[a * D + own]; p->n_fwd && i < p->fwd_off[a * D + own + 1]; i++)
        carl__moe_copy_sum(p, gate, rows, d, v, p->n_send + i);
    }
    return;
  }
#pragma omp parallel for schedule(static) if (nc * d >= CARL_OMP_MIN_WORK)
  for (int64_t c = 0; c < nc; c++) carl__moe_copy_sum(p, gate, rows, d, v, c);
}

carl_status carl__moe_forward(const carl__moe_t *L, const carl__moe_w_t *W, carl__moe_act_t *A, carl_route_in_t *in,
                              const float *x, float *y) {
  carl_exec_t *ex = carl_step_exec(L->step);
  const int nr = carl_exec_size(ex), rk = carl_exec_rank(ex);
  const int64_t Tl = in->T, T = Tl * nr, t0 = Tl * rk;
  const int d = L->d, f = L->f, E = L->E, k = L->k;
  if (nr > 1 && in->src)
    return carl_fail(CARL_ERR_INVALID, "MoE layer: token source devices are the ranks' token ranges under the mpi executor");
  CARL_TRY(carl__moe_reserve(L, A, T));
  A->T = T;
  A->Tl = Tl;
  A->t0 = t0;
  /* 1. router logits z [T, E] = x W_r^T; the routing decision and its plan. Several ranks: each
   * computes its tokens' logits, all-gathers them (and the router inputs and token ids) and routes
   * every rank's tokens, so that all ranks hold the same decision and plan (docs/mpi.md). */
  carl_linear_fwd(A->logits + t0 * E, x, W->router, Tl, d, E);
  in->x = x;
  if (nr > 1) {
    int ok = 1;
    A->xall = carl__grow(A->xall, sizeof(float) * (size_t)T * (size_t)d, &ok);
    A->tokall = carl__grow(A->tokall, sizeof(int32_t) * (size_t)T, &ok);
    if (!ok) return carl_fail(CARL_ERR_NOMEM, "MoE layer: cannot allocate the gathered inputs of %lld tokens", (long long)T);
    memcpy(A->xall + t0 * d, x, sizeof(float) * (size_t)Tl * (size_t)d);
    CARL_TRY(carl_exec_allgather(ex, A->logits, sizeof(float) * (size_t)Tl * (size_t)E));
    CARL_TRY(carl_exec_allgather(ex, A->xall, sizeof(float) * (size_t)Tl * (size_t)d));
    if (in->token_ids) {
      memcpy(A->tokall + t0, in->token_ids, sizeof(int32_t) * (size_t)Tl);
      CARL_TRY(carl_exec_allgather(ex, A->tokall, sizeof(int32_t) * (size_t)Tl));
      in->token_ids = A->tokall;
    }
    in->T = T;
    in->x = A->xall;
  }
  in->logits = A->logits;
  in->E = E;
  in->d = d;
  memset(&A->out, 0, sizeof A->out);
  A->out.experts = A->experts;
  A->out.weights = A->weights;
  A->out.dlogits = A->dlogits;
  CARL_TRY(carl_step_route(L->step, L->layer, in, &A->out));
  const carl_plan_t *p = carl_step_plan(L->step, L->layer);
  if (!p->has_rows) return carl_fail(CARL_ERR_STATE, "MoE layer: the executor '%s' moves no data", carl_exec_name(ex));
  memset(A->load, 0, sizeof(int64_t) * (size_t)E);
  for (int64_t i = 0; i < T * k; i++)
    if (A->experts[i] >= 0) A->load[A->experts[i]]++;
  const int64_t R = p->n_rows;
  /* this process's slots [g0, g1) and rows [r0, r1): every device's, or those of device rk */
  const int64_t g0 = nr > 1 ? (int64_t)rk * p->S : 0, g1 = nr > 1 ? g0 + p->S : (int64_t)p->D * p->S;
  const int64_t r0 = p->recv_off[g0], r1 = p->recv_off[g1];
  CARL_TRY(carl__moe_reserve_plan(L, A, p->n_send + p->n_fwd, R));
  /* 2. dispatch the copies, gather each row's input from its copy */
  CARL_TRY(carl_exec_dispatch(ex, p, x, d, A->xc));
#pragma omp parallel for schedule(static) if ((r1 - r0) * d >= CARL_OMP_MIN_WORK)
  for (int64_t r = r0; r < r1; r++) memcpy(A->xg + r * d, A->xc + p->row_copy[r] * d, sizeof(float) * (size_t)d);
  /* 3. experts per physical slot g: H = X_g W13_g^T, A = swiglu(H), Y_g = A W2_g^T; the products
   * of all slots run in one parallel pass over their tiles (carl_sgemm_batch) */
  const int64_t P = g1 - g0;
  carl_gemm_t *job = malloc(sizeof *job * (size_t)(P > 0 ? P : 1));
  if (!job) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of memory");
  for (int64_t g = g0; g < g1; g++) {
    const int64_t q0 = p->recv_off[g], n = p->recv_off[g + 1] - q0;
    job[g - g0] = (carl_gemm_t){0, 1, n, 2 * f, d, 1.0f, A->xg + q0 * d, d, W->w13 + (g - W->slot0) * 2 * f * d, d, 0.0f,
                                A->h + q0 * 2 * f, 2 * f};
  }
  carl_sgemm_batch((int)P, job);
  carl_swiglu_fwd(A->a + r0 * f, A->h + r0 * 2 * f, r1 - r0, f);
  for (int64_t g = g0; g < g1; g++) {
    const int64_t q0 = p->recv_off[g], n = p->recv_off[g + 1] - q0;
    job[g - g0] = (carl_gemm_t){0, 1, n, d, f, 1.0f, A->a + q0 * f, f, W->w2 + (g - W->slot0) * d * f, f, 0.0f, A->ye + q0 * d, d};
  }
  carl_sgemm_batch((int)P, job);
  free(job);
  /* 4. shared expert into y (this rank's tokens), then each copy's gated sum combined into y */
  if (L->fs) {
    carl_linear_fwd(A->sh_h, x, W->sw13, Tl, d, 2 * L->fs);
    carl_swiglu_fwd(A->sh_a, A->sh_h, Tl, L->fs);
    carl_linear_fwd(y, A->sh_a, W->sw2, Tl, L->fs, d);
  } else {
    memset(y, 0, sizeof(float) * (size_t)Tl * (size_t)d);
  }
  carl__moe_copy_sums(p, A->weights, A->ye, d, A->yc, nr > 1 ? rk : -1);
  return carl_exec_combine(ex, p, A->yc, d, y);
}

carl_status carl__moe_backward(const carl__moe_t *L, const carl__moe_w_t *W, const carl__moe_w_t *G,
                               carl__moe_act_t *A, const carl_route_in_t *in, const float *x, const float *dy,
                               float *dx) {
  const int64_t T = A->T, Tl = A->Tl, t0 = A->t0;
  const int d = L->d, f = L->f, k = L->k;
  CARL_ASSERT(in->T == T);
  const carl_plan_t *p = carl_step_plan(L->step, L->layer);
  carl_exec_t *ex = carl_step_exec(L->step);
  const int nr = carl_exec_size(ex), rk = carl_exec_rank(ex);
  const int64_t g0 = nr > 1 ? (int64_t)rk * p->S : 0, g1 = nr > 1 ? g0 + p->S : (int64_t)p->D * p->S;
  const int64_t r0 = p->recv_off[g0], r1 = p->recv_off[g1], P = g1 - g0;
  /* d(copy outputs) = dy of the copy's token (the mirror of combine) */
  CARL_TRY(carl_exec_combine_backward(ex, p, dy, d, A->yc));
  /* d(gates) and d(Y): dweights[t,s] = dy_t . Y_r;  dY_r = g[t,s] dy_t */
  memset(A->dweights, 0, sizeof(float) * (size_t)T * (size_t)k);
#pragma omp parallel for schedule(static) if ((r1 - r0) * d >= CARL_OMP_MIN_WORK)
  for (int64_t r = r0; r < r1; r++) {
    const int32_t i = p->row_slot[r];
    const float g = A->weights[i], *dyc = A->yc + p->row_copy[r] * d, *ys = A->ye + r * d;
    float *dys = A->dye + r * d;
    double acc = 0;
    for (int j = 0; j < d; j++) {
      acc += (double)dyc[j] * ys[j];
      dys[j] = g * dyc[j];
    }
    A->dweights[i] = (float)acc;
  }
  /* several ranks: each (token, slot) gate has one row, on one rank; the others add zeros */
  if (nr > 1) CARL_TRY(carl_exec_allreduce_f(ex, A->dweights, T * k));
  /* experts backward: dA = dY W2_g, dW2_g += dY^T A; dH = swiglu'; dW13_g += dH^T X; dX = dH W13_g
   * (each pass: the products of all slots over their tiles at once) */
  carl_gemm_t *job = malloc(sizeof *job * 2 * (size_t)(P > 0 ? P : 1));
  if (!job) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of memory");
  int nj = 0;
  for (int64_t g = g0; g < g1; g++) {
    const int64_t q0 = p->recv_off[g], n = p->recv_off[g + 1] - q0;
    if (!n) continue; /* a slot without rows gets no gradient (K = 0 would still scale by beta) */
    const float *w2 = W->w2 + (g - W->slot0) * d * f;
    job[nj++] = (carl_gemm_t){0, 0, n, f, d, 1.0f, A->dye + q0 * d, d, w2, f, 0.0f, A->da + q0 * f, f};
    job[nj++] = (carl_gemm_t){1, 0, d, f, (int)n, 1.0f, A->dye + q0 * d, d, A->a + q0 * f, f, 1.0f, G->w2 + (g - G->slot0) * d * f, f};
  }
  carl_sgemm_batch(nj, job);
  carl_swiglu_bwd(A->dh + r0 * 2 * f, A->da + r0 * f, A->h + r0 * 2 * f, r1 - r0, f);
  nj = 0;
  for (int64_t g = g0; g < g1; g++) {
    const int64_t q0 = p->recv_off[g], n = p->recv_off[g + 1] - q0;
    if (!n) continue;
    const float *w13 = W->w13 + (g - W->slot0) * 2 * f * d;
    job[nj++] = (carl_gemm_t){1, 0, 2 * f, d, (int)n, 1.0f, A->dh + q0 * 2 * f, 2 * f, A->xg + q0 * d, d, 1.0f,
                              G->w13 + (g - G->slot0) * 2 * f * d, d};
    /* dX overwrites dY, which the previous pass was the last to read */
    job[nj++] = (carl_gemm_t){0, 0, n, d, 2 * f, 1.0f, A->dh + q0 * 2 * f, 2 * f, w13, d, 0.0f, A->dye + q0 * d, d};
  }
  carl_sgemm_batch(nj, job);
  free(job);
  /* shared expert: dx = its input gradient (or 0) */
  if (L->fs) {
    carl_linear_bwd(A->sh_da, G->sw2, dy, A->sh_a, W->sw2, Tl, L->fs, d, 0);
    carl_swiglu_bwd(A->sh_dh, A->sh_da, A->sh_h, Tl, L->fs);
    carl_linear_bwd(dx, G->sw13, A->sh_dh, x, W->sw13, Tl, d, 2 * L->fs, 0);
  } else {
    memset(dx, 0, sizeof(float) * (size_t)Tl * (size_t)d);
  }
  /* d(copies) = sum of their rows' d(X); the executor sends them back to their tokens */
  carl__moe_copy_sums(p, NULL, A->dye, d, A->xc, nr > 1 ? rk : -1);
  CARL_TRY(carl_exec_dispatch_backward(ex, p, A->xc, d, dx));
  /* router: dz = d(router losses)/dz (from route) + d(gates)/dz^T d(gates) over every rank's
   * tokens (the same on every rank); then W_r and x from this rank's rows of dz */
  carl_route_out_t out = A->out;
  CARL_TRY(carl_router_backward(L->router, in, &out, A->dweights, A->dlogits));
  carl_linear_bwd(dx, G->router, A->dlogits + t0 * L->E, x, W->router, Tl, d, L->E, 1);
  return CARL_OK;
}

carl_status carl__moe_standalone(carl__moe_t *L, carl_topo_t *topo, carl_exec_t **ex) {
  *ex = NULL;
  L->step = NULL;
  L->layer = 0;
  CARL_TRY(carl_topo_make(topo, 1, 1, 1, 0, 1, 0));
  CARL_TRY(carl_exec_local_create(ex));
  carl_step_opts_t o;
  carl_step_opts_default(&o);
  o.topo = topo;
  o.layers = 1;
  o.E = L->E;
  o.k = L->k;
  o.routers = &L->router;
  o.exec = *ex;
  carl_status st = carl_step_create(&o, &L->step);
  if (st != CARL_OK) {
    carl_exec_free(*ex);
    *ex = NULL;
  }
  return st;
}

void carl__moe_standalone_free(carl__moe_t *L, carl_exec_t *ex) {
  carl_step_free(L->step);
  L->step = NULL;
  carl_exec_free(ex);
}
