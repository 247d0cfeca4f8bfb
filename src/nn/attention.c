/* Causal multi-head self-attention on matrix products: per (batch, head) pair the score matrix
 * Q K^T, the probabilities' product with V and the backward products are sgemm tiles
 * (carl_sgemm_batch: all pairs in one pass, bitwise the same for any thread count). The full
 * S x S products are computed and the upper triangle masked: causal attention costs twice the
 * necessary multiply-adds here but runs at sgemm speed; masked probabilities are exact zeros. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/nn.h"

void carl_attention_fwd(float *out, float *att, const float *qkv, int B, int S, int d, int H) {
  const int hd = d / H, d3 = 3 * d, BH = B * H;
  const float scale = 1.0f / sqrtf((float)hd);
  carl_gemm_t *job = calloc((size_t)BH, sizeof *job);
  CARL_ASSERT(job);
  /* scores [S, S] = scale * Q K^T */
  for (int bh = 0; bh < BH; bh++) {
    const float *base = qkv + (int64_t)(bh / H) * S * d3 + (bh % H) * hd;
    job[bh] = (carl_gemm_t){0, 1, S, S, hd, scale, base, d3, base + d, d3, 0.0f, att + (int64_t)bh * S * S, S};
  }
  carl_sgemm_batch(BH, job);
  /* causal softmax per row; columns j > i become exact zeros */
#pragma omp parallel for schedule(static) if ((int64_t)BH * S * S >= CARL_OMP_MIN_WORK)
  for (int64_t r = 0; r < (int64_t)BH * S; r++) {
    const int i = (int)(r % S);
    float *a = att + r * S;
    float mx = -INFINITY;
    for (int j = 0; j <= i; j++) mx = a[j] > mx ? a[j] : mx;
    float sum = 0;
    for (int j = 0; j <= i; j++) {
      a[j] = expf(a[j] - mx);
      sum += a[j];
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j <= i; j++) a[j] *= inv;
    for (int j = i + 1; j < S; j++) a[j] = 0.0f;
  }
  /* out [S, hd] (columns h*hd of [S, d]) = P V */
  for (int bh = 0; bh < BH; bh++) {
    const int b = bh / H, h = bh % H;
    const float *v = qkv + (int64_t)b * S * d3 + 2 * d + h * hd;
    job[bh] = (carl_gemm_t){0, 0, S, hd, S, 1.0f, att + (int64_t)bh * S * S, S, v, d3, 0.0f,
                            out + (int64_t)b * S * d + h * hd, d};
  }
  carl_sgemm_batch(BH, job);
  free(job);
}

/* dP = dO V^T; dV = P^T dO; dS = P (dP - rowsum(P dP)) * scale; dQ = dS K; dK = dS^T Q. */
void carl_attention_bwd(float *dqkv, float *scratch, const float *dout, const float *qkv, const float *att, int B,
                        int S, int d, int H) {
  const int hd = d / H, d3 = 3 * d, BH = B * H;
  const float scale = 1.0f / sqrtf((float)hd);
  carl_gemm_t *job = calloc(2 * (size_t)BH, sizeof *job);
  CARL_ASSERT(job);
  for (int bh = 0; bh < BH; bh++) {
    const int b = bh / H, h = bh % H;
    const float *base = qkv + (int64_t)b * S * d3 + h * hd, *go = dout + (int64_t)b * S * d + h * hd;
    float *dbase = dqkv + (int64_t)b * S * d3 + h * hd;
    const float *P = att + (int64_t)bh * S * S;
    job[2 * bh] = (carl_gemm_t){0, 1, S, S, hd, 1.0f, go, d, base + 2 * d, d3, 0.0f, scratch + (int64_t)bh * S * S, S};
    job[2 * bh + 1] = (carl_gemm_t){1, 0, S, hd, S, 1.0f, P, S, go, d, 0.0f, dbase + 2 * d, d3};
  }
  carl_sgemm_batch(2 * BH, job);
#pragma omp parallel for schedule(static) if ((int64_t)BH * S * S >= CARL_OMP_MIN_WORK)
  for (int64_t r = 0; r < (int64_t)BH * S; r++) {
    const int i = (int)(r % S);
    const float *p = att + r * S;
    float *ds = scratch + r * S;
    float dot = 0;
    for (int j = 0; j <= i; j++) dot += p[j] * ds[j];
    for (int j = 0; j <= i; j++) ds[j] = p[j] * (ds[j] - dot) * scale;
    for (int j = i + 1; j < S; j++) ds[j] = 0.0f;
  }
  for (int bh = 0; bh < BH; bh++) {
    const int b = bh / H, h = bh % H;
    const float *base = qkv + (int64_t)b * S * d3 + h * hd;
    float *dbase = dqkv + (int64_t)b * S * d3 + h * hd;
    const float *dS = scratch + (int64_t)bh * S * S;
    job[2 * bh] = (carl_gemm_t){0, 0, S, hd, S, 1.0f, dS, S, base + d, d3, 0.0f, dbase, d3};
    job[2 * bh + 1] = (carl_gemm_t){1, 0, S, hd, S, 1.0f, dS, S, base, d3, 0.0f, dbase + d, d3};
  }
  carl_sgemm_batch(2 * BH, job);
  free(job);
}
