/* SwiGLU (Shazeer 2020): a = silu(g) * u with g = h[:, :f], u = h[:, f:], silu(g) = g * sigmoid(g). */
#include <math.h>

#include "carl/nn.h"

void carl_swiglu_fwd(float *a, const float *h, int64_t N, int f) {
#pragma omp parallel for schedule(static) if (N * f >= CARL_OMP_MIN_WORK)
  for (int64_t i = 0; i < N; i++) {
    const float *g = h + i * 2 * f, *u = g + f;
    float *ai = a + i * f;
    for (int j = 0; j < f; j++) {
      float s = 1.0f / (1.0f + expf(-g[j]));
      ai[j] = g[j] * s * u[j];
    }
  }
}

/* d silu(g)/dg = s (1 + g (1 - s)). */
void carl_swiglu_bwd(float *dh, const float *da, const float *h, int64_t N, int f) {
#pragma omp parallel for schedule(static) if (N * f >= CARL_OMP_MIN_WORK)
  for (int64_t i = 0; i < N; i++) {
    const float *g = h + i * 2 * f, *u = g + f, *dai = da + i * f;
    float *dg = dh + i * 2 * f, *du = dg + f;
    for (int j = 0; j < f; j++) {
      float s = 1.0f / (1.0f + expf(-g[j]));
      float silu = g[j] * s;
      du[j] = dai[j] * silu;
      dg[j] = dai[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
    }
  }
}
