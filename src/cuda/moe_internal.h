/* Internal to src/cuda: the kernels of the bf16 MoE expert layer (permute.cu, swiglu.cu,
 * grouped_gemm.cu), assembled by moe.cu and called by the tests (plain C: no CUDA headers).
 * Every pointer is device memory; bf16 as uint16_t. */
#ifndef CARL_CUDA_MOE_INTERNAL_H
#define CARL_CUDA_MOE_INTERNAL_H

#include "carl/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- permute.cu (CPU reference: the local executor's gather and combine, src/exec/local.c) ---- */
/* xp[r] = x[row_tok[r]] (rows of d bf16, d % 8 == 0). */
carl_status carl__cuda_permute(carl_cuda_t *g, uint16_t *xp /* [R, d] */, const uint16_t *x /* [T, d] */,
                               const int32_t *row_tok /* [R] */, int64_t R, int d);
/* y[t] = bf16(sum over t's rows q of (gates ? gates[row_slot[r]] : 1) * Y[r]), r = tok_row[q] for q in
 * [tok_off[t], tok_off[t + 1]), the sum in float32 in that order; 0 for tokens without rows. */
carl_status carl__cuda_unpermute(carl_cuda_t *g, uint16_t *y /* [T, d] */, const uint16_t *Y /* [R, d] */,
                                 const float *gates /* [T * k] or NULL */, const int32_t *row_slot /* [R] */,
                                 const int64_t *tok_off /* [T + 1] */, const int32_t *tok_row /* [R] */, int64_t T,
                                 int d);
/* Backward of the gated combine: dY[r] = bf16(gates[row_slot[r]] * dy[row_tok[r]]) and
 * dgates[row_slot[r]] = sum_c dy[row_tok[r], c] * Y[r, c] (float32). */
carl_status carl__cuda_unpermute_bwd(carl_cuda_t *g, uint16_t *dY /* [R, d] */, float *dgates /* [T * k] */,
                                     const uint16_t *dy /* [T, d] */, const uint16_t *Y /* [R, d] */,
                                     const float *gates, const int32_t *row_slot, const int32_t *row_tok, int64_t R,
                                     int d);

/* ---- swiglu.cu (CPU reference: carl_swiglu_fwd / carl_swiglu_bwd, src/nn/act.c) ------------- */
/* a[r, c] = silu(h[r, c]) * h[r, f + c]; f % 8 == 0. */
carl_status carl__cuda_swiglu_fwd(carl_cuda_t *g, uint16_t *a /* [R, f] */, const uint16_t *h /* [R, 2f] */, int64_t R,
                                  int f);
/* dh[r, c] = da * up * silu'(gate), dh[r, f + c] = da * silu(gate). */
carl_status carl__cuda_swiglu_bwd(carl_cuda_t *g, uint16_t *dh /* [R, 2f] */, const uint16_t *da /* [R, f] */,
                                  const uint16_t *h /* [R, 2f] */, int64_t R, int f);

/* ---- grouped_gemm.cu (CPU reference: carl_sgemm, src/nn/linear.c) ----------------------------- */
/* One product per group i with rows[i] > 0, row-major bf16 operands, float32 accumulation:
 *   C_i [M_i, N] = op(A_i) op(B_i) as carl_sgemm(transA, transB, ...) with alpha 1, beta 0.
 * The shapes are given as for carl_sgemm: M_i = rows of C_i, N columns, K inner; lda, ldb, ldc the
 * row strides. mode 0: one cublasGemmEx per group; 1: one cublasGemmGroupedBatchedEx for all. */
typedef struct {
  int transA, transB;
  int64_t M;
  int N, K;
  const uint16_t *A;
  int lda;
  const uint16_t *B;
  int ldb;
  uint16_t *C;
  int ldc;
} carl__bgemm_t;
carl_status carl__cuda_gemm_bf16(carl_cuda_t *g, int mode, int n, const carl__bgemm_t *p, void **dev_ptrs /* [3n] device */);

#ifdef __cplusplus
}
#endif
#endif
