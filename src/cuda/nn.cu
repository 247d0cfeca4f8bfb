/* The float32 kernels of the dense transformer parts (nn_internal.h): cuBLAS SGEMM for the linear
 * layers, and plain kernels for RMSNorm, causal attention, SwiGLU, embeddings, cross-entropy,
 * AdamW and the reductions. CPU references: src/nn/ (norm.c, attention.c, act.c, loss.c, optim.c,
 * linear.c) and the row sums of src/model/moe.c. No atomics: every output is written by one
 * thread or reduced by one block in a fixed order. */
#include <math.h>
#include <stdlib.h>

#include "cuda/cuda_internal.h"
#include "cuda/nn_internal.h"

#define NT 128 /* threads of the row-per-block kernels */

/* Block-wide sum / max of one value per thread (NT threads); every thread gets the result. */
template <typename T> __device__ T block_sum(T v, T *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = NT / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  T r = sh[0];
  __syncthreads();
  return r;
}

__device__ float block_max(float v, float *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = NT / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
    __syncthreads();
  }
  float r = sh[0];
  __syncthreads();
  return r;
}

#define GRID_STRIDE(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* ---- RMSNorm (src/nn/norm.c) ------------------------------------------------------------------ */
__global__ void rms_fwd_k(float *y, float *rstd, const float *x, const float *w, int d, float eps) {
  __shared__ double sh[NT];
  const int64_t i = blockIdx.x;
  const float *xi = x + i * d;
  double ss = 0;
  for (int j = threadIdx.x; j < d; j += NT) ss += (double)xi[j] * xi[j];
  ss = block_sum(ss, sh);
  const float r = (float)(1.0 / sqrt(ss / d + eps));
  if (threadIdx.x == 0) rstd[i] = r;
  for (int j = threadIdx.x; j < d; j += NT) y[i * d + j] = __fmul_rn(__fmul_rn(xi[j], r), w[j]);
}

__global__ void rms_bwd_dx_k(float *dx, const float *dy, const float *x, const float *w, const float *rstd, int d,
                             int accum) {
  __shared__ double sh[NT];
  const int64_t i = blockIdx.x;
  const float *xi = x + i * d, *dyi = dy + i * d;
  const float r = rstd[i];
  double dot = 0;
  for (int j = threadIdx.x; j < d; j += NT) dot += (double)dyi[j] * w[j] * xi[j] * r;
  dot = block_sum(dot, sh);
  const float c = (float)(dot / d);
  for (int j = threadIdx.x; j < d; j += NT) {
    const float gv = r * (dyi[j] * w[j] - xi[j] * r * c);
    dx[i * d + j] = accum ? dx[i * d + j] + gv : gv;
  }
}

__global__ void rms_bwd_dw_k(float *dw, const float *dy, const float *x, const float *rstd, int64_t N, int d) {
  GRID_STRIDE(j, d) {
    float acc = 0;
    for (int64_t i = 0; i < N; i++) acc += dy[i * d + j] * x[i * d + j] * rstd[i];
    dw[j] += acc;
  }
}

/* ---- causal attention (src/nn/attention.c) ---------------------------------------------------- */
/* One block per (row i, batch x head): scores, causal softmax into att, out_i = P V. */
__global__ void attn_fwd_k(float *out, float *att, const float *qkv, int S, int d, int H, float scale) {
  __shared__ float sh[NT];
  const int i = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, hd = d / H, d3 = 3 * d;
  const float *base = qkv + (int64_t)b * S * d3 + h * hd, *q = base + (int64_t)i * d3;
  float *row = att + ((int64_t)bh * S + i) * S;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < S; j += NT) {
    if (j > i) {
      row[j] = 0.0f;
      continue;
    }
    const float *kj = base + (int64_t)j * d3 + d;
    float s = 0;
    for (int c = 0; c < hd; c++) s += q[c] * kj[c];
    row[j] = scale * s;
    mx = fmaxf(mx, row[j]);
  }
  mx = block_max(mx, sh);
  float sum = 0;
  for (int j = threadIdx.x; j <= i; j += NT) {
    const float e = expf(row[j] - mx);
    row[j] = e;
    sum += e;
  }
  sum = block_sum(sum, sh);
  const float inv = 1.0f / sum;
  for (int j = threadIdx.x; j <= i; j += NT) row[j] *= inv;
  __syncthreads();
  for (int c = threadIdx.x; c < hd; c += NT) {
    float acc = 0;
    for (int j = 0; j <= i; j++) acc += row[j] * base[(int64_t)j * d3 + 2 * d + c];
    out[((int64_t)b * S + i) * d + h * hd + c] = acc;
  }
}

/* Backward, per (row i, batch x head): dP_ij = dO_i . V_j, dS = P (dP - rowsum(P dP)) scale, dQ_i = dS_i K. */
__global__ void attn_bwd_rows_k(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att, int S,
                                int d, int H, float scale) {
  __shared__ float sh[NT];
  const int i = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, hd = d / H, d3 = 3 * d;
  const float *base = qkv + (int64_t)b * S * d3 + h * hd, *go = dout + ((int64_t)b * S + i) * d + h * hd;
  const float *P = att + ((int64_t)bh * S + i) * S;
  float *ds = datt + ((int64_t)bh * S + i) * S;
  float dot = 0;
  for (int j = threadIdx.x; j < S; j += NT) {
    if (j > i) {
      ds[j] = 0.0f;
      continue;
    }
    const float *vj = base + (int64_t)j * d3 + 2 * d;
    float s = 0;
    for (int c = 0; c < hd; c++) s += go[c] * vj[c];
    ds[j] = s;
    dot += P[j] * s;
  }
  dot = block_sum(dot, sh);
  for (int j = threadIdx.x; j <= i; j += NT) ds[j] = P[j] * (ds[j] - dot) * scale;
  __syncthreads();
  for (int c = threadIdx.x; c < hd; c += NT) {
    float acc = 0;
    for (int j = 0; j <= i; j++) acc += ds[j] * base[(int64_t)j * d3 + d + c];
    dqkv[((int64_t)b * S + i) * d3 + h * hd + c] = acc;
  }
}

/* Per (column j, batch x head): dK_j = sum_i dS_ij Q_i, dV_j = sum_i P_ij dO_i (i >= j). */
__global__ void attn_bwd_cols_k(float *dqkv, const float *datt, const float *dout, const float *qkv, const float *att,
                                int S, int d, int H) {
  const int j = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, hd = d / H, d3 = 3 * d;
  const float *base = qkv + (int64_t)b * S * d3 + h * hd;
  const float *P = att + (int64_t)bh * S * S, *dS = datt + (int64_t)bh * S * S;
  for (int c = threadIdx.x; c < hd; c += NT) {
    float dk = 0, dv = 0;
    for (int i = j; i < S; i++) {
      dk += dS[(int64_t)i * S + j] * base[(int64_t)i * d3 + c];
      dv += P[(int64_t)i * S + j] * dout[((int64_t)b * S + i) * d + h * hd + c];
    }
    float *o = dqkv + ((int64_t)b * S + j) * d3 + h * hd + c;
    o[d] = dk;
    o[2 * d] = dv;
  }
}

/* ---- SwiGLU (src/nn/act.c) -------------------------------------------------------------------- */
__global__ void swiglu_fwd_k(float *a, const float *h, int64_t N, int f) {
  GRID_STRIDE(q, N * f) {
    const int64_t i = q / f;
    const int j = (int)(q - i * f);
    const float gv = h[i * 2 * f + j], u = h[i * 2 * f + f + j];
    const float s = 1.0f / (1.0f + expf(-gv));
    a[q] = gv * s * u;
  }
}

__global__ void swiglu_bwd_k(float *dh, const float *da, const float *h, int64_t N, int f) {
  GRID_STRIDE(q, N * f) {
    const int64_t i = q / f;
    const int j = (int)(q - i * f);
    const float gv = h[i * 2 * f + j], u = h[i * 2 * f + f + j], dv = da[q];
    const float s = 1.0f / (1.0f + expf(-gv)), silu = gv * s;
    dh[i * 2 * f + f + j] = dv * silu;
    dh[i * 2 * f + j] = dv * u * s * (1.0f + gv * (1.0f - s));
  }
}

/* ---- embeddings and cross-entropy (src/nn/loss.c) --------------------------------------------- */
__global__ void embed_fwd_k(float *x, const int32_t *tok, const float *te, const float *pe, int64_t T, int S, int d) {
  GRID_STRIDE(q, T * d) {
    const int64_t i = q / d;
    const int j = (int)(q - i * d);
    x[q] = te[(int64_t)tok[i] * d + j] + pe[(int64_t)(i % S) * d + j];
  }
}

/* One thread per column, tokens in order (the CPU's order). */
__global__ void embed_bwd_k(float *dte, float *dpe, const float *dx, const int32_t *tok, int64_t T, int S, int d) {
  GRID_STRIDE(j, d) {
    for (int64_t i = 0; i < T; i++) {
      const float gv = dx[i * d + j];
      if (dte) dte[(int64_t)tok[i] * d + j] += gv;
      if (dpe) dpe[(int64_t)(i % S) * d + j] += gv;
    }
  }
}

__global__ void xent_fwd_k(float *lse, double *rowloss, const float *logits, const int32_t *targets, int V) {
  __shared__ float shf[NT];
  __shared__ double shd[NT];
  const int64_t i = blockIdx.x;
  const float *z = logits + i * V;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += NT) mx = fmaxf(mx, z[j]);
  mx = block_max(mx, shf);
  double s = 0;
  for (int j = threadIdx.x; j < V; j += NT) s += exp((double)z[j] - mx);
  s = block_sum(s, shd);
  if (threadIdx.x == 0) {
    const float l = (float)(mx + log(s));
    lse[i] = l;
    const int32_t t = targets ? targets[i] : -1;
    rowloss[i] = t >= 0 ? (double)l - z[t] : 0.0;
  }
}

__global__ void xent_bwd_k(float *dz, const float *z, const float *lse, const int32_t *targets, int64_t N, int V,
                           float scale) {
  GRID_STRIDE(q, N * V) {
    const int64_t i = q / V;
    const int j = (int)(q - i * V);
    const int32_t t = targets ? targets[i] : -1;
    if (t < 0) {
      dz[q] = 0.0f;
      continue;
    }
    float v = scale * expf(z[q] - lse[i]);
    if (j == t) v -= scale;
    dz[q] = v;
  }
}

/* ---- elementwise, reductions, AdamW (src/nn/optim.c) ------------------------------------------ */
__global__ void add_k(float *y, const float *x, int64_t n) {
  GRID_STRIDE(i, n) y[i] += x[i];
}
__global__ void scale_k(float *x, float s, int64_t n) {
  GRID_STRIDE(i, n) x[i] *= s;
}

#define SUMSQ_BLOCKS 256
__global__ void sumsq_k(const float *x, int64_t n, double *part) {
  __shared__ double sh[NT];
  double s = 0;
  for (int64_t i = (int64_t)blockIdx.x * NT + threadIdx.x; i < n; i += (int64_t)SUMSQ_BLOCKS * NT) s += (double)x[i] * x[i];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void adamw_k(float *p, const float *gr, float *m, float *v, int64_t n, float b1, float b2, float eps, float wd,
                        float lr, float bc1, float bc2) {
  GRID_STRIDE(i, n) {
    const float gi = gr[i];
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    const float mh = m[i] / bc1, vh = v[i] / bc2;
    p[i] -= lr * (mh / (sqrtf(vh) + eps) + wd * p[i]);
  }
}

/* ---- the MoE layer's row sums (src/model/moe.c) ----------------------------------------------- */
__global__ void gather_rows_k(float *dst, const float *src, const int64_t *idx, int64_t n, int d) {
  GRID_STRIDE(q, n * d) {
    const int64_t r = q / d;
    dst[q] = src[idx[r] * d + (q - r * d)];
  }
}

__global__ void copy_sums_k(float *v, const float *rows, const float *gate, const int32_t *row_slot, const int64_t *off,
                            const int64_t *copy_row, int64_t nc, int d) {
  GRID_STRIDE(q, nc * d) {
    const int64_t c = q / d;
    const int j = (int)(q - c * d);
    float acc = 0;
    for (int64_t e = off[c]; e < off[c + 1]; e++) {
      const int64_t r = copy_row[e];
      const float gv = gate ? gate[row_slot[r]] : 1.0f;
      acc += gv * rows[r * d + j];
    }
    v[q] = acc;
  }
}

__global__ void gate_grad_k(float *dw, float *dye, const float *dyc, const float *ye, const float *weights,
                            const int32_t *row_slot, const int64_t *row_copy, int64_t R, int d) {
  GRID_STRIDE(r, R) {
    const int32_t i = row_slot[r];
    const float gv = weights[i], *dc = dyc + row_copy[r] * d, *ys = ye + r * d;
    float *o = dye + r * d;
    double acc = 0;
    for (int j = 0; j < d; j++) {
      acc += (double)dc[j] * ys[j];
      o[j] = gv * dc[j];
    }
    dw[i] = (float)acc;
  }
}

extern "C" {

carl_status carl__cuda_sgemm(carl_cuda_t *g, int tA, int tB, int64_t M, int N, int K, float alpha, const float *A, int lda,
                             const float *B, int ldb, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return CARL_OK;
  if (M > 0x7fffffff) return carl_fail(CARL_ERR_UNSUPPORTED, "SGEMM: %lld rows exceed cuBLAS's int range", (long long)M);
  /* row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the operands swap */
  CARL_CUBLAS_TRY(cublasSgemm(g->blas, tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N, N, (int)M, K, &alpha, B,
                              ldb, A, lda, &beta, C, ldc));
  return CARL_OK;
}

carl_status carl__cuda_linear_fwd(carl_cuda_t *g, float *y, const float *x, const float *W, int64_t N, int In, int Out) {
  return carl__cuda_sgemm(g, 0, 1, N, Out, In, 1.0f, x, In, W, In, 0.0f, y, Out);
}

carl_status carl__cuda_linear_bwd(carl_cuda_t *g, float *dx, float *dW, const float *dy, const float *x, const float *W,
                                  int64_t N, int In, int Out, int dx_accum) {
  if (dW && N > 0) {
    if (N > 0x7fffffff) return carl_fail(CARL_ERR_UNSUPPORTED, "SGEMM: %lld rows exceed cuBLAS's int range", (long long)N);
    CARL_TRY(carl__cuda_sgemm(g, 1, 0, Out, In, (int)N, 1.0f, dy, Out, x, In, 1.0f, dW, In));
  }
  if (dx) CARL_TRY(carl__cuda_sgemm(g, 0, 0, N, In, Out, 1.0f, dy, Out, W, In, dx_accum ? 1.0f : 0.0f, dx, In));
  return CARL_OK;
}

carl_status carl__cuda_rmsnorm_fwd(carl_cuda_t *g, float *y, float *rstd, const float *x, const float *w, int64_t N, int d,
                                   float eps) {
  if (N <= 0) return CARL_OK;
  rms_fwd_k<<<(unsigned)N, NT, 0, g->stream>>>(y, rstd, x, w, d, eps);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_rmsnorm_bwd(carl_cuda_t *g, float *dx, float *dw, const float *dy, const float *x, const float *w,
                                   const float *rstd, int64_t N, int d, int dx_accum) {
  if (N <= 0) return CARL_OK;
  if (dx) {
    rms_bwd_dx_k<<<(unsigned)N, NT, 0, g->stream>>>(dx, dy, x, w, rstd, d, dx_accum);
    CARL_CUDA_LAUNCHED();
  }
  if (dw) {
    rms_bwd_dw_k<<<carl__cuda_blocks(g, d, NT), NT, 0, g->stream>>>(dw, dy, x, rstd, N, d);
    CARL_CUDA_LAUNCHED();
  }
  return CARL_OK;
}

carl_status carl__cuda_attention_fwd(carl_cuda_t *g, float *out, float *att, const float *qkv, int B, int S, int d, int H) {
  const float scale = 1.0f / sqrtf((float)(d / H));
  attn_fwd_k<<<dim3((unsigned)S, (unsigned)(B * H)), NT, 0, g->stream>>>(out, att, qkv, S, d, H, scale);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_attention_bwd(carl_cuda_t *g, float *dqkv, float *datt, const float *dout, const float *qkv,
                                     const float *att, int B, int S, int d, int H) {
  const float scale = 1.0f / sqrtf((float)(d / H));
  const dim3 grid((unsigned)S, (unsigned)(B * H));
  attn_bwd_rows_k<<<grid, NT, 0, g->stream>>>(dqkv, datt, dout, qkv, att, S, d, H, scale);
  CARL_CUDA_LAUNCHED();
  attn_bwd_cols_k<<<grid, NT, 0, g->stream>>>(dqkv, datt, dout, qkv, att, S, d, H);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_swiglu32_fwd(carl_cuda_t *g, float *a, const float *h, int64_t N, int f) {
  if (N * f <= 0) return CARL_OK;
  swiglu_fwd_k<<<carl__cuda_blocks(g, N * f, 256), 256, 0, g->stream>>>(a, h, N, f);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_swiglu32_bwd(carl_cuda_t *g, float *dh, const float *da, const float *h, int64_t N, int f) {
  if (N * f <= 0) return CARL_OK;
  swiglu_bwd_k<<<carl__cuda_blocks(g, N * f, 256), 256, 0, g->stream>>>(dh, da, h, N, f);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_embed_fwd(carl_cuda_t *g, float *x, const int32_t *tokens, const float *tok_emb, const float *pos_emb,
                                 int B, int S, int d) {
  const int64_t T = (int64_t)B * S;
  embed_fwd_k<<<carl__cuda_blocks(g, T * d, 256), 256, 0, g->stream>>>(x, tokens, tok_emb, pos_emb, T, S, d);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_embed_bwd(carl_cuda_t *g, float *dtok_emb, float *dpos_emb, const float *dx, const int32_t *tokens,
                                 int B, int S, int d) {
  embed_bwd_k<<<carl__cuda_blocks(g, d, NT), NT, 0, g->stream>>>(dtok_emb, dpos_emb, dx, tokens, (int64_t)B * S, S, d);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_xent_fwd(carl_cuda_t *g, float *lse, double *rowloss, const float *logits, const int32_t *targets,
                                int64_t N, int V) {
  if (N <= 0) return CARL_OK;
  xent_fwd_k<<<(unsigned)N, NT, 0, g->stream>>>(lse, rowloss, logits, targets, V);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_xent_bwd(carl_cuda_t *g, float *dlogits, const float *logits, const float *lse,
                                const int32_t *targets, int64_t N, int V, float scale) {
  if (N <= 0) return CARL_OK;
  xent_bwd_k<<<carl__cuda_blocks(g, N * V, 256), 256, 0, g->stream>>>(dlogits, logits, lse, targets, N, V, scale);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_add(carl_cuda_t *g, float *y, const float *x, int64_t n) {
  if (n <= 0) return CARL_OK;
  add_k<<<carl__cuda_blocks(g, n, 256), 256, 0, g->stream>>>(y, x, n);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_scale(carl_cuda_t *g, float *x, float s, int64_t n) {
  if (n <= 0) return CARL_OK;
  scale_k<<<carl__cuda_blocks(g, n, 256), 256, 0, g->stream>>>(x, s, n);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_sumsq(carl_cuda_t *g, const float *x, int64_t n, double *out) {
  *out = 0;
  if (n <= 0) return CARL_OK;
  double *part;
  CARL_TRY(carl__cuda_scratch(g, sizeof(double) * SUMSQ_BLOCKS, (void **)&part));
  sumsq_k<<<SUMSQ_BLOCKS, NT, 0, g->stream>>>(x, n, part);
  CARL_CUDA_LAUNCHED();
  double h[SUMSQ_BLOCKS];
  CARL_TRY(carl_cuda_download(g, h, part, sizeof h));
  double s = 0;
  for (int b = 0; b < SUMSQ_BLOCKS; b++) s += h[b];
  *out = s;
  return CARL_OK;
}

carl_status carl__cuda_adamw(carl_cuda_t *g, float *p, const float *gr, float *m, float *v, int64_t n, float beta1,
                             float beta2, float eps, float wd, float lr, float bc1, float bc2) {
  if (n <= 0) return CARL_OK;
  adamw_k<<<carl__cuda_blocks(g, n, 256), 256, 0, g->stream>>>(p, gr, m, v, n, beta1, beta2, eps, wd, lr, bc1, bc2);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_gather_rows(carl_cuda_t *g, float *dst, const float *src, const int64_t *idx, int64_t n, int d) {
  if (n <= 0) return CARL_OK;
  gather_rows_k<<<carl__cuda_blocks(g, n * d, 256), 256, 0, g->stream>>>(dst, src, idx, n, d);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_copy_sums(carl_cuda_t *g, float *v, const float *rows, const float *gate, const int32_t *row_slot,
                                 const int64_t *off, const int64_t *copy_row, int64_t nc, int d) {
  if (nc <= 0) return CARL_OK;
  copy_sums_k<<<carl__cuda_blocks(g, nc * d, 256), 256, 0, g->stream>>>(v, rows, gate, row_slot, off, copy_row, nc, d);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl__cuda_gate_grad(carl_cuda_t *g, float *dweights, float *dye, const float *dyc, const float *ye,
                                 const float *weights, const int32_t *row_slot, const int64_t *row_copy, int64_t R, int d) {
  if (R <= 0) return CARL_OK;
  gate_grad_k<<<carl__cuda_blocks(g, R, 128), 128, 0, g->stream>>>(dweights, dye, dyc, ye, weights, row_slot, row_copy, R, d);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

} /* extern "C" */
