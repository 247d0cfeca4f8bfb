/* carl/nn.h: fp32 CPU kernels for the MoE transformer (OpenBLAS sgemm + OpenMP loops).
 *
 * Usage:
 *   carl_linear_fwd(y, x, W, N, In, Out);               // y[N,Out] = x[N,In] W[Out,In]^T
 *   carl_linear_bwd(dx, dW, dy, x, W, N, In, Out, 0);   // dW += dy^T x; dx = dy W
 *   carl_rmsnorm_fwd(y, rstd, x, w, N, d, 1e-5f);
 *   float loss = carl_xent_fwd(lse, logits, targets, N, V, &n);  // mean over targets >= 0
 *   carl_xent_bwd(dlogits, logits, lse, targets, N, V, 1.0f / n);
 *   carl_adamw_update(p, g, m, v, n, &opt, lr, t, 1);
 *
 * Conventions: every kernel takes caller storage; "bwd" kernels ADD into parameter gradients
 * (dW, dw) so gradients of several uses accumulate, and overwrite input gradients (dx) unless a
 * flag says accumulate. Linear weights are [out, in] (PyTorch layout).
 * Determinism: float sums run in a fixed order that does not depend on the OpenMP thread count.
 * Matrix products go through carl_sgemm, which cuts the output into fixed tiles, runs one
 * single-threaded OpenBLAS sgemm per tile and spreads the tiles over OpenMP threads (OpenBLAS's own
 * threading changes the bits with the thread count). OpenBLAS is set to one thread for the
 * duration of each product and the caller's setting restored; parallelism comes from OpenMP.
 * Nothing here allocates except where stated; nothing prints.
 */
#ifndef CARL_NN_H
#define CARL_NN_H

#include "carl/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- matrix product ---------------------------------------------------------------------------- */
/* Row-major C [M, N] = alpha op(A) op(B) + beta C, op(A) [M, K], op(B) [K, N] (trans flags 0/1 as
 * in cblas; lda, ldb, ldc are the row strides of A, B, C as stored). Deterministic over thread counts. */
void carl_sgemm(int transA, int transB, int64_t M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc);
/* Several independent products (outputs must not overlap) in one parallel pass over all their
 * tiles: the per-expert products of an MoE layer. Same results as one carl_sgemm per product. */
typedef struct {
  int transA, transB;
  int64_t M;
  int N, K;
  float alpha;
  const float *A;
  int lda;
  const float *B;
  int ldb;
  float beta;
  float *C;
  int ldc;
} carl_gemm_t;
void carl_sgemm_batch(int n, const carl_gemm_t *g);

/* ---- linear (no bias) ------------------------------------------------------------------------ */
/* y [N, Out] = x [N, In] W^T, W [Out, In]. */
void carl_linear_fwd(float *y, const float *x, const float *W, int64_t N, int In, int Out);
/* dW [Out, In] += dy^T x; dx [N, In] = dy W (or += when dx_accum). dx or dW may be NULL (skipped). */
void carl_linear_bwd(float *dx, float *dW, const float *dy, const float *x, const float *W, int64_t N, int In,
                     int Out, int dx_accum);

/* ---- RMSNorm: y = x / sqrt(mean(x^2) + eps) * w ------------------------------------------------ */
/* y, x [N, d]; w [d]; rstd [N] saved for backward. */
void carl_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int64_t N, int d, float eps);
/* dx [N, d] = (or += when dx_accum); dw [d] +=. */
void carl_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rstd,
                      int64_t N, int d, int dx_accum);

/* ---- causal multi-head self-attention ---------------------------------------------------------- */
/* qkv [B, S, 3d] (q | k | v, head h at columns h*hd.. of each third, hd = d / H);
 * out [B, S, d]; att [B, H, S, S] softmax probabilities (row i uses columns 0..i; the rest 0). */
void carl_attention_fwd(float *out, float *att, const float *qkv, int B, int S, int d, int H);
/* dqkv [B, S, 3d] overwritten; scratch [B, H, S, S] caller storage. */
void carl_attention_bwd(float *dqkv, float *scratch, const float *dout, const float *qkv, const float *att, int B,
                        int S, int d, int H);

/* ---- SwiGLU: a = silu(h[:, :f]) * h[:, f:] --------------------------------------------------- */
/* h [N, 2f]; a [N, f]. */
void carl_swiglu_fwd(float *a, const float *h, int64_t N, int f);
/* dh [N, 2f] overwritten from da [N, f]. */
void carl_swiglu_bwd(float *dh, const float *da, const float *h, int64_t N, int f);

/* ---- softmax cross-entropy --------------------------------------------------------------------- */
/* logits [N, V]; targets [N] (< 0: ignored); lse [N] log-sum-exp per row (saved for backward).
 * Returns the mean loss over counted rows (0 when none); *ncount = counted rows. */
double carl_xent_fwd(float *lse, const float *logits, const int32_t *targets, int64_t N, int V, int64_t *ncount);
/* dlogits [N, V] = scale * (softmax(logits) - onehot(target)); rows with target < 0 get 0.
 * dlogits may alias logits. */
void carl_xent_bwd(float *dlogits, const float *logits, const float *lse, const int32_t *targets, int64_t N, int V,
                   float scale);

/* ---- embeddings ------------------------------------------------------------------------------- */
/* x [B, S, d] = tok_emb [V, d] [tokens] + pos_emb [S_max, d] [position]. */
void carl_embed_fwd(float *x, const int32_t *tokens, const float *tok_emb, const float *pos_emb, int B, int S,
                    int d);
/* dtok_emb [V, d] +=, dpos_emb [S_max, d] += (either may be NULL). Fixed token order. */
void carl_embed_bwd(float *dtok_emb, float *dpos_emb, const float *dx, const int32_t *tokens, int B, int S, int d);

/* ---- reductions -------------------------------------------------------------------------------- */
/* sum of x[i]^2 in double, in fixed blocks (same result for any thread count). */
double carl_sumsq(const float *x, int64_t n);
/* out [d] += sum over rows of x [N, d] (row order fixed). */
void carl_colsum_add(float *out, const float *x, int64_t N, int d);

/* ---- optimiser and schedule ------------------------------------------------------------------- */
typedef struct {
  float beta1, beta2, eps, weight_decay;
} carl_adamw_cfg_t;
/* beta1 0.9, beta2 0.95, eps 1e-8, weight_decay 0.1. */
carl_adamw_cfg_t carl_adamw_default(void);
/* AdamW (Loshchilov & Hutter, decoupled decay): t is the 1-based step after increment.
 * p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p) with wd applied when decay != 0. */
void carl_adamw_update(float *p, const float *g, float *m, float *v, int64_t n, const carl_adamw_cfg_t *c, float lr,
                       int64_t t, int decay);
/* Linear warm-up from lr_max/warmup to lr_max over `warmup` steps, then cosine to lr_min at
 * `total`; lr_min after total. step is 0-based. */
float carl_lr_cosine(int64_t step, int64_t warmup, int64_t total, float lr_max, float lr_min);

#ifdef __cplusplus
}
#endif
#endif
