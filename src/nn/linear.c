/* Linear layers without bias through OpenBLAS sgemm, and fixed-order reductions.
 *
 * OpenBLAS's multi-threaded sgemm gives different bits for different thread counts (it changes
 * the kernels' tile shapes). So the output is cut into fixed tiles (CARL__TM x CARL__TN, the same
 * for every thread count), each tile is one single-threaded sgemm, and the tiles are spread over
 * OpenMP threads: the result depends on the shapes only. OpenBLAS is set to one thread for the
 * duration of each call and the caller's setting restored afterwards. */
#include <cblas.h>

#include "carl/nn.h"

#ifndef CARL__TM
#define CARL__TM 256
#endif
#ifndef CARL__TN
#define CARL__TN 256
#endif

/* OpenBLAS runs single-threaded inside carl_sgemm_batch (the tiles are the parallelism); the
 * caller's setting is restored on return. Called outside parallel regions only. */
static int carl__blas_single_thread(void) {
  int n = openblas_get_num_threads();
  if (n != 1) openblas_set_num_threads(1);
  return n;
}
static void carl__blas_restore(int n) {
  if (n != 1) openblas_set_num_threads(n);
}

/* Tiles of one product: tm x tn of near-equal size (multiples of 16 but the last), from the
 * shape alone. */
static void carl__tiles(const carl_gemm_t *g, int64_t *tm, int64_t *tn, int64_t *sm, int64_t *sn) {
  *tm = (g->M + CARL__TM - 1) / CARL__TM;
  *tn = (g->N + CARL__TN - 1) / CARL__TN;
  *sm = ((g->M + *tm - 1) / *tm + 15) / 16 * 16;
  *sn = ((g->N + *tn - 1) / *tn + 15) / 16 * 16;
}

void carl_sgemm_batch(int n, const carl_gemm_t *g) {
  /* tiles of all products, numbered product by product */
  int64_t total = 0;
  double work = 0;
  for (int i = 0; i < n; i++) {
    if (g[i].M <= 0 || g[i].N <= 0) continue;
    int64_t tm, tn, sm, sn;
    carl__tiles(&g[i], &tm, &tn, &sm, &sn);
    total += tm * tn;
    work += (double)g[i].M * g[i].N * (g[i].K > 0 ? g[i].K : 1);
  }
  if (total == 0) return;
  const int blas_threads = carl__blas_single_thread();
#pragma omp parallel if (total > 1 && work >= 4.0 * CARL_OMP_MIN_WORK * 64)
  {
    int i = 0;
    int64_t base = 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < total; t++) {
      /* find the product of tile t (t only grows within a thread under schedule(dynamic)) */
      int64_t tm = 0, tn = 0, sm = 0, sn = 0;
      for (;;) {
        if (g[i].M > 0 && g[i].N > 0) {
          carl__tiles(&g[i], &tm, &tn, &sm, &sn);
          if (t < base + tm * tn) break;
          base += tm * tn;
        }
        i++;
      }
      const carl_gemm_t *p = &g[i];
      const int64_t u = t - base, i0 = (u / tn) * sm;
      const int j0 = (int)((u % tn) * sn);
      if (i0 >= p->M || j0 >= p->N) continue;
      const int mi = (int)(p->M - i0 < sm ? p->M - i0 : sm), nj = (int)(p->N - j0 < sn ? p->N - j0 : sn);
      const float *a = p->transA ? p->A + i0 : p->A + i0 * p->lda;             /* op(A) rows i0.. */
      const float *b = p->transB ? p->B + (int64_t)j0 * p->ldb : p->B + j0;   /* op(B) columns j0.. */
      cblas_sgemm(CblasRowMajor, p->transA ? CblasTrans : CblasNoTrans, p->transB ? CblasTrans : CblasNoTrans, mi, nj,
                  p->K, p->alpha, a, p->lda, b, p->ldb, p->beta, p->C + i0 * p->ldc + j0, p->ldc);
    }
  }
  carl__blas_restore(blas_threads);
}

void carl_sgemm(int transA, int transB, int64_t M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc) {
  carl_gemm_t g = {transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc};
  carl_sgemm_batch(1, &g);
}

void carl_linear_fwd(float *y, const float *x, const float *W, int64_t N, int In, int Out) {
  if (N == 0) return;
  /* y [N, Out] = x [N, In] * W[Out, In]^T */
  carl_sgemm(0, 1, N, Out, In, 1.0f, x, In, W, In, 0.0f, y, Out);
}

void carl_linear_bwd(float *dx, float *dW, const float *dy, const float *x, const float *W, int64_t N, int In,
                     int Out, int dx_accum) {
  if (N == 0) return;
  /* dW [Out, In] += dy[N, Out]^T x [N, In] */
  if (dW) carl_sgemm(1, 0, Out, In, (int)N, 1.0f, dy, Out, x, In, 1.0f, dW, In);
  /* dx [N, In] = dy [N, Out] W [Out, In] */
  if (dx) carl_sgemm(0, 0, N, In, Out, 1.0f, dy, Out, W, In, dx_accum ? 1.0f : 0.0f, dx, In);
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
#pragma omp parallel for schedule(static) if (n >= CARL_OMP_MIN_WORK)
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
#pragma omp parallel for schedule(static) if (N * d >= CARL_OMP_MIN_WORK)
  for (int b = 0; b < nb; b++) {
    int j0 = b * CB, j1 = j0 + CB < d ? j0 + CB : d;
    float acc[16] = {0};
    for (int64_t i = 0; i < N; i++)
      for (int j = j0; j < j1; j++) acc[j - j0] += x[i * d + j];
    for (int j = j0; j < j1; j++) out[j] += acc[j - j0];
  }
}
