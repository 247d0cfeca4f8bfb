// The GPU path's device API (carl/cuda.h) and float32 kernels (src/cuda/nn_internal.h) on the host,
// for test_cuda_model_host: "device" memory is host memory, the cuda executor is the local executor,
// and every kernel is its CPU reference (src/nn/, the row sums of src/model/moe.c). With these,
// src/cuda/model.cu -- the assembly of the model on the GPU: buffers, the host routing through
// carl_step_route, uploads and downloads, the order of the operations, the expert loops, replicas,
// clipping, AdamW -- must give the CPU model's results bit for bit, on a machine without a GPU.
// The kernels themselves are checked on a GPU only (test_cuda_model on the device).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.h"
#include "cuda/nn_internal.h"
extern "C" {
#include "carl/exec.h"
#include "carl/nn.h"

int carl_cuda_built(void) { return 1; }
carl_status carl_cuda_device_count(int *n) {
  *n = 1;
  return CARL_OK;
}
carl_status carl_cuda_create(int device, carl_cuda_t **out) {
  *out = (carl_cuda_t *)calloc(1, sizeof **out);
  (*out)->device = device;
  strcpy((*out)->desc, "host emulation of the GPU path");
  return CARL_OK;
}
void carl_cuda_free(carl_cuda_t *g) { free(g); }
const char *carl_cuda_describe(const carl_cuda_t *g) { return g->desc; }
carl_status carl_cuda_malloc(carl_cuda_t *, size_t bytes, void **p) {
  *p = malloc(bytes ? bytes : 1);
  if (!*p) return carl_fail(CARL_ERR_NOMEM, "host emulation: out of memory for %zu bytes", bytes);
  memset(*p, 0x7f, bytes); /* 3.4e38 in every float: a read before a write shows in the results */
  return CARL_OK;
}
void carl_cuda_mfree(carl_cuda_t *, void *p) { free(p); }
carl_status carl_cuda_upload(carl_cuda_t *, void *d, const void *s, size_t b) {
  if (b) memcpy(d, s, b);
  return CARL_OK;
}
carl_status carl_cuda_download(carl_cuda_t *, void *d, const void *s, size_t b) {
  if (b) memcpy(d, s, b);
  return CARL_OK;
}
carl_status carl_cuda_memset(carl_cuda_t *, void *p, int v, size_t b) {
  memset(p, v, b);
  return CARL_OK;
}
carl_status carl_cuda_copy(carl_cuda_t *, void *d, const void *s, size_t b) {
  memmove(d, s, b);
  return CARL_OK;
}
carl_status carl_cuda_sync(carl_cuda_t *) { return CARL_OK; }
carl_status carl_exec_cuda_create(carl_cuda_t *, carl_exec_t **out) { return carl_exec_local_create(out); }

carl_status carl__cuda_sgemm(carl_cuda_t *, int tA, int tB, int64_t M, int N, int K, float alpha, const float *A,
                             int lda, const float *B, int ldb, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return CARL_OK;
  carl_sgemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  return CARL_OK;
}
carl_status carl__cuda_linear_fwd(carl_cuda_t *, float *y, const float *x, const float *W, int64_t N, int In, int Out) {
  carl_linear_fwd(y, x, W, N, In, Out);
  return CARL_OK;
}
carl_status carl__cuda_linear_bwd(carl_cuda_t *, float *dx, float *dW, const float *dy, const float *x, const float *W,
                                  int64_t N, int In, int Out, int a) {
  carl_linear_bwd(dx, dW, dy, x, W, N, In, Out, a);
  return CARL_OK;
}
carl_status carl__cuda_rmsnorm_fwd(carl_cuda_t *, float *y, float *r, const float *x, const float *w, int64_t N, int d,
                                   float eps) {
  carl_rmsnorm_fwd(y, r, x, w, N, d, eps);
  return CARL_OK;
}
carl_status carl__cuda_rmsnorm_bwd(carl_cuda_t *, float *dx, float *dw, const float *dy, const float *x, const float *w,
                                   const float *r, int64_t N, int d, int a) {
  carl_rmsnorm_bwd(dx, dw, dy, x, w, r, N, d, a);
  return CARL_OK;
}
carl_status carl__cuda_attention_fwd(carl_cuda_t *, float *o, float *att, const float *qkv, int B, int S, int d,
                                     int H) {
  carl_attention_fwd(o, att, qkv, B, S, d, H);
  return CARL_OK;
}
carl_status carl__cuda_attention_bwd(carl_cuda_t *, float *dqkv, float *datt, const float *dout, const float *qkv,
                                     const float *att, int B, int S, int d, int H) {
  carl_attention_bwd(dqkv, datt, dout, qkv, att, B, S, d, H);
  return CARL_OK;
}
carl_status carl__cuda_swiglu32_fwd(carl_cuda_t *, float *a, const float *h, int64_t N, int f) {
  carl_swiglu_fwd(a, h, N, f);
  return CARL_OK;
}
carl_status carl__cuda_swiglu32_bwd(carl_cuda_t *, float *dh, const float *da, const float *h, int64_t N, int f) {
  carl_swiglu_bwd(dh, da, h, N, f);
  return CARL_OK;
}
carl_status carl__cuda_embed_fwd(carl_cuda_t *, float *x, const int32_t *t, const float *te, const float *pe, int B,
                                 int S, int d) {
  carl_embed_fwd(x, t, te, pe, B, S, d);
  return CARL_OK;
}
carl_status carl__cuda_embed_bwd(carl_cuda_t *, float *dte, float *dpe, const float *dx, const int32_t *t, int B, int S,
                                 int d) {
  carl_embed_bwd(dte, dpe, dx, t, B, S, d);
  return CARL_OK;
}
carl_status carl__cuda_xent_fwd(carl_cuda_t *, float *lse, double *rl, const float *z, const int32_t *t, int64_t N,
                                int V) {
  int64_t n;
  carl_xent_fwd(lse, z, t, N, V, &n);
  for (int64_t i = 0; i < N; i++) rl[i] = t && t[i] >= 0 ? (double)lse[i] - z[i * V + t[i]] : 0;
  return CARL_OK;
}
carl_status carl__cuda_xent_bwd(carl_cuda_t *, float *dz, const float *z, const float *lse, const int32_t *t, int64_t N,
                                int V, float s) {
  carl_xent_bwd(dz, z, lse, t, N, V, s);
  return CARL_OK;
}
carl_status carl__cuda_add(carl_cuda_t *, float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += x[i];
  return CARL_OK;
}
carl_status carl__cuda_scale(carl_cuda_t *, float *x, float s, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] *= s;
  return CARL_OK;
}
carl_status carl__cuda_sumsq(carl_cuda_t *, const float *x, int64_t n, double *o) {
  *o = carl_sumsq(x, n);
  return CARL_OK;
}
carl_status carl__cuda_adamw(carl_cuda_t *, float *p, const float *gr, float *m, float *v, int64_t n, float b1,
                             float b2, float eps, float wd, float lr, float bc1, float bc2) {
  for (int64_t i = 0; i < n; i++) {
    float gi = gr[i];
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    float mh = m[i] / bc1, vh = v[i] / bc2;
    p[i] -= lr * (mh / (sqrtf(vh) + eps) + wd * p[i]);
  }
  return CARL_OK;
}
carl_status carl__cuda_gather_rows(carl_cuda_t *, float *dst, const float *src, const int64_t *idx, int64_t n, int d) {
  for (int64_t r = 0; r < n; r++) memcpy(dst + r * d, src + idx[r] * d, 4 * (size_t)d);
  return CARL_OK;
}
carl_status carl__cuda_copy_sums(carl_cuda_t *, float *v, const float *rows, const float *gate, const int32_t *rs,
                                 const int64_t *off, const int64_t *cr, int64_t nc, int d) {
  for (int64_t c = 0; c < nc; c++)
    for (int j = 0; j < d; j++) {
      float acc = 0;
      for (int64_t e = off[c]; e < off[c + 1]; e++) {
        int64_t r = cr[e];
        acc += (gate ? gate[rs[r]] : 1.0f) * rows[r * d + j];
      }
      v[c * d + j] = acc;
    }
  return CARL_OK;
}
carl_status carl__cuda_gate_grad(carl_cuda_t *, float *dw, float *dye, const float *dyc, const float *ye,
                                 const float *w, const int32_t *rs, const int64_t *rc, int64_t R, int d) {
  for (int64_t r = 0; r < R; r++) {
    int32_t i = rs[r];
    float gv = w[i];
    const float *dc = dyc + rc[r] * d, *ys = ye + r * d;
    double acc = 0;
    for (int j = 0; j < d; j++) {
      acc += (double)dc[j] * ys[j];
      dye[r * d + j] = gv * dc[j];
    }
    dw[i] = (float)acc;
  }
  return CARL_OK;
}
}
