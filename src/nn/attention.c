/* Causal multi-head self-attention, one (batch, head) pair per loop iteration (no reductions
 * across iterations, so the result does not depend on the thread count). K and V of the pair are
 * first copied transposed ([hd, S]) so that every inner loop is a vectorisable axpy over keys or
 * channels rather than a serial dot-product reduction. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/nn.h"

/* dst [hd, S] = columns off..off+hd of the rows of base (row stride d3), transposed. */
static void carl__transpose(float *dst, const float *base, int S, int d3, int off, int hd) {
  for (int j = 0; j < S; j++) {
    const float *src = base + (int64_t)j * d3 + off;
    for (int c = 0; c < hd; c++) dst[(int64_t)c * S + j] = src[c];
  }
}

void carl_attention_fwd(float *out, float *att, const float *qkv, int B, int S, int d, int H) {
  const int hd = d / H, d3 = 3 * d;
  const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel if ((int64_t)B * H * S * S * hd >= CARL_OMP_MIN_WORK)
  {
    float *Kt = malloc(sizeof(float) * (size_t)hd * (size_t)S); /* [hd, S] */
    CARL_ASSERT(Kt);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
      for (int h = 0; h < H; h++) {
        const float *base = qkv + (int64_t)b * S * d3;
        float *A = att + ((int64_t)b * H + h) * S * S; /* [S, S] */
        carl__transpose(Kt, base, S, d3, d + h * hd, hd);
        for (int i = 0; i < S; i++) {
          const float *q = base + (int64_t)i * d3 + h * hd;
          float *a = A + (int64_t)i * S;
          for (int j = 0; j <= i; j++) a[j] = 0.0f;
          for (int c = 0; c < hd; c++) {
            const float qc = q[c], *kr = Kt + (int64_t)c * S;
            for (int j = 0; j <= i; j++) a[j] += qc * kr[j];
          }
          float mx = -INFINITY;
          for (int j = 0; j <= i; j++) {
            a[j] *= scale;
            mx = a[j] > mx ? a[j] : mx;
          }
          float sum = 0;
          for (int j = 0; j <= i; j++) {
            a[j] = expf(a[j] - mx);
            sum += a[j];
          }
          const float inv = 1.0f / sum;
          for (int j = 0; j <= i; j++) a[j] *= inv;
          for (int j = i + 1; j < S; j++) a[j] = 0.0f;
          float *o = out + ((int64_t)b * S + i) * d + h * hd;
          for (int c = 0; c < hd; c++) o[c] = 0.0f;
          for (int j = 0; j <= i; j++) {
            const float aj = a[j], *v = base + (int64_t)j * d3 + 2 * d + h * hd;
            for (int c = 0; c < hd; c++) o[c] += aj * v[c];
          }
        }
      }
    free(Kt);
  }
}

/* dP_ij = do_i . v_j; dv_j += P_ij do_i; dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij);
 * dq_i = scale sum_j dS_ij k_j; dk_j += scale dS_ij q_i. */
void carl_attention_bwd(float *dqkv, const float *dout, const float *qkv, const float *att, int B, int S, int d,
                        int H) {
  const int hd = d / H, d3 = 3 * d;
  const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel if ((int64_t)B * H * S * S * hd >= CARL_OMP_MIN_WORK)
  {
    float *Vt = malloc(sizeof(float) * ((size_t)hd * (size_t)S + (size_t)S)); /* [hd, S] then dp [S] */
    CARL_ASSERT(Vt);
    float *dp = Vt + (size_t)hd * (size_t)S;
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
      for (int h = 0; h < H; h++) {
        const float *base = qkv + (int64_t)b * S * d3;
        float *dbase = dqkv + (int64_t)b * S * d3;
        const float *A = att + ((int64_t)b * H + h) * S * S;
        carl__transpose(Vt, base, S, d3, 2 * d + h * hd, hd);
        for (int i = 0; i < S; i++) {
          float *dq = dbase + (int64_t)i * d3 + h * hd;
          memset(dq, 0, sizeof(float) * hd);
          memset(dq + d, 0, sizeof(float) * hd);
          memset(dq + 2 * d, 0, sizeof(float) * hd);
        }
        for (int i = 0; i < S; i++) {
          const float *a = A + (int64_t)i * S;
          const float *go = dout + ((int64_t)b * S + i) * d + h * hd;
          const float *q = base + (int64_t)i * d3 + h * hd;
          float *dq = dbase + (int64_t)i * d3 + h * hd;
          for (int j = 0; j <= i; j++) dp[j] = 0.0f;
          for (int c = 0; c < hd; c++) {
            const float gc = go[c], *vr = Vt + (int64_t)c * S;
            for (int j = 0; j <= i; j++) dp[j] += gc * vr[j];
          }
          float dot = 0;
          for (int j = 0; j <= i; j++) dot += a[j] * dp[j];
          for (int j = 0; j <= i; j++) {
            const float aj = a[j], ds = aj * (dp[j] - dot) * scale;
            /* q/dq (columns h*hd of row i), k/dk (d + h*hd of row j), dv (2d + h*hd of row j) never
             * overlap, nor does the read-only go: restrict lets these loops vectorise */
            const float *restrict k = base + (int64_t)j * d3 + d + h * hd;
            const float *restrict gr = go, *restrict qr = q;
            float *restrict dk = dbase + (int64_t)j * d3 + d + h * hd;
            float *restrict dv = dbase + (int64_t)j * d3 + 2 * d + h * hd;
            float *restrict dqr = dq;
            for (int c = 0; c < hd; c++) dv[c] += aj * gr[c];
            for (int c = 0; c < hd; c++) dqr[c] += ds * k[c];
            for (int c = 0; c < hd; c++) dk[c] += ds * qr[c];
          }
        }
      }
    free(Vt);
  }
}
