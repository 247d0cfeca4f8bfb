/* bench/moe_cpu: the MoE layer's forward + backward on the CPU (routing through the registry's
 * topk router, grouping, per-expert SwiGLU sgemms, weighted combine, router backward) in GFLOP/s,
 * beside OpenBLAS dense sgemm doing the same matrix products with one weight for all T*k rows,
 * and beside the nominal peak of the cores used. Repeats interleaved, medians quoted.
 *
 *   bench_moe_cpu [T d f E k repeats]      default 4096 512 1024 16 2 5
 *
 * FLOPs counted (multiply-add = 2): per (token, slot) row forward 2*d*2f + 2*f*d = 6 d f, backward
 * twice that; router 2 T d E forward, 4 T d E backward. Elementwise work (SwiGLU, gather, combine,
 * softmax/top-k) is not counted but is in the measured time.
 *
 * The layer's products go through carl_sgemm (fixed output tiles, one single-threaded OpenBLAS
 * sgemm per tile, tiles over OpenMP threads: bitwise the same for any thread count); the peer is
 * OpenBLAS's own multi-threaded sgemm; the peer's products through carl_sgemm are printed too.
 * OPENBLAS_CORETYPE picks the sgemm kernel where OpenBLAS cannot identify a virtual CPU. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/nn.h"
#include "carl/route.h"
#include "model/moe.h"
#include "bench_util.h"

static float *randn(int64_t n, uint64_t seed, float s) {
  float *p = malloc(sizeof(float) * (size_t)n);
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
#pragma omp parallel for
  for (int64_t i = 0; i < n; i++) p[i] = s * carl_rng_normal(seed, CARL_STREAM_INIT, (uint64_t)i);
  return p;
}

/* The dense peer: the same nine products as the experts' forward + backward, all R = T*k rows
 * against one weight (one sgemm each, no routing, no grouping). */
static void dense_ffn(int64_t R, int d, int f, const float *x, const float *w13, const float *w2, float *h, float *a,
                      float *y, float *dy, float *da, float *dh, float *dx, float *dw13, float *dw2) {
  const int n = (int)R;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, 2 * f, d, 1, x, d, w13, d, 0, h, 2 * f);
  carl_swiglu_fwd(a, h, R, f);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, f, 1, a, f, w2, f, 0, y, d);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, f, d, 1, dy, d, w2, f, 0, da, f);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, f, n, 1, dy, d, a, f, 1, dw2, f);
  carl_swiglu_bwd(dh, da, h, R, f);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, 2 * f, d, n, 1, dh, 2 * f, x, d, 1, dw13, d);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, 2 * f, 1, dh, 2 * f, w13, d, 0, dx, d);
}

/* The same nine products through carl_sgemm (fixed tiles, single-threaded OpenBLAS per tile). */
static void dense_tiled(int64_t R, int d, int f, const float *x, const float *w13, const float *w2, float *h, float *a,
                        float *y, float *dy, float *da, float *dh, float *dx, float *dw13, float *dw2) {
  carl_linear_fwd(h, x, w13, R, d, 2 * f);
  carl_swiglu_fwd(a, h, R, f);
  carl_linear_fwd(y, a, w2, R, f, d);
  carl_linear_bwd(da, dw2, dy, a, w2, R, f, d, 0);
  carl_swiglu_bwd(dh, da, h, R, f);
  carl_linear_bwd(dx, dw13, dh, x, w13, R, d, 2 * f, 0);
}

static double cpu_mhz(void) {
  FILE *fp = fopen("/proc/cpuinfo", "r");
  char line[512];
  double mhz = 0;
  while (fp && fgets(line, sizeof line, fp))
    if (!strncmp(line, "cpu MHz", 7)) {
      char *c = strchr(line, ':');
      if (c) mhz = atof(c + 1);
      break;
    }
  if (fp) fclose(fp);
  return mhz;
}

int main(int argc, char **argv) {
  int64_t T = argc > 1 ? atoll(argv[1]) : 4096;
  int d = argc > 2 ? atoi(argv[2]) : 512, f = argc > 3 ? atoi(argv[3]) : 1024, E = argc > 4 ? atoi(argv[4]) : 16,
      k = argc > 5 ? atoi(argv[5]) : 2, reps = argc > 6 ? atoi(argv[6]) : 5;
  if (T < 1 || d < 1 || f < 1 || E < 1 || k < 1 || k > E || reps < 1) {
    fprintf(stderr, "usage: bench_moe_cpu [T d f E k repeats], 1 <= k <= E\n");
    return 2;
  }
  const int threads = omp_get_max_threads();
  const char *keys[] = {"k"};
  double vals[] = {k};
  carl_router_t *r;
  if (carl_router_create("topk", 1, keys, vals, &r) != CARL_OK) {
    fprintf(stderr, "router: %s\n", carl_errmsg());
    return 1;
  }
  carl__moe_t L = {.d = d, .f = f, .E = E, .k = k, .fs = 0, .router = r};
  carl_topo_t topo1;
  carl_exec_t *ex;
  if (carl__moe_standalone(&L, &topo1, &ex) != CARL_OK) {
    fprintf(stderr, "step: %s\n", carl_errmsg());
    return 1;
  }
  float *x = randn(T * d, 1, 1.0f), *dy = randn(T * d, 2, 1.0f), *y = calloc((size_t)(T * d), sizeof(float)),
        *dx = calloc((size_t)(T * d), sizeof(float));
  carl__moe_w_t W = {randn((int64_t)E * d, 3, 0.02f), randn((int64_t)E * 2 * f * d, 4, 0.02f),
                     randn((int64_t)E * d * f, 5, 0.02f), NULL, NULL, 0};
  carl__moe_w_t G = {calloc((size_t)E * d, 4), calloc((size_t)E * 2 * f * d, 4), calloc((size_t)E * d * f, 4), NULL, NULL, 0};
  carl__moe_act_t A = {0};
  /* dense peer buffers */
  const int64_t R = T * k;
  float *xd = randn(R * d, 6, 1.0f), *dyd = randn(R * d, 7, 1.0f), *w13 = randn((int64_t)2 * f * d, 8, 0.02f),
        *w2 = randn((int64_t)d * f, 9, 0.02f);
  float *hd = malloc(sizeof(float) * R * 2 * f), *ad = malloc(sizeof(float) * R * f), *yd = malloc(sizeof(float) * R * d),
        *dad = malloc(sizeof(float) * R * f), *dhd = malloc(sizeof(float) * R * 2 * f),
        *dxd = malloc(sizeof(float) * R * d), *dw13 = calloc((size_t)2 * f * d, 4), *dw2 = calloc((size_t)d * f, 4);
  if (!y || !dx || !G.router || !G.w13 || !G.w2 || !hd || !ad || !yd || !dad || !dhd || !dxd || !dw13 || !dw2) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  const double flop_experts = 18.0 * (double)R * d * f, flop_router = 6.0 * (double)T * d * E;
  const double flop_moe = flop_experts + flop_router, flop_dense = flop_experts;
  double *tm = malloc(sizeof(double) * reps), *td = malloc(sizeof(double) * reps), *tr = malloc(sizeof(double) * reps),
         *tt = malloc(sizeof(double) * reps);
  int64_t maxload = 0;
  for (int it = -1; it < reps; it++) { /* it = -1: warm-up */
    carl_route_in_t in = {.T = T, .E = E};
    double t0 = carl_now();
    if (carl__moe_forward(&L, &W, &A, &in, x, y) != CARL_OK ||
        carl__moe_backward(&L, &W, &G, &A, &in, x, dy, dx) != CARL_OK) {
      fprintf(stderr, "moe: %s\n", carl_errmsg());
      return 1;
    }
    double t1 = carl_now();
    /* the peer: OpenBLAS's own threading (carl_sgemm restores the caller's OpenBLAS setting) */
    dense_ffn(R, d, f, xd, w13, w2, hd, ad, yd, dyd, dad, dhd, dxd, dw13, dw2);
    double t2 = carl_now();
    /* the same dense products through carl_sgemm's fixed tiles (what the layer uses) */
    dense_tiled(R, d, f, xd, w13, w2, hd, ad, yd, dyd, dad, dhd, dxd, dw13, dw2);
    double t2b = carl_now();
    /* routing alone (route + loss gradient), for the breakdown */
    carl_route_out_t out = {.experts = A.experts, .weights = A.weights, .dlogits = A.dlogits};
    in.logits = A.logits;
    double t3 = carl_now();
    if (carl_router_route(r, &in, &out) != CARL_OK) return 1;
    double t4 = carl_now();
    if (it >= 0) {
      tm[it] = t1 - t0;
      td[it] = t2 - t1;
      tt[it] = t2b - t2;
      tr[it] = t4 - t3;
    }
    for (int e = 0; e < E; e++) maxload = A.load[e] > maxload ? A.load[e] : maxload;
  }
  double mm = bench_median(tm, reps), md = bench_median(td, reps), mr = bench_median(tr, reps), mt = bench_median(tt, reps);
  double mhz = cpu_mhz(), peak = threads * mhz * 1e6 * 64.0; /* AVX-512: 2 FMA x 16 fp32 x 2 per cycle */
  printf("bench/moe_cpu: T=%lld d=%d f=%d E=%d k=%d, %d threads, %d repeats (medians)\n", (long long)T, d, f, E, k,
         threads, reps);
  const char *wp = getenv("OMP_WAIT_POLICY");
  printf("  OpenBLAS core %s (%s), OMP_WAIT_POLICY=%s\n", openblas_get_corename(), openblas_get_config(), wp ? wp : "(unset)");
  printf("  max expert load %lld of mean %.0f rows\n", (long long)maxload, (double)R / E);
  printf("  MoE layer fwd+bwd : %8.3f s  %7.1f GFLOP/s  (%.2f GFLOP)\n", mm, flop_moe / mm * 1e-9, flop_moe * 1e-9);
  printf("  dense sgemm peer  : %8.3f s  %7.1f GFLOP/s  (%.2f GFLOP, same products, one weight)\n", md,
         flop_dense / md * 1e-9, flop_dense * 1e-9);
  printf("  dense, fixed tiles: %8.3f s  %7.1f GFLOP/s  (the peer's products through carl_sgemm)\n", mt,
         flop_dense / mt * 1e-9);
  printf("  routing alone     : %8.4f s  (%.1f%% of the layer)\n", mr, 100 * mr / mm);
  printf("  ratio MoE / dense : %.3f   (target >= 0.70)\n", (flop_moe / mm) / (flop_dense / md));
  if (mhz > 0)
    printf("  nominal peak      : %7.1f GFLOP/s (%d cores x %.0f MHz x 64 FLOP/cycle); MoE %.2f, dense %.2f of it\n",
           peak * 1e-9, threads, mhz, flop_moe / mm / peak, flop_dense / md / peak);
  carl__moe_act_free(&A);
  carl__moe_standalone_free(&L, ex);
  carl_router_free(r);
  return 0;
}
