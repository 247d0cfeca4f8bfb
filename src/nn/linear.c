/* Linear layers without bias through OpenBLAS sgemm, and fixed-order reductions. */
#include <cblas.h>

#include "carl/nn.h"

void carl_linear_fwd(float *y, const float *x, const float *W, int64_t N, int In, int Out) {
  if (N == 0) return;
  /* y [N, O] = x [N, I] * W[O, I]^T */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, Out, In, 1.0f, x, In, W, In, 0.0f, y, Out);
}

void carl_linear_bwd(float *dx, float *dW, const float *dy, const float *x, const float *W, int64_t N, int In,
                     int Out, int dx_accum) {
  if (N == 0) return;
  /* dW [O, I] += dy[N, O]^T x [N, I] */
  if (dW) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Out, In, (int)N, 1.0f, dy, Out, x, In, 1.0f, dW, In);
  /* dx [N, I] = dy [N, O] W [O, I] */
  if (dx)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, In, Out, 1.0f, dy, Out, W, In, dx_accum ? 1.0f : 0.0f,
                dx, In);
}

/* Blocks of a fixed size, summed in order: the result does not depend on the thread count. */
#define CARL__RED_BLOCK 4096

double carl_sumsq(const float *x, int64_t n) {
  int64_t nb = (n + CARL__RED_BLOCK - 1) / CARL__RED_BLOCK;
  if (nb <= 1) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
  }
  double stack[256];
  double *part = nb <= 256 ? stack : NULL;
  if (!part) {
    /* large inputs: sum groups of 256 blocks sequentially, each group in parallel */
    double s = 0;
    for (int64_t g = 0; g < nb; g += 256) {
      int64_t lo = g * CARL__RED_BLOCK, hi = (g + 256) * CARL__RED_BLOCK;
      if (hi > n) hi = n;
      s += carl_sumsq(x + lo, hi - lo);
    }
    return s;
  }
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; b++) {
    int64_t lo = b * CARL__RED_BLOCK, hi = lo + CARL__RED_BLOCK < n ? lo + CARL__RED_BLOCK : n;
    double s = 0;
    for (int64_t i = lo; i < hi; i++) s += (double)x[i] * x[i];
    part[b] = s;
  }
  double s = 0;
  for (int64_t b = 0; b < nb; b++) s += part[b];
  return s;
}

void carl_colsum_add(float *out, const float *x, int64_t N, int d) {
  /* parallel over column blocks; each column sums its rows in order */
  const int CB = 16;
  int nb = (d + CB - 1) / CB;
#pragma omp parallel for schedule(static)
  for (int b = 0; b < nb; b++) {
    int j0 = b * CB, j1 = j0 + CB < d ? j0 + CB : d;
    float acc[16] = {0};
    for (int64_t i = 0; i < N; i++)
      for (int j = j0; j < j1; j++) acc[j - j0] += x[i * d + j];
    for (int j = j0; j < j1; j++) out[j] += acc[j - j0];
  }
}
