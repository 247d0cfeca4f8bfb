/* bench/gpu/moe: the bf16 MoE expert layer of one GPU, forward + backward, on the three shapes of
 * issue 14 (T, d, f, E, k) = (16384, 4096, 14336, 8, 2), (16384, 2048, 1408, 64, 6),
 * (65536, 1024, 512, 128, 8), beside the matrix rate: FLOPs = 18 R d f (R = T k rows: forward
 * 2 R d 2f + 2 R f d, backward twice that), over the dense bf16 GEMM rate that
 * bench/gpu/torch_moe.py measures in the same run (its 8192^3 product), and beside
 * torch._grouped_mm (same script).
 * Routing: softmax top-k of random logits on the CPU (not timed); the plan's rows are uploaded
 * once (not timed). Timed: permute, the two grouped GEMMs, SwiGLU, the gated combine (forward);
 * the gate gradients, four grouped GEMMs, SwiGLU backward and the row sums of dx (backward).
 * usage: gpu_moe [repeats] [config index or -1 for all] [gemm mode 0/1 or -1 for both]
 * Lines starting with "RESULT" are for scripts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/cuda.h"
#include "carl/plan.h"
#include "carl/route.h"

#define CHECK(x)                                                                                   \
  do {                                                                                             \
    carl_status st_ = (x);                                                                         \
    if (st_ != CARL_OK) {                                                                          \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, carl_strerror(st_), carl_errmsg());   \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static uint16_t *bf_rand(carl_cuda_t *g, float *tmp, int64_t n, uint64_t seed, float std) {
  uint16_t *p;
  CHECK(carl_cuda_malloc(g, 2 * (size_t)n, (void **)&p));
  CHECK(carl_cuda_fill_normal(g, tmp, n, seed, 0.0f, std));
  CHECK(carl_cuda_to_bf16(g, p, tmp, n));
  return p;
}

int main(int argc, char **argv) {
  const int reps = argc > 1 ? atoi(argv[1]) : 10;
  const int only = argc > 2 ? atoi(argv[2]) : -1;
  const int gm = argc > 3 ? atoi(argv[3]) : -1;
  static const struct {
    int64_t T;
    int d, f, E, k;
  } cfg[] = {{16384, 4096, 14336, 8, 2}, {16384, 2048, 1408, 64, 6}, {65536, 1024, 512, 128, 8}};
  carl_cuda_t *g;
  CHECK(carl_cuda_create(0, &g));
  printf("bench/gpu/moe: %s; %d timed repeats after 2 warm-ups\n", carl_cuda_describe(g), reps);
  printf("\n| T | d | f | E | k | GEMMs | forward ms | fwd+bwd ms | TFLOP/s (fwd+bwd) |\n|---|---|---|---|---|---|---|---|---|\n");
  double *ms = malloc(sizeof(double) * (size_t)reps), *fms = malloc(sizeof(double) * (size_t)reps);
  for (int c = 0; c < 3; c++) {
    if (only >= 0 && c != only) continue;
    const int64_t T = cfg[c].T;
    const int d = cfg[c].d, f = cfg[c].f, E = cfg[c].E, k = cfg[c].k;
    /* routing on the CPU: softmax top-k of random logits */
    float *z = malloc(sizeof(float) * (size_t)T * E), *gates = malloc(sizeof(float) * (size_t)T * k);
    int32_t *ex = malloc(sizeof(int32_t) * (size_t)T * k);
    uint64_t s = 88172645463325252ull + (uint64_t)c;
    for (int64_t i = 0; i < T * E; i++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      z[i] = (float)((s >> 11) * (1.0 / 9007199254740992.0));
    }
    const char *keys[] = {"k", "aux", "z_loss"};
    double vals[] = {k, 0, 0};
    carl_router_t *r;
    CHECK(carl_router_create("topk", 3, keys, vals, &r));
    carl_route_in_t in = {.T = T, .E = E, .logits = z};
    carl_route_out_t out = {.experts = ex, .weights = gates};
    CHECK(carl_router_route(r, &in, &out));
    carl_topo_t topo;
    CHECK(carl_topo_make(&topo, 1, 1, 160, 3, 50, 10));
    carl_placement_t pl;
    CHECK(carl_placement_contiguous(&pl, E, 1));
    carl_plan_t plan = {0};
    CHECK(carl_plan_build(&topo, &pl, ex, NULL, T, k, CARL_PLAN_FLAT, -1, CARL_PLAN_ROWS, &plan));
    /* tensors */
    const int64_t n13 = (int64_t)E * 2 * f * d, n2 = (int64_t)E * d * f, nx = T * d;
    float *tmp;
    CHECK(carl_cuda_malloc(g, 4 * (size_t)(n13 > nx ? n13 : nx), (void **)&tmp));
    uint16_t *x = bf_rand(g, tmp, nx, 1 + c, 1.0f), *dy = bf_rand(g, tmp, nx, 2 + c, 1.0f);
    uint16_t *w13 = bf_rand(g, tmp, n13, 3 + c, 0.02f), *w2 = bf_rand(g, tmp, n2, 4 + c, 0.02f);
    carl_cuda_mfree(g, tmp);
    uint16_t *y, *dx, *dw13, *dw2;
    float *dg, *dgates;
    CHECK(carl_cuda_malloc(g, 2 * (size_t)nx, (void **)&y));
    CHECK(carl_cuda_malloc(g, 2 * (size_t)nx, (void **)&dx));
    CHECK(carl_cuda_malloc(g, 2 * (size_t)n13, (void **)&dw13));
    CHECK(carl_cuda_malloc(g, 2 * (size_t)n2, (void **)&dw2));
    CHECK(carl_cuda_malloc(g, sizeof(float) * (size_t)T * k, (void **)&dg));
    CHECK(carl_cuda_malloc(g, sizeof(float) * (size_t)T * k, (void **)&dgates));
    CHECK(carl_cuda_upload(g, dg, gates, sizeof(float) * (size_t)T * k));
    carl_cuda_moe_w_t W = {w13, w2};
    carl_cuda_moe_act_t *A;
    CHECK(carl_cuda_moe_act_create(g, &A));
    for (int mode = 0; mode < 2; mode++) {
      if (gm >= 0 && mode != gm) continue;
      carl_cuda_moe_t L = {.d = d, .f = f, .S = E, .k = k, .gemm = mode};
      CHECK(carl_cuda_moe_plan(g, &L, A, &plan, 0));
      const double rows = (double)carl_cuda_moe_rows(A), flops = 18.0 * rows * d * f;
      for (int i = 0; i < 2 + reps; i++) {
        CHECK(carl_cuda_mark(g, 0));
        CHECK(carl_cuda_moe_forward(g, &L, &W, A, x, dg, y));
        CHECK(carl_cuda_mark(g, 1));
        CHECK(carl_cuda_moe_backward(g, &L, &W, A, dg, dy, dx, dw13, dw2, dgates));
        CHECK(carl_cuda_mark(g, 2));
        if (i >= 2) {
          CHECK(carl_cuda_elapsed(g, 0, 1, &fms[i - 2]));
          CHECK(carl_cuda_elapsed(g, 0, 2, &ms[i - 2]));
        }
      }
      qsort(ms, (size_t)reps, sizeof *ms, cmp_d);
      qsort(fms, (size_t)reps, sizeof *fms, cmp_d);
      const double m = ms[reps / 2];
      printf("| %lld | %d | %d | %d | %d | %s | %.2f | %.2f | %.0f |\n", (long long)T, d, f, E, k,
             mode ? "cublasGemmGroupedBatchedEx" : "cublasGemmEx per expert", fms[reps / 2], m, flops / (m * 1e-3) / 1e12);
      printf("RESULT moe T=%lld d=%d f=%d E=%d k=%d gemm=%d fwd_ms %.3f fwdbwd_ms %.3f min %.3f max %.3f tflops %.1f\n",
             (long long)T, d, f, E, k, mode, fms[reps / 2], m, ms[0], ms[reps - 1], flops / (m * 1e-3) / 1e12);
      fflush(stdout);
    }
    carl_cuda_moe_act_free(A);
    carl_cuda_mfree(g, x), carl_cuda_mfree(g, dy), carl_cuda_mfree(g, w13), carl_cuda_mfree(g, w2);
    carl_cuda_mfree(g, y), carl_cuda_mfree(g, dx), carl_cuda_mfree(g, dw13), carl_cuda_mfree(g, dw2);
    carl_cuda_mfree(g, dg), carl_cuda_mfree(g, dgates);
    carl_plan_free(&plan);
    carl_placement_free(&pl);
    carl_router_free(r);
    free(z), free(gates), free(ex);
  }
  free(ms), free(fms);
  carl_cuda_free(g);
  return 0;
}
