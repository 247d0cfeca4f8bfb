/* RMSNorm (Zhang & Sennrich 2019): y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps). */
#include <math.h>

#include "carl/nn.h"

void carl_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int64_t N, int d, float eps) {
#pragma omp parallel for schedule(static) if (N * d >= CARL_OMP_MIN_WORK)
  for (int64_t i = 0; i < N; i++) {
    const float *xi = x + i * d;
    float *yi = y + i * d;
    double ss = 0;
    for (int j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
    float r = (float)(1.0 / sqrt(ss / d + eps));
    rstd[i] = r;
    for (int j = 0; j < d; j++) yi[j] = xi[j] * r * w[j];
  }
}

/* With n = x * rstd: dn = dy * w; dx = rstd * (dn - n * mean(dn * n)); dw = sum_rows dy * n. */
void carl_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rstd,
                      int64_t N, int d, int dx_accum) {
  if (dx) {
#pragma omp parallel for schedule(static) if (N * d >= CARL_OMP_MIN_WORK)
    for (int64_t i = 0; i < N; i++) {
      const float *xi = x + i * d, *dyi = dy + i * d;
      float *dxi = dx + i * d;
      float r = rstd[i];
      double dot = 0;
      for (int j = 0; j < d; j++) dot += (double)dyi[j] * w[j] * xi[j] * r;
      float c = (float)(dot / d);
      for (int j = 0; j < d; j++) {
        float g = r * (dyi[j] * w[j] - xi[j] * r * c);
        dxi[j] = dx_accum ? dxi[j] + g : g;
      }
    }
  }
  if (dw) {
    const int CB = 16;
    int nb = (d + CB - 1) / CB;
#pragma omp parallel for schedule(static) if (N * d >= CARL_OMP_MIN_WORK)
    for (int b = 0; b < nb; b++) {
      int j0 = b * CB, j1 = j0 + CB < d ? j0 + CB : d;
      float acc[16] = {0};
      for (int64_t i = 0; i < N; i++)
        for (int j = j0; j < j1; j++) acc[j - j0] += dy[i * d + j] * x[i * d + j] * rstd[i];
      for (int j = j0; j < j1; j++) dw[j] += acc[j - j0];
    }
  }
}
