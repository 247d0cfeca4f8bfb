/* Internal to src/cuda: the float32 kernels of the dense transformer parts (nn.cu), assembled by
 * model.cu. Every pointer is device memory; work is queued on the context's stream. Each kernel
 * names its CPU reference (src/nn/, src/model/moe.c); sums run in the CPU's order where a thread
 * owns an output, so the results agree with the CPU to float rounding (docs/gpu.md). */
#ifndef CARL_CUDA_NN_INTERNAL_H
#define CARL_CUDA_NN_INTERNAL_H

#include "carl/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Row-major float32 product through cublasSgemm, the arguments of carl_sgemm (src/nn/linear.c):
 * C [M, N] = alpha op(A) op(B) + beta C. M == 0 does nothing. */
carl_status carl__cuda_sgemm(carl_cuda_t *g, int transA, int transB, int64_t M, int N, int K, float alpha, const float *A,
                             int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* carl_linear_fwd / carl_linear_bwd: y [N, Out] = x W^T; dW += dy^T x; dx = (or +=) dy W. */
carl_status carl__cuda_linear_fwd(carl_cuda_t *g, float *y, const float *x, const float *W, int64_t N, int In, int Out);
carl_status carl__cuda_linear_bwd(carl_cuda_t *g, float *dx, float *dW, const float *dy, const float *x, const float *W,
                                  int64_t N, int In, int Out, int dx_accum);
/* carl_rmsnorm_fwd / carl_rmsnorm_bwd (src/nn/norm.c). */
carl_status carl__cuda_rmsnorm_fwd(carl_cuda_t *g, float *y, float *rstd, const float *x, const float *w, int64_t N, int d,
                                   float eps);
carl_status carl__cuda_rmsnorm_bwd(carl_cuda_t *g, float *dx, float *dw, const float *dy, const float *x, const float *w,
                                   const float *rstd, int64_t N, int d, int dx_accum);
/* carl_attention_fwd / carl_attention_bwd (src/nn/attention.c): causal, per (batch, head, row). */
carl_status carl__cuda_attention_fwd(carl_cuda_t *g, float *out, float *att, const float *qkv, int B, int S, int d, int H);
carl_status carl__cuda_attention_bwd(carl_cuda_t *g, float *dqkv, float *datt, const float *dout, const float *qkv,
                                     const float *att, int B, int S, int d, int H);
/* carl_swiglu_fwd / carl_swiglu_bwd (src/nn/act.c) on float32 rows. */
carl_status carl__cuda_swiglu32_fwd(carl_cuda_t *g, float *a, const float *h, int64_t N, int f);
carl_status carl__cuda_swiglu32_bwd(carl_cuda_t *g, float *dh, const float *da, const float *h, int64_t N, int f);
/* carl_embed_fwd / carl_embed_bwd (src/nn/loss.c): tokens [B * S]; backward in token order per column. */
carl_status carl__cuda_embed_fwd(carl_cuda_t *g, float *x, const int32_t *tokens, const float *tok_emb, const float *pos_emb,
                                 int B, int S, int d);
carl_status carl__cuda_embed_bwd(carl_cuda_t *g, float *dtok_emb, float *dpos_emb, const float *dx, const int32_t *tokens,
                                 int B, int S, int d);
/* carl_xent_fwd's per-row part: lse [N] and rowloss [N] = lse - logits[target] (0 for target < 0),
 * double; the caller sums the rows in order. carl_xent_bwd. */
carl_status carl__cuda_xent_fwd(carl_cuda_t *g, float *lse, double *rowloss, const float *logits, const int32_t *targets,
                                int64_t N, int V);
carl_status carl__cuda_xent_bwd(carl_cuda_t *g, float *dlogits, const float *logits, const float *lse,
                                const int32_t *targets, int64_t N, int V, float scale);
/* y += x; x *= s (n floats). */
carl_status carl__cuda_add(carl_cuda_t *g, float *y, const float *x, int64_t n);
carl_status carl__cuda_scale(carl_cuda_t *g, float *x, float s, int64_t n);
/* sum of x^2 in double: fixed blocks, their partial sums added on the host in block order. Waits. */
carl_status carl__cuda_sumsq(carl_cuda_t *g, const float *x, int64_t n, double *out /* host */);
/* carl_adamw_update (src/nn/optim.c) with bc1 = 1 - beta1^t, bc2 = 1 - beta2^t from the host. */
carl_status carl__cuda_adamw(carl_cuda_t *g, float *p, const float *gr, float *m, float *v, int64_t n, float beta1,
                             float beta2, float eps, float wd, float lr, float bc1, float bc2);
/* dst [n, d] = src[idx[r]] (the MoE layer's row gather, src/model/moe.c). */
carl_status carl__cuda_gather_rows(carl_cuda_t *g, float *dst, const float *src, const int64_t *idx, int64_t n, int d);
/* v[c] = sum over q in [off[c], off[c+1]) of (gate ? gate[row_slot[r]] : 1) * rows[r], r = copy_row[q],
 * in that order (carl__moe_copy_sums, src/model/moe.c). */
carl_status carl__cuda_copy_sums(carl_cuda_t *g, float *v, const float *rows, const float *gate, const int32_t *row_slot,
                                 const int64_t *off, const int64_t *copy_row, int64_t nc, int d);
/* Per row r: dweights[row_slot[r]] = <dyc[row_copy[r]], ye[r]> (double), dye[r] = gate * dyc[row_copy[r]]
 * (carl__moe_backward). dweights is not cleared here. */
carl_status carl__cuda_gate_grad(carl_cuda_t *g, float *dweights, float *dye, const float *dyc, const float *ye,
                                 const float *weights, const int32_t *row_slot, const int64_t *row_copy, int64_t R, int d);

#ifdef __cplusplus
}
#endif
#endif
