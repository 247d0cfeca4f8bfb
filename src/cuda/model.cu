/* The device half of the MoE transformer (carl_model_to_device, src/model/model_internal.h): the
 * forward and backward of src/model/model.c and src/model/moe.c on float32 device arrays, with
 * cuBLAS SGEMM for every product and the kernels of nn.cu. The decisions stay on the host: each
 * MoE layer's router logits (and inputs) are copied down and routed by carl_step_route, the same
 * call as on the CPU; the gates and the plan's row lists go up, the copies move through the cuda
 * executor (exec.cu), and d(gates) comes down for carl_router_backward, whose d(logits) goes up.
 * CPU reference: the CPU model itself (tests/test_cuda_model.c, tests/cli/train_cuda.sh). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.h"
#include "cuda/nn_internal.h"
extern "C" {
#include "model/model_internal.h"
}

typedef struct {
  void *p;
  size_t cap;
} dbuf_t;

/* Per layer: what the forward keeps for the backward. */
typedef struct {
  float *h_in, *n1, *rstd1, *qkv, *att, *ao, *h_mid, *n2, *rstd2; /* as carl__layer_act_t */
  float *logits;   /* [T, E] */
  float *weights;  /* [T, k] gates */
  float *sh_h, *sh_a; /* [T, 2fs], [T, fs] */
  dbuf_t rows;     /* xg [R, d], h [R, 2f], a [R, f], ye [R, d] */
  dbuf_t idx;      /* row_copy [R], copy_row [R], copy_off [C + 1] (int64), row_slot [R] (int32) */
  float *xg, *h, *a, *ye;
  int64_t *row_copy, *copy_row, *copy_off;
  int32_t *row_slot;
  int64_t R, C;    /* rows and copies of the last forward */
  float *xh;       /* host [T, d]: the router inputs for the host routing */
} dlayer_t;

struct carl__mdev {
  carl_cuda_t *g;
  carl_exec_t *exec;
  int B, S;        /* capacity: batches of B x S */
  int nl;          /* layers */
  int64_t T;
  void *block;     /* one allocation for the fixed-size arrays */
  float *arr[4];   /* params, grads, adam_m, adam_v [nparams] */
  dlayer_t *L;
  int32_t *tokens, *targets;
  float *h_final, *nf, *rstdf, *logits, *dlogits, *lse, *dh, *dtmp, *dtmp2, *dqkv, *datt;
  double *rowloss;
  float *dlogits_r; /* [T, E] d(router logits) */
  float *dweights;  /* [T, k] */
  float *sh_dh, *sh_da;
  dbuf_t scr;       /* xc [C, d], yc [C, d], dye [R, d], dh [R, 2f], da [R, f] */
  float *xc, *yc, *dye, *dhr, *da;
  int64_t scr_R, scr_C;
  /* host */
  int32_t *tok_h, *tgt_h;
  float *logits_h;  /* [T, V] of a forward without targets */
  double *rowloss_h;
  carl_status err;  /* a failure of zero_grad, reported by the next backward */
};

static size_t al(size_t n) { return (n + 255) & ~(size_t)255; }

/* Bump allocation over the fixed block: counts when base is NULL. */
typedef struct {
  char *base;
  size_t off;
} bump_t;
template <typename T> static void take(bump_t *b, T **p, size_t n) {
  if (b->base) *p = (T *)(b->base + b->off);
  b->off += al(sizeof(T) * (n ? n : 1));
}

static void layout_fixed(const carl_model_t *m, int B, int S, struct carl__mdev *d, bump_t *b) {
  const carl_model_config_t *c = &m->cfg;
  const size_t T = (size_t)B * S, D = (size_t)c->d_model, V = (size_t)c->vocab, E = (size_t)c->n_experts,
               k = (size_t)c->top_k, fs = (size_t)c->d_shared, att = (size_t)B * c->n_heads * S * S;
  struct carl__mdev tmp;
  memset(&tmp, 0, sizeof tmp);
  dlayer_t ltmp;
  struct carl__mdev *x = d ? d : &tmp;
  for (int i = 0; i < 4; i++) take(b, &x->arr[i], (size_t)m->nparams);
  for (int l = 0; l < c->n_layers; l++) {
    dlayer_t *L = d ? &d->L[l] : &ltmp;
    take(b, &L->h_in, T * D); take(b, &L->n1, T * D); take(b, &L->rstd1, T); take(b, &L->qkv, T * 3 * D);
    take(b, &L->att, att); take(b, &L->ao, T * D); take(b, &L->h_mid, T * D); take(b, &L->n2, T * D);
    take(b, &L->rstd2, T); take(b, &L->logits, T * E); take(b, &L->weights, T * k);
    if (fs) {
      take(b, &L->sh_h, T * 2 * fs);
      take(b, &L->sh_a, T * fs);
    }
  }
  take(b, &x->tokens, T); take(b, &x->targets, T); take(b, &x->h_final, T * D); take(b, &x->nf, T * D);
  take(b, &x->rstdf, T); take(b, &x->logits, T * V); take(b, &x->dlogits, T * V); take(b, &x->lse, T);
  take(b, &x->dh, T * D); take(b, &x->dtmp, T * D); take(b, &x->dtmp2, T * D); take(b, &x->dqkv, T * 3 * D);
  take(b, &x->datt, att); take(b, &x->rowloss, T); take(b, &x->dlogits_r, T * E); take(b, &x->dweights, T * k);
  if (fs) {
    take(b, &x->sh_dh, T * 2 * fs);
    take(b, &x->sh_da, T * fs);
  }
}

static size_t rows_bytes(const carl_model_config_t *c, int64_t R) {
  return al(sizeof(float) * (size_t)R * (2 * (size_t)c->d_model + 3 * (size_t)c->d_ff)) + 4 * 256;
}
static size_t idx_bytes(int64_t R, int64_t C) {
  return al(8 * (size_t)R) * 2 + al(8 * (size_t)(C + 1)) + al(4 * (size_t)R);
}
static size_t scr_bytes(const carl_model_config_t *c, int64_t R, int64_t C) {
  return al(sizeof(float) * (size_t)C * c->d_model) * 2 + al(sizeof(float) * (size_t)R * ((size_t)c->d_model + 3 * (size_t)c->d_ff)) + 4 * 256;
}

/* Worst-case rows (every token on k slots) and flat copies (one per destination device). */
static void worst_case(const carl_model_t *m, int B, int S, int64_t *R, int64_t *C) {
  const int64_t T = (int64_t)B * S, k = m->cfg.top_k, D = m->topo->devices;
  *R = T * k;
  *C = T * (k < D ? k : D);
}

/* The largest expert tensor (the executor's migration copies one whole tensor at a time). */
static size_t largest_expert_tensor(const carl_model_t *m) {
  size_t mx = 0;
  for (int l = 0; l < m->cfg.n_layers; l++) {
    const int idx[2] = {m->li[l].w13, m->li[l].w2};
    for (int i = 0; i < 2; i++) {
      const size_t b = sizeof(float) * (size_t)m->tensors[idx[i]].numel;
      mx = b > mx ? b : mx;
    }
  }
  return mx;
}

#define MDEV_MARGIN ((size_t)64 << 20) /* cuBLAS workspace, the executor's index staging */

extern "C" {

carl_status carl__mdev_bytes(const carl_model_t *m, int B, int S, size_t *bytes) {
  *bytes = 0;
  if (B < 1 || S < 1) return carl_fail(CARL_ERR_SHAPE, "model on the GPU: batch [%d, %d]", B, S);
  bump_t b = {NULL, 0};
  layout_fixed(m, B, S, NULL, &b);
  int64_t R, C;
  worst_case(m, B, S, &R, &C);
  *bytes = b.off + (size_t)m->cfg.n_layers * (rows_bytes(&m->cfg, R) + idx_bytes(R, C)) + scr_bytes(&m->cfg, R, C) +
           largest_expert_tensor(m) + MDEV_MARGIN;
  return CARL_OK;
}

carl_exec_t *carl__mdev_exec(carl__mdev_t *d) { return d->exec; }
float *carl__mdev_array(carl__mdev_t *d, int which) { return d->arr[which]; }
const float *carl__mdev_logits(const carl__mdev_t *d) { return d->logits_h; }

void carl__mdev_free(carl__mdev_t *d) {
  if (!d) return;
  if (d->g) cudaStreamSynchronize(d->g->stream);
  for (int l = 0; d->L && l < d->nl; l++) {
    carl_cuda_mfree(d->g, d->L[l].rows.p);
    carl_cuda_mfree(d->g, d->L[l].idx.p);
    free(d->L[l].xh);
  }
  free(d->L);
  carl_exec_free(d->exec);
  carl_cuda_mfree(d->g, d->block);
  carl_cuda_mfree(d->g, d->scr.p);
  free(d->tok_h);
  free(d->tgt_h);
  free(d->logits_h);
  free(d->rowloss_h);
  free(d);
}

} /* extern "C" */

/* ---- growable row-sized buffers --------------------------------------------------------------- */
static carl_status dgrow(carl_cuda_t *g, dbuf_t *b, size_t bytes) {
  if (bytes <= b->cap) return CARL_OK;
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
  carl_cuda_mfree(g, b->p);
  b->p = NULL;
  b->cap = 0;
  CARL_TRY(carl_errctx(carl_cuda_malloc(g, bytes, &b->p), "model on the GPU: MoE rows"));
  b->cap = bytes;
  return CARL_OK;
}

static carl_status layer_reserve(carl__mdev_t *d, const carl_model_config_t *c, dlayer_t *L, int64_t R, int64_t C) {
  const size_t dm = (size_t)c->d_model, f = (size_t)c->d_ff;
  CARL_TRY(dgrow(d->g, &L->rows, rows_bytes(c, R)));
  CARL_TRY(dgrow(d->g, &L->idx, idx_bytes(R, C)));
  char *q = (char *)L->rows.p;
  L->xg = (float *)q;
  q += al(sizeof(float) * (size_t)R * dm);
  L->h = (float *)q;
  q += al(sizeof(float) * (size_t)R * 2 * f);
  L->a = (float *)q;
  q += al(sizeof(float) * (size_t)R * f);
  L->ye = (float *)q;
  q = (char *)L->idx.p;
  L->row_copy = (int64_t *)q;
  q += al(8 * (size_t)R);
  L->copy_row = (int64_t *)q;
  q += al(8 * (size_t)R);
  L->copy_off = (int64_t *)q;
  q += al(8 * (size_t)(C + 1));
  L->row_slot = (int32_t *)q;
  return CARL_OK;
}

static carl_status scr_reserve(carl__mdev_t *d, const carl_model_config_t *c, int64_t R, int64_t C) {
  if (R < d->scr_R) R = d->scr_R;
  if (C < d->scr_C) C = d->scr_C;
  const size_t dm = (size_t)c->d_model, f = (size_t)c->d_ff;
  CARL_TRY(dgrow(d->g, &d->scr, scr_bytes(c, R, C)));
  char *q = (char *)d->scr.p;
  d->xc = (float *)q;
  q += al(sizeof(float) * (size_t)C * dm);
  d->yc = (float *)q;
  q += al(sizeof(float) * (size_t)C * dm);
  d->dye = (float *)q;
  q += al(sizeof(float) * (size_t)R * dm);
  d->dhr = (float *)q;
  q += al(sizeof(float) * (size_t)R * 2 * f);
  d->da = (float *)q;
  d->scr_R = R;
  d->scr_C = C;
  return CARL_OK;
}

/* Device parameter / gradient of tensor i (NULL when absent). */
static float *DP(carl_model_t *m, int i) { return i < 0 ? NULL : m->dev->arr[0] + m->tensors[i].offset; }
static float *DG(carl_model_t *m, int i) { return i < 0 ? NULL : m->dev->arr[1] + m->tensors[i].offset; }

extern "C" carl_status carl__mdev_create(carl_model_t *m, carl_cuda_t *g, int B, int S, carl__mdev_t **out) {
  *out = NULL;
  const carl_model_config_t *c = &m->cfg;
  if ((int64_t)B * c->n_heads > 65535)
    return carl_fail(CARL_ERR_UNSUPPORTED, "model on the GPU: batch %d x %d heads = %lld attention blocks per row, at most 65535",
                     B, c->n_heads, (long long)B * c->n_heads);
  size_t need = 0;
  CARL_TRY(carl__mdev_bytes(m, B, S, &need));
  size_t fr = 0, tot = 0;
  CARL_CUDA_TRY(cudaSetDevice(g->device));
  CARL_CUDA_TRY(cudaMemGetInfo(&fr, &tot));
  const double GiB = 1024.0 * 1024.0 * 1024.0;
  const size_t pbytes = 4 * sizeof(float) * (size_t)m->nparams;
  if (need > fr)
    return carl_fail(CARL_ERR_NOMEM, "model on the GPU: training needs %zu bytes (%.2f GiB: %.2f GiB for %lld parameters with "
                     "gradients and both AdamW moments, %.2f GiB of activations for batches of %d x %d) but %s has %zu bytes "
                     "(%.2f GiB) free of %zu (cudaMemGetInfo); use a smaller train.batch, train.seq_len or model",
                     need, need / GiB, pbytes / GiB, (long long)m->nparams, (need - pbytes) / GiB, B, S, g->desc, fr, fr / GiB, tot);
  carl__mdev_t *d = (carl__mdev_t *)calloc(1, sizeof *d);
  if (!d) return carl_fail(CARL_ERR_NOMEM, "model on the GPU: out of host memory");
  d->g = g;
  d->B = B;
  d->S = S;
  d->T = (int64_t)B * S;
  d->nl = c->n_layers;
  carl_status st = CARL_OK;
  d->L = (dlayer_t *)calloc((size_t)c->n_layers, sizeof *d->L);
  d->tok_h = (int32_t *)malloc(sizeof(int32_t) * (size_t)d->T);
  d->tgt_h = (int32_t *)malloc(sizeof(int32_t) * (size_t)d->T);
  d->logits_h = (float *)malloc(sizeof(float) * (size_t)d->T * c->vocab);
  d->rowloss_h = (double *)malloc(sizeof(double) * (size_t)d->T);
  if (!d->L || !d->tok_h || !d->tgt_h || !d->logits_h || !d->rowloss_h)
    st = carl_fail(CARL_ERR_NOMEM, "model on the GPU: out of host memory");
  for (int l = 0; l < c->n_layers && st == CARL_OK; l++) {
    d->L[l].xh = (float *)malloc(sizeof(float) * (size_t)d->T * c->d_model);
    if (!d->L[l].xh) st = carl_fail(CARL_ERR_NOMEM, "model on the GPU: out of host memory");
  }
  if (st == CARL_OK) st = carl_exec_cuda_create(g, &d->exec);
  bump_t b = {NULL, 0};
  layout_fixed(m, B, S, NULL, &b);
  if (st == CARL_OK) st = carl_cuda_malloc(g, b.off, &d->block);
  if (st == CARL_OK) {
    bump_t b2 = {(char *)d->block, 0};
    layout_fixed(m, B, S, d, &b2);
  }
  int64_t R, C;
  worst_case(m, B, S, &R, &C);
  for (int l = 0; l < c->n_layers && st == CARL_OK; l++) st = layer_reserve(d, c, &d->L[l], R, C);
  if (st == CARL_OK) st = scr_reserve(d, c, R, C);
  const size_t pb = sizeof(float) * (size_t)m->nparams;
  if (st == CARL_OK) st = carl_cuda_upload(g, d->arr[0], m->params, pb);
  if (st == CARL_OK) st = carl_cuda_upload(g, d->arr[1], m->grads, pb);
  if (st == CARL_OK) st = carl_cuda_upload(g, d->arr[2], m->adam_m, pb);
  if (st == CARL_OK) st = carl_cuda_upload(g, d->arr[3], m->adam_v, pb);
  if (st != CARL_OK) {
    carl__mdev_free(d);
    return st;
  }
  *out = d;
  return CARL_OK;
}

/* ---- the MoE layer ---------------------------------------------------------------------------- */
/* x [T, d] (device) -> y [T, d] (device, overwritten); see carl__moe_forward. */
static carl_status moe_forward(carl_model_t *m, int l, const float *x, float *y) {
  carl__mdev_t *d = m->dev;
  carl_cuda_t *g = d->g;
  const carl_model_config_t *c = &m->cfg;
  const carl__layer_idx_t *ix = &m->li[l];
  dlayer_t *DL = &d->L[l];
  carl__moe_act_t *A = &m->la[l].moe;
  carl_route_in_t *in = &m->la[l].in;
  const int dm = c->d_model, f = c->d_ff, E = c->n_experts, k = c->top_k, fs = c->d_shared;
  const int64_t T = (int64_t)m->B * m->S;
  carl__moe_t Lm;
  carl__moe_of(m, l, &Lm);
  CARL_TRY(carl__moe_reserve(&Lm, A, T));
  A->T = T;
  A->Tl = T;
  A->t0 = 0;
  /* 1. router logits on the device; logits and inputs down; the decision and plan on the host */
  CARL_TRY(carl__cuda_linear_fwd(g, DL->logits, x, DP(m, ix->router), T, dm, E));
  CARL_TRY(carl_cuda_download(g, A->logits, DL->logits, sizeof(float) * (size_t)T * E));
  CARL_TRY(carl_cuda_download(g, DL->xh, x, sizeof(float) * (size_t)T * dm));
  memset(in, 0, sizeof *in);
  in->T = T;
  in->E = E;
  in->d = dm;
  in->src = NULL; /* tokens split evenly over the devices in order */
  in->token_ids = d->tok_h;
  in->step = m->step;
  in->seed = c->seed + (uint64_t)l * 0x9E3779B97F4A7C15ull;
  in->x = DL->xh;
  in->logits = A->logits;
  memset(&A->out, 0, sizeof A->out);
  A->out.experts = A->experts;
  A->out.weights = A->weights;
  A->out.dlogits = A->dlogits;
  CARL_TRY(carl_step_route(m->dstep, l, in, &A->out));
  const carl_plan_t *p = carl_step_plan(m->dstep, l);
  if (!p->has_rows) return carl_fail(CARL_ERR_STATE, "MoE layer on the GPU: the plan has no row lists");
  memset(A->load, 0, sizeof(int64_t) * (size_t)E);
  for (int64_t i = 0; i < T * k; i++)
    if (A->experts[i] >= 0) A->load[A->experts[i]]++;
  const int64_t R = p->n_rows, C = p->n_send + p->n_fwd, P = (int64_t)p->D * p->S;
  CARL_TRY(layer_reserve(d, c, DL, R, C));
  CARL_TRY(scr_reserve(d, c, R, C));
  DL->R = R;
  DL->C = C;
  /* 2. gates and row lists up; dispatch the copies; each row's input from its copy */
  CARL_TRY(carl_cuda_upload(g, DL->weights, A->weights, sizeof(float) * (size_t)T * k));
  CARL_TRY(carl_cuda_upload(g, DL->row_copy, p->row_copy, sizeof(int64_t) * (size_t)R));
  CARL_TRY(carl_cuda_upload(g, DL->copy_row, p->copy_row, sizeof(int64_t) * (size_t)R));
  CARL_TRY(carl_cuda_upload(g, DL->copy_off, p->copy_row_off, sizeof(int64_t) * (size_t)(C + 1)));
  CARL_TRY(carl_cuda_upload(g, DL->row_slot, p->row_slot, sizeof(int32_t) * (size_t)R));
  CARL_TRY(carl_exec_dispatch(d->exec, p, x, dm, d->xc));
  CARL_TRY(carl__cuda_gather_rows(g, DL->xg, d->xc, DL->row_copy, R, dm));
  /* 3. experts per physical slot: H = X W13^T, A = swiglu(H), Y = A W2^T */
  const float *w13 = DP(m, ix->w13), *w2 = DP(m, ix->w2);
  for (int64_t gi = 0; gi < P; gi++) {
    const int64_t q0 = p->recv_off[gi], n = p->recv_off[gi + 1] - q0;
    CARL_TRY(carl__cuda_sgemm(g, 0, 1, n, 2 * f, dm, 1.0f, DL->xg + q0 * dm, dm, w13 + gi * 2 * f * dm, dm, 0.0f,
                              DL->h + q0 * 2 * f, 2 * f));
  }
  CARL_TRY(carl__cuda_swiglu32_fwd(g, DL->a, DL->h, R, f));
  for (int64_t gi = 0; gi < P; gi++) {
    const int64_t q0 = p->recv_off[gi], n = p->recv_off[gi + 1] - q0;
    CARL_TRY(carl__cuda_sgemm(g, 0, 1, n, dm, f, 1.0f, DL->a + q0 * f, f, w2 + gi * dm * f, f, 0.0f, DL->ye + q0 * dm, dm));
  }
  /* 4. shared expert into y, then each copy's gated sum combined into y */
  if (fs) {
    CARL_TRY(carl__cuda_linear_fwd(g, DL->sh_h, x, DP(m, ix->sw13), T, dm, 2 * fs));
    CARL_TRY(carl__cuda_swiglu32_fwd(g, DL->sh_a, DL->sh_h, T, fs));
    CARL_TRY(carl__cuda_linear_fwd(g, y, DL->sh_a, DP(m, ix->sw2), T, fs, dm));
  } else {
    CARL_TRY(carl_cuda_memset(g, y, 0, sizeof(float) * (size_t)T * dm));
  }
  CARL_TRY(carl__cuda_copy_sums(g, d->yc, DL->ye, DL->weights, DL->row_slot, DL->copy_off, DL->copy_row, C, dm));
  return carl_exec_combine(d->exec, p, d->yc, dm, y);
}

/* dy [T, d] -> dx [T, d] (overwritten); weight gradients +=. See carl__moe_backward. */
static carl_status moe_backward(carl_model_t *m, int l, const float *x, const float *dy, float *dx) {
  carl__mdev_t *d = m->dev;
  carl_cuda_t *g = d->g;
  const carl_model_config_t *c = &m->cfg;
  const carl__layer_idx_t *ix = &m->li[l];
  dlayer_t *DL = &d->L[l];
  carl__moe_act_t *A = &m->la[l].moe;
  const carl_route_in_t *in = &m->la[l].in;
  const int dm = c->d_model, f = c->d_ff, E = c->n_experts, k = c->top_k, fs = c->d_shared;
  const int64_t T = A->T, R = DL->R, C = DL->C;
  const carl_plan_t *p = carl_step_plan(m->dstep, l);
  const int64_t P = (int64_t)p->D * p->S;
  /* d(copy outputs) = dy of the copy's token; d(gates) and d(Y) per row */
  CARL_TRY(carl_exec_combine_backward(d->exec, p, dy, dm, d->yc));
  CARL_TRY(carl_cuda_memset(g, d->dweights, 0, sizeof(float) * (size_t)T * k));
  CARL_TRY(carl__cuda_gate_grad(g, d->dweights, d->dye, d->yc, DL->ye, DL->weights, DL->row_slot, DL->row_copy, R, dm));
  /* experts: dA = dY W2, dW2 += dY^T A; dH = swiglu'; dW13 += dH^T X; dX = dH W13 */
  const float *w13 = DP(m, ix->w13), *w2 = DP(m, ix->w2);
  float *gw13 = DG(m, ix->w13), *gw2 = DG(m, ix->w2);
  for (int64_t gi = 0; gi < P; gi++) {
    const int64_t q0 = p->recv_off[gi], n = p->recv_off[gi + 1] - q0;
    if (!n) continue;
    CARL_TRY(carl__cuda_sgemm(g, 0, 0, n, f, dm, 1.0f, d->dye + q0 * dm, dm, w2 + gi * dm * f, f, 0.0f, d->da + q0 * f, f));
    CARL_TRY(carl__cuda_sgemm(g, 1, 0, dm, f, (int)n, 1.0f, d->dye + q0 * dm, dm, DL->a + q0 * f, f, 1.0f, gw2 + gi * dm * f, f));
  }
  CARL_TRY(carl__cuda_swiglu32_bwd(g, d->dhr, d->da, DL->h, R, f));
  for (int64_t gi = 0; gi < P; gi++) {
    const int64_t q0 = p->recv_off[gi], n = p->recv_off[gi + 1] - q0;
    if (!n) continue;
    CARL_TRY(carl__cuda_sgemm(g, 1, 0, 2 * f, dm, (int)n, 1.0f, d->dhr + q0 * 2 * f, 2 * f, DL->xg + q0 * dm, dm, 1.0f,
                              gw13 + gi * 2 * f * dm, dm));
    CARL_TRY(carl__cuda_sgemm(g, 0, 0, n, dm, 2 * f, 1.0f, d->dhr + q0 * 2 * f, 2 * f, w13 + gi * 2 * f * dm, dm, 0.0f,
                              d->dye + q0 * dm, dm));
  }
  /* shared expert: dx = its input gradient (or 0) */
  if (fs) {
    CARL_TRY(carl__cuda_linear_bwd(g, d->sh_da, DG(m, ix->sw2), dy, DL->sh_a, DP(m, ix->sw2), T, fs, dm, 0));
    CARL_TRY(carl__cuda_swiglu32_bwd(g, d->sh_dh, d->sh_da, DL->sh_h, T, fs));
    CARL_TRY(carl__cuda_linear_bwd(g, dx, DG(m, ix->sw13), d->sh_dh, x, DP(m, ix->sw13), T, dm, 2 * fs, 0));
  } else {
    CARL_TRY(carl_cuda_memset(g, dx, 0, sizeof(float) * (size_t)T * dm));
  }
  /* d(copies) = sum of their rows' d(X), sent back to their tokens */
  CARL_TRY(carl__cuda_copy_sums(g, d->xc, d->dye, NULL, DL->row_slot, DL->copy_off, DL->copy_row, C, dm));
  CARL_TRY(carl_exec_dispatch_backward(d->exec, p, d->xc, dm, dx));
  /* router on the host: d(gates) down, d(logits) = route's + the gates' up; then W_r and x */
  CARL_TRY(carl_cuda_download(g, A->dweights, d->dweights, sizeof(float) * (size_t)T * k));
  carl_route_out_t out = A->out;
  CARL_TRY(carl_router_backward(m->routers[l], in, &out, A->dweights, A->dlogits));
  CARL_TRY(carl_cuda_upload(g, d->dlogits_r, A->dlogits, sizeof(float) * (size_t)T * E));
  return carl__cuda_linear_bwd(g, dx, DG(m, ix->router), d->dlogits_r, x, DP(m, ix->router), T, dm, E, 1);
}

/* ---- forward, backward, clipping, AdamW -------------------------------------------------------- */
extern "C" carl_status carl__mdev_forward(carl_model_t *m, const int32_t *tokens, const int32_t *targets, int B, int S,
                                          carl_model_loss_t *loss) {
  carl__mdev_t *d = m->dev;
  carl_cuda_t *g = d->g;
  const carl_model_config_t *c = &m->cfg;
  const int64_t T = (int64_t)B * S;
  const int dm = c->d_model, V = c->vocab, H = c->n_heads;
  if (T > d->T || (int64_t)B * S * S > (int64_t)d->B * d->S * d->S)
    return carl_fail(CARL_ERR_SHAPE, "model on the GPU: batch [%d, %d] is larger than the [%d, %d] it was moved for", B, S,
                     d->B, d->S);
  m->B = B;
  m->S = S;
  memcpy(d->tok_h, tokens, sizeof(int32_t) * (size_t)T);
  CARL_TRY(carl_cuda_upload(g, d->tokens, tokens, sizeof(int32_t) * (size_t)T));
  m->have_targets = targets != NULL;
  if (targets) {
    memcpy(d->tgt_h, targets, sizeof(int32_t) * (size_t)T);
    CARL_TRY(carl_cuda_upload(g, d->targets, targets, sizeof(int32_t) * (size_t)T));
  }
  double router_loss = 0;
  CARL_TRY(carl__cuda_embed_fwd(g, d->L[0].h_in, d->tokens, DP(m, m->tok_emb), DP(m, m->pos_emb), B, S, dm));
  for (int l = 0; l < c->n_layers; l++) {
    dlayer_t *a = &d->L[l];
    const carl__layer_idx_t *x = &m->li[l];
    float *h_out = l + 1 < c->n_layers ? d->L[l + 1].h_in : d->h_final;
    CARL_TRY(carl__cuda_rmsnorm_fwd(g, a->n1, a->rstd1, a->h_in, DP(m, x->attn_norm), T, dm, c->norm_eps));
    CARL_TRY(carl__cuda_linear_fwd(g, a->qkv, a->n1, DP(m, x->wqkv), T, dm, 3 * dm));
    CARL_TRY(carl__cuda_attention_fwd(g, a->ao, a->att, a->qkv, B, S, dm, H));
    CARL_TRY(carl__cuda_linear_fwd(g, a->h_mid, a->ao, DP(m, x->wo), T, dm, dm));
    CARL_TRY(carl__cuda_add(g, a->h_mid, a->h_in, T * dm));
    CARL_TRY(carl__cuda_rmsnorm_fwd(g, a->n2, a->rstd2, a->h_mid, DP(m, x->moe_norm), T, dm, c->norm_eps));
    carl_status st = moe_forward(m, l, a->n2, h_out);
    if (st != CARL_OK) return carl_errctx(st, "layer %d", l);
    CARL_TRY(carl__cuda_add(g, h_out, a->h_mid, T * dm));
    router_loss += m->la[l].moe.out.loss_total;
  }
  CARL_TRY(carl__cuda_rmsnorm_fwd(g, d->nf, d->rstdf, d->h_final, DP(m, m->final_norm), T, dm, c->norm_eps));
  CARL_TRY(carl__cuda_linear_fwd(g, d->logits, d->nf, DP(m, m->tok_emb), T, dm, V)); /* tied head */
  double ce = 0;
  m->ntargets = 0;
  if (targets) {
    CARL_TRY(carl__cuda_xent_fwd(g, d->lse, d->rowloss, d->logits, d->targets, T, V));
    CARL_TRY(carl_cuda_download(g, d->rowloss_h, d->rowloss, sizeof(double) * (size_t)T));
    double total = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < T; i++) /* row order, as carl_xent_fwd */
      if (targets[i] >= 0) {
        total += d->rowloss_h[i];
        n++;
      }
    m->ntargets = n;
    ce = n ? total / n : 0.0;
    if (!isfinite(ce)) return carl_fail(CARL_ERR_NUMERIC, "model: cross-entropy is not finite");
  } else {
    CARL_TRY(carl_cuda_download(g, d->logits_h, d->logits, sizeof(float) * (size_t)T * V));
  }
  if (loss) {
    loss->ce = ce;
    loss->router = router_loss;
    loss->total = ce + router_loss;
    loss->ntargets = m->ntargets;
  }
  m->cap_T = T; /* a forward ran (router_update, layer_stats) */
  m->can_backward = targets != NULL;
  return CARL_OK;
}

/* Replicas of one expert: gradients summed into the first copy in slot order, then copied back
 * (carl__sync_replicas). */
static carl_status sync_replicas(carl_model_t *m) {
  if (!m->has_replicas) return CARL_OK;
  carl_cuda_t *g = m->dev->g;
  const int P = m->P;
  for (int l = 0; l < m->cfg.n_layers; l++) {
    const int32_t *first = m->first_slot + (int64_t)l * P;
    const int idx[2] = {m->li[l].w13, m->li[l].w2};
    for (int i = 0; i < 2; i++) {
      const carl_tensor_info_t *ti = &m->tensors[idx[i]];
      const int64_t n = ti->numel / P;
      float *g0 = m->dev->arr[1] + ti->offset;
      for (int s = 0; s < P; s++)
        if (first[s] >= 0 && first[s] != s) CARL_TRY(carl__cuda_add(g, g0 + (int64_t)first[s] * n, g0 + (int64_t)s * n, n));
      for (int s = 0; s < P; s++)
        if (first[s] >= 0 && first[s] != s)
          CARL_TRY(carl_cuda_copy(g, g0 + (int64_t)s * n, g0 + (int64_t)first[s] * n, sizeof(float) * (size_t)n));
    }
  }
  return CARL_OK;
}

extern "C" carl_status carl__mdev_backward(carl_model_t *m) {
  carl__mdev_t *d = m->dev;
  carl_cuda_t *g = d->g;
  if (d->err != CARL_OK) {
    const carl_status e = d->err;
    d->err = CARL_OK;
    return carl_fail(e, "model on the GPU: zeroing the gradients failed");
  }
  const carl_model_config_t *c = &m->cfg;
  const int B = m->B, S = m->S, dm = c->d_model, V = c->vocab, H = c->n_heads;
  const int64_t T = (int64_t)B * S;
  const float scale = m->ntargets ? 1.0f / (float)m->ntargets : 0.0f;
  CARL_TRY(carl__cuda_xent_bwd(g, d->dlogits, d->logits, d->lse, d->targets, T, V, scale));
  CARL_TRY(carl__cuda_linear_bwd(g, d->dtmp, DG(m, m->tok_emb), d->dlogits, d->nf, DP(m, m->tok_emb), T, dm, V, 0));
  CARL_TRY(carl__cuda_rmsnorm_bwd(g, d->dh, DG(m, m->final_norm), d->dtmp, d->h_final, DP(m, m->final_norm), d->rstdf, T, dm, 0));
  for (int l = c->n_layers - 1; l >= 0; l--) {
    dlayer_t *a = &d->L[l];
    const carl__layer_idx_t *x = &m->li[l];
    carl_status st = moe_backward(m, l, a->n2, d->dh, d->dtmp);
    if (st != CARL_OK) return carl_errctx(st, "layer %d backward", l);
    CARL_TRY(carl__cuda_rmsnorm_bwd(g, d->dh, DG(m, x->moe_norm), d->dtmp, a->h_mid, DP(m, x->moe_norm), a->rstd2, T, dm, 1));
    CARL_TRY(carl__cuda_linear_bwd(g, d->dtmp, DG(m, x->wo), d->dh, a->ao, DP(m, x->wo), T, dm, dm, 0));
    CARL_TRY(carl__cuda_attention_bwd(g, d->dqkv, d->datt, d->dtmp, a->qkv, a->att, B, S, dm, H));
    CARL_TRY(carl__cuda_linear_bwd(g, d->dtmp2, DG(m, x->wqkv), d->dqkv, a->n1, DP(m, x->wqkv), T, dm, 3 * dm, 0));
    CARL_TRY(carl__cuda_rmsnorm_bwd(g, d->dh, DG(m, x->attn_norm), d->dtmp2, a->h_in, DP(m, x->attn_norm), a->rstd1, T, dm, 1));
  }
  CARL_TRY(carl__cuda_embed_bwd(g, DG(m, m->tok_emb), DG(m, m->pos_emb), d->dh, d->tokens, B, S, dm));
  CARL_TRY(sync_replicas(m));
  return carl_cuda_sync(g);
}

extern "C" carl_status carl__mdev_zero_grad(carl_model_t *m) {
  carl__mdev_t *d = m->dev;
  carl_status st = carl_cuda_memset(d->g, d->arr[1], 0, sizeof(float) * (size_t)m->nparams);
  if (st != CARL_OK && d->err == CARL_OK) d->err = st;
  return st;
}

extern "C" carl_status carl__mdev_clip(carl_model_t *m, float max_norm, double *norm) {
  carl__mdev_t *d = m->dev;
  carl_cuda_t *g = d->g;
  const float *gr = d->arr[1];
  double s = 0;
  if (!m->has_replicas) {
    CARL_TRY(carl__cuda_sumsq(g, gr, m->nparams, &s));
  } else { /* each expert once: its first slot (carl__grad_sumsq) */
    for (int i = 0; i < m->ntensors; i++) {
      const carl_tensor_info_t *t = &m->tensors[i];
      int layer = -1;
      for (int l = 0; l < m->cfg.n_layers; l++)
        if (i == m->li[l].w13 || i == m->li[l].w2) layer = l;
      double v = 0;
      if (layer < 0) {
        CARL_TRY(carl__cuda_sumsq(g, gr + t->offset, t->numel, &v));
        s += v;
        continue;
      }
      const int32_t *first = m->first_slot + (int64_t)layer * m->P;
      const int64_t n = t->numel / m->P;
      for (int gi = 0; gi < m->P; gi++)
        if (first[gi] == gi) {
          CARL_TRY(carl__cuda_sumsq(g, gr + t->offset + (int64_t)gi * n, n, &v));
          s += v;
        }
    }
  }
  *norm = sqrt(s);
  if (max_norm > 0 && *norm > max_norm) CARL_TRY(carl__cuda_scale(g, d->arr[1], (float)(max_norm / *norm), m->nparams));
  return CARL_OK;
}

extern "C" carl_status carl__mdev_adamw(carl_model_t *m, const carl_adamw_cfg_t *opt, float lr) {
  carl__mdev_t *d = m->dev;
  const float bc1 = 1.0f - powf(opt->beta1, (float)m->adam_t), bc2 = 1.0f - powf(opt->beta2, (float)m->adam_t);
  for (int i = 0; i < m->ntensors; i++) {
    const carl_tensor_info_t *t = &m->tensors[i];
    const int64_t o = t->offset;
    CARL_TRY(carl__cuda_adamw(d->g, d->arr[0] + o, d->arr[1] + o, d->arr[2] + o, d->arr[3] + o, t->numel, opt->beta1,
                              opt->beta2, opt->eps, t->decay ? opt->weight_decay : 0.0f, lr, bc1, bc2));
  }
  return carl_cuda_sync(d->g);
}

extern "C" carl_status carl__mdev_download(carl_model_t *m) {
  carl__mdev_t *d = m->dev;
  const size_t pb = sizeof(float) * (size_t)m->nparams;
  float *host[4] = {m->params, m->grads, m->adam_m, m->adam_v};
  for (int i = 0; i < 4; i++) CARL_TRY(carl_cuda_download(d->g, host[i], d->arr[i], pb));
  return CARL_OK;
}
