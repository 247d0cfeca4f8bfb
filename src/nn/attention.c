/* Causal multi-head self-attention, one (batch, head) pair per loop iteration (no reductions
 * across iterations, so the result does not depend on the thread count). */
#include <math.h>
#include <string.h>

#include "carl/nn.h"

void carl_attention_fwd(float *out, float *att, const float *qkv, int B, int S, int d, int H) {
  const int hd = d / H, d3 = 3 * d;
  const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const float *base = qkv + (int64_t)b * S * d3;
      float *A = att + ((int64_t)b * H + h) * S * S; /* [S, S] */
      for (int i = 0; i < S; i++) {
        const float *q = base + (int64_t)i * d3 + h * hd;
        float *a = A + (int64_t)i * S;
        float mx = -INFINITY;
        for (int j = 0; j <= i; j++) {
          const float *k = base + (int64_t)j * d3 + d + h * hd;
          float s = 0;
          for (int c = 0; c < hd; c++) s += q[c] * k[c];
          s *= scale;
          a[j] = s;
          if (s > mx) mx = s;
        }
        float sum = 0;
        for (int j = 0; j <= i; j++) {
          a[j] = expf(a[j] - mx);
          sum += a[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j <= i; j++) a[j] *= inv;
        for (int j = i + 1; j < S; j++) a[j] = 0.0f;
        float *o = out + ((int64_t)b * S + i) * d + h * hd;
        for (int c = 0; c < hd; c++) o[c] = 0.0f;
        for (int j = 0; j <= i; j++) {
          const float *v = base + (int64_t)j * d3 + 2 * d + h * hd;
          for (int c = 0; c < hd; c++) o[c] += a[j] * v[c];
        }
      }
    }
}

/* dP_ij = do_i . v_j; dv_j += P_ij do_i; dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij);
 * dq_i = scale sum_j dS_ij k_j; dk_j += scale dS_ij q_i. */
void carl_attention_bwd(float *dqkv, const float *dout, const float *qkv, const float *att, int B, int S, int d,
                        int H) {
  const int hd = d / H, d3 = 3 * d;
  const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const float *base = qkv + (int64_t)b * S * d3;
      float *dbase = dqkv + (int64_t)b * S * d3;
      const float *A = att + ((int64_t)b * H + h) * S * S;
      for (int i = 0; i < S; i++) {
        float *dq = dbase + (int64_t)i * d3 + h * hd;
        memset(dq, 0, sizeof(float) * hd);
        memset(dq + d, 0, sizeof(float) * hd);
        memset(dq + 2 * d, 0, sizeof(float) * hd);
      }
      float dp[S > 0 ? S : 1];
      for (int i = 0; i < S; i++) {
        const float *a = A + (int64_t)i * S;
        const float *go = dout + ((int64_t)b * S + i) * d + h * hd;
        const float *q = base + (int64_t)i * d3 + h * hd;
        float *dq = dbase + (int64_t)i * d3 + h * hd;
        float dot = 0;
        for (int j = 0; j <= i; j++) {
          const float *v = base + (int64_t)j * d3 + 2 * d + h * hd;
          float *dv = dbase + (int64_t)j * d3 + 2 * d + h * hd;
          float s = 0;
          for (int c = 0; c < hd; c++) {
            s += go[c] * v[c];
            dv[c] += a[j] * go[c];
          }
          dp[j] = s;
          dot += a[j] * s;
        }
        for (int j = 0; j <= i; j++) {
          float ds = a[j] * (dp[j] - dot) * scale;
          const float *k = base + (int64_t)j * d3 + d + h * hd;
          float *dk = dbase + (int64_t)j * d3 + d + h * hd;
          for (int c = 0; c < hd; c++) {
            dq[c] += ds * k[c];
            dk[c] += ds * q[c];
          }
        }
      }
    }
}
