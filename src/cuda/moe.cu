/* The bf16 MoE expert layer of one device (carl/cuda.h): permute by the plan's rows, the SwiGLU
 * expert FFN through grouped GEMMs (float32 accumulation), the gated combine, and the backward.
 * CPU reference: carl__moe_forward / carl__moe_backward (src/model/moe.c) in float32; the layer is
 * checked against PyTorch on the GPU machine as well (tests/gpu/moe_torch.py). */
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.h"
#include "cuda/moe_internal.h"

struct carl_cuda_moe_act {
  carl_cuda_t *g;
  int64_t T, R;
  int S, d, f, k;
  int64_t *off;      /* host [S + 1] rows of each slot, from 0 */
  /* device */
  int32_t *row_tok;  /* [R] */
  int32_t *row_slot; /* [R] */
  int64_t *tok_off;  /* [T + 1] */
  int32_t *tok_row;  /* [R] */
  uint16_t *xp, *h, *a, *ye, *dye, *da, *dh;
  void **ptrs;       /* [3 S] pointer arrays of the grouped GEMM */
  size_t cap_idx, cap_act;
  void *idx_mem, *act_mem;
};

extern "C" {

carl_status carl_cuda_moe_act_create(carl_cuda_t *g, carl_cuda_moe_act_t **A) {
  if (!g || !A) return carl_fail(CARL_ERR_INVALID, "carl_cuda_moe_act_create: NULL argument");
  *A = (carl_cuda_moe_act_t *)calloc(1, sizeof **A);
  if (!*A) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of host memory");
  (*A)->g = g;
  return CARL_OK;
}

void carl_cuda_moe_act_free(carl_cuda_moe_act_t *A) {
  if (!A) return;
  carl_cuda_mfree(A->g, A->idx_mem);
  carl_cuda_mfree(A->g, A->act_mem);
  free(A->off);
  free(A);
}

int64_t carl_cuda_moe_rows(const carl_cuda_moe_act_t *A) { return A ? A->R : 0; }

static size_t al(size_t n) { return (n + 255) & ~(size_t)255; }

carl_status carl_cuda_moe_plan(carl_cuda_t *g, const carl_cuda_moe_t *L, carl_cuda_moe_act_t *A, const carl_plan_t *p,
                               int dev) {
  if (!g || !L || !A || !p) return carl_fail(CARL_ERR_INVALID, "carl_cuda_moe_plan: NULL argument");
  if (!p->has_rows) return carl_fail(CARL_ERR_STATE, "MoE layer: the plan has no row lists (build it with CARL_PLAN_ROWS)");
  if (dev < 0 || dev >= p->D) return carl_fail(CARL_ERR_INVALID, "MoE layer: device %d, the plan has %d", dev, p->D);
  if (p->device >= 0 && p->device != dev)
    return carl_fail(CARL_ERR_INVALID, "MoE layer: the plan is for device %d, not %d", p->device, dev);
  if (L->S != p->S || L->k != p->k)
    return carl_fail(CARL_ERR_SHAPE, "MoE layer: %d slots and k = %d, the plan has %d slots and k = %d", L->S, L->k, p->S, p->k);
  if (L->d < 8 || L->d % 8 || L->f < 8 || L->f % 8)
    return carl_fail(CARL_ERR_UNSUPPORTED, "MoE layer on the GPU: d = %d and f = %d must be multiples of 8", L->d, L->f);
  const int S = p->S;
  const int64_t T = p->T, r0 = p->recv_off[(int64_t)dev * S], r1 = p->recv_off[(int64_t)dev * S + S], R = r1 - r0;
  if (R > 0x7fffffff) return carl_fail(CARL_ERR_UNSUPPORTED, "MoE layer: %lld rows on one device", (long long)R);
  int64_t *off = (int64_t *)realloc(A->off, sizeof(int64_t) * (size_t)(S + 1));
  if (!off) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of host memory");
  A->off = off;
  for (int j = 0; j <= S; j++) off[j] = p->recv_off[(int64_t)dev * S + j] - r0;
  /* host index arrays: row_tok, row_slot, tok_off, tok_row */
  const size_t n_idx = al(sizeof(int32_t) * (size_t)R) * 3 + al(sizeof(int64_t) * (size_t)(T + 1));
  char *h = (char *)malloc(n_idx);
  if (!h) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of host memory for %lld rows", (long long)R);
  int32_t *row_tok = (int32_t *)h, *row_slot = (int32_t *)(h + al(4 * (size_t)R)), *tok_row = (int32_t *)(h + 2 * al(4 * (size_t)R));
  int64_t *tok_off = (int64_t *)(h + 3 * al(4 * (size_t)R));
  memset(tok_off, 0, sizeof(int64_t) * (size_t)(T + 1));
  for (int64_t r = 0; r < R; r++) {
    int64_t c = p->row_copy[r0 + r];
    if (c >= p->n_send) c = p->fwd_parent[c - p->n_send];
    if (c < 0 || c >= p->n_send) {
      free(h);
      return carl_fail(CARL_ERR_STATE, "MoE layer: row %lld reads a copy outside the plan of device %d", (long long)(r0 + r), dev);
    }
    row_tok[r] = p->send_tok[c];
    row_slot[r] = p->row_slot[r0 + r];
    tok_off[row_tok[r] + 1]++;
  }
  for (int64_t t = 0; t < T; t++) tok_off[t + 1] += tok_off[t];
  {
    int64_t *fill = (int64_t *)malloc(sizeof(int64_t) * (size_t)(T + 1));
    if (!fill) {
      free(h);
      return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of host memory");
    }
    memcpy(fill, tok_off, sizeof(int64_t) * (size_t)(T + 1));
    for (int64_t r = 0; r < R; r++) tok_row[fill[row_tok[r]]++] = (int32_t)r; /* ascending row inside a token */
    free(fill);
  }
  carl_status st = CARL_OK;
  const size_t need_idx = n_idx + al(sizeof(void *) * 3 * (size_t)S);
  if (need_idx > A->cap_idx) {
    carl_cuda_mfree(g, A->idx_mem);
    A->idx_mem = NULL;
    A->cap_idx = 0;
    st = carl_cuda_malloc(g, need_idx, &A->idx_mem);
    if (st == CARL_OK) A->cap_idx = need_idx;
  }
  if (st == CARL_OK) st = carl_cuda_upload(g, A->idx_mem, h, n_idx);
  free(h);
  CARL_TRY(st);
  char *d0 = (char *)A->idx_mem;
  A->row_tok = (int32_t *)d0;
  A->row_slot = (int32_t *)(d0 + al(4 * (size_t)R));
  A->tok_row = (int32_t *)(d0 + 2 * al(4 * (size_t)R));
  A->tok_off = (int64_t *)(d0 + 3 * al(4 * (size_t)R));
  A->ptrs = (void **)(d0 + n_idx);
  /* activations, bf16: xp, ye, dye [R, d]; h, dh [R, 2f]; a, da [R, f] */
  const size_t rd = al(2 * (size_t)R * L->d), rf = al(2 * (size_t)R * L->f);
  const size_t need_act = 3 * rd + 2 * (2 * rf) + 2 * rf + 256;
  if (need_act > A->cap_act) {
    carl_cuda_mfree(g, A->act_mem);
    A->act_mem = NULL;
    A->cap_act = 0;
    CARL_TRY(carl_cuda_malloc(g, need_act, &A->act_mem));
    A->cap_act = need_act;
  }
  char *q = (char *)A->act_mem;
  A->xp = (uint16_t *)q;
  A->ye = (uint16_t *)(q + rd);
  A->dye = (uint16_t *)(q + 2 * rd);
  A->h = (uint16_t *)(q + 3 * rd);
  A->dh = (uint16_t *)(q + 3 * rd + 2 * rf);
  A->a = (uint16_t *)(q + 3 * rd + 4 * rf);
  A->da = (uint16_t *)(q + 3 * rd + 5 * rf);
  A->T = T;
  A->R = R;
  A->S = S;
  A->d = L->d;
  A->f = L->f;
  A->k = L->k;
  return CARL_OK;
}

static carl_status moe_check(const carl_cuda_moe_t *L, const carl_cuda_moe_act_t *A) {
  if (!A->off) return carl_fail(CARL_ERR_STATE, "MoE layer: no plan uploaded (carl_cuda_moe_plan)");
  if (L->d != A->d || L->f != A->f || L->S != A->S || L->k != A->k)
    return carl_fail(CARL_ERR_STATE, "MoE layer: the plan was uploaded for d = %d, f = %d, %d slots, k = %d", A->d, A->f, A->S, A->k);
  if (L->gemm != 0 && L->gemm != 1) return carl_fail(CARL_ERR_INVALID, "MoE layer: gemm mode %d (0 or 1)", L->gemm);
  return CARL_OK;
}

/* One product per slot: C_j = op(A_j) op(B_j), shapes as carl_sgemm, rows M_j = the slot's rows
 * (or, for the weight gradients, fixed M with K_j = the slot's rows). */
typedef struct {
  int transA, transB;
  int rows_in_K; /* the slot's rows are K (weight gradients) instead of M */
  int N, K, M;   /* fixed dims (the one that is the slot's rows is ignored) */
  const uint16_t *A;
  int lda;
  int64_t sA;    /* A's advance per slot: per row (row operands) or per slot (weights) */
  int a_rows;    /* 1: A advances with the slot's first row; 0: by slot index */
  const uint16_t *B;
  int ldb;
  int64_t sB;
  int b_rows;
  uint16_t *C;
  int ldc;
  int64_t sC;
  int c_rows;
} phase_t;

static carl_status run_phase(carl_cuda_t *g, const carl_cuda_moe_t *L, carl_cuda_moe_act_t *A, const phase_t *ph,
                             carl__bgemm_t *buf) {
  for (int j = 0; j < A->S; j++) {
    const int64_t n = A->off[j + 1] - A->off[j], r = A->off[j];
    carl__bgemm_t *q = &buf[j];
    q->transA = ph->transA;
    q->transB = ph->transB;
    q->M = ph->rows_in_K ? (n > 0 ? ph->M : 0) : n;
    q->N = ph->N;
    q->K = ph->rows_in_K ? (int)n : ph->K;
    q->A = ph->A + (ph->a_rows ? r : j) * ph->sA;
    q->lda = ph->lda;
    q->B = ph->B + (ph->b_rows ? r : j) * ph->sB;
    q->ldb = ph->ldb;
    q->C = ph->C + (ph->c_rows ? r : j) * ph->sC;
    q->ldc = ph->ldc;
  }
  return carl__cuda_gemm_bf16(g, L->gemm, A->S, buf, A->ptrs);
}

carl_status carl_cuda_moe_forward(carl_cuda_t *g, const carl_cuda_moe_t *L, const carl_cuda_moe_w_t *W,
                                  carl_cuda_moe_act_t *A, const uint16_t *x, const float *gates, uint16_t *y) {
  if (!g || !L || !W || !A || !x || !gates || !y || !W->w13 || !W->w2)
    return carl_fail(CARL_ERR_INVALID, "carl_cuda_moe_forward: NULL argument");
  CARL_TRY(moe_check(L, A));
  const int d = L->d, f = L->f;
  carl__bgemm_t *buf = (carl__bgemm_t *)malloc(sizeof *buf * (size_t)A->S);
  if (!buf) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of host memory");
  carl_status st = carl__cuda_permute(g, A->xp, x, A->row_tok, A->R, d);
  /* H = X W13^T [R, 2f] */
  const phase_t p1 = {0, 1, 0, 2 * f, d, 0, A->xp, d, d, 1, W->w13, d, (int64_t)2 * f * d, 0, A->h, 2 * f, 2 * f, 1};
  if (st == CARL_OK) st = run_phase(g, L, A, &p1, buf);
  if (st == CARL_OK) st = carl__cuda_swiglu_fwd(g, A->a, A->h, A->R, f);
  /* Y = A W2^T [R, d] */
  const phase_t p2 = {0, 1, 0, d, f, 0, A->a, f, f, 1, W->w2, f, (int64_t)d * f, 0, A->ye, d, d, 1};
  if (st == CARL_OK) st = run_phase(g, L, A, &p2, buf);
  if (st == CARL_OK) st = carl__cuda_unpermute(g, y, A->ye, gates, A->row_slot, A->tok_off, A->tok_row, A->T, d);
  free(buf);
  return st;
}

carl_status carl_cuda_moe_backward(carl_cuda_t *g, const carl_cuda_moe_t *L, const carl_cuda_moe_w_t *W,
                                   carl_cuda_moe_act_t *A, const float *gates, const uint16_t *dy, uint16_t *dx,
                                   uint16_t *dw13, uint16_t *dw2, float *dgates) {
  if (!g || !L || !W || !A || !gates || !dy || !dx || !dw13 || !dw2 || !dgates || !W->w13 || !W->w2)
    return carl_fail(CARL_ERR_INVALID, "carl_cuda_moe_backward: NULL argument");
  CARL_TRY(moe_check(L, A));
  const int d = L->d, f = L->f;
  carl__bgemm_t *buf = (carl__bgemm_t *)malloc(sizeof *buf * (size_t)A->S);
  if (!buf) return carl_fail(CARL_ERR_NOMEM, "MoE layer: out of host memory");
  carl_status st = CARL_OK;
  /* slots without rows get zero weight gradients */
  for (int j = 0; j < A->S && st == CARL_OK; j++)
    if (A->off[j + 1] == A->off[j]) {
      st = carl_cuda_memset(g, dw13 + (int64_t)j * 2 * f * d, 0, sizeof(uint16_t) * 2 * (size_t)f * d);
      if (st == CARL_OK) st = carl_cuda_memset(g, dw2 + (int64_t)j * d * f, 0, sizeof(uint16_t) * (size_t)d * f);
    }
  if (st == CARL_OK) st = carl_cuda_memset(g, dgates, 0, sizeof(float) * (size_t)A->T * A->k);
  /* dY = gate * dy (per row), d(gates) = <dy, Y> */
  if (st == CARL_OK) st = carl__cuda_unpermute_bwd(g, A->dye, dgates, dy, A->ye, gates, A->row_slot, A->row_tok, A->R, d);
  /* dA = dY W2 [R, f]; dW2 = dY^T A [d, f] */
  const phase_t p1 = {0, 0, 0, f, d, 0, A->dye, d, d, 1, W->w2, f, (int64_t)d * f, 0, A->da, f, f, 1};
  if (st == CARL_OK) st = run_phase(g, L, A, &p1, buf);
  const phase_t p2 = {1, 0, 1, f, 0, d, A->dye, d, d, 1, A->a, f, f, 1, dw2, f, (int64_t)d * f, 0};
  if (st == CARL_OK) st = run_phase(g, L, A, &p2, buf);
  if (st == CARL_OK) st = carl__cuda_swiglu_bwd(g, A->dh, A->da, A->h, A->R, f);
  /* dX = dH W13 [R, d] (into dye, no longer needed); dW13 = dH^T X [2f, d] */
  const phase_t p3 = {0, 0, 0, d, 2 * f, 0, A->dh, 2 * f, 2 * f, 1, W->w13, d, (int64_t)2 * f * d, 0, A->dye, d, d, 1};
  if (st == CARL_OK) st = run_phase(g, L, A, &p3, buf);
  const phase_t p4 = {1, 0, 1, d, 0, 2 * f, A->dh, 2 * f, 2 * f, 1, A->xp, d, d, 1, dw13, d, (int64_t)2 * f * d, 0};
  if (st == CARL_OK) st = run_phase(g, L, A, &p4, buf);
  /* dx[t] = sum over t's rows of dX[r] */
  if (st == CARL_OK) st = carl__cuda_unpermute(g, dx, A->dye, NULL, A->row_slot, A->tok_off, A->tok_row, A->T, d);
  free(buf);
  return st;
}

} /* extern "C" */
