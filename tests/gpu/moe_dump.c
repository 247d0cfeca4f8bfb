/* tests/gpu/moe_dump: inputs and outputs of the GPU MoE layer for the PyTorch check
 * (tests/gpu/moe_torch.py, which runs this program). Fresh random inputs from the seed given
 * (or one from the clock): logits routed by the GPU topk router, bf16 x, W13, W2, dy; the layer's
 * forward and backward (GEMM mode given) and the gate backward of d(gates) to d(logits). Written
 * as .npy into DIR (bf16 values as float32, exactly).
 * usage: gpu_moe_dump DIR T d f E k gemm [seed] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "carl/array.h"
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

static void save_f32(carl_cuda_t *g, const char *dir, const char *name, const float *dev, int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  float *h = malloc(sizeof(float) * (size_t)n);
  CHECK(carl_cuda_download(g, h, dev, sizeof(float) * (size_t)n));
  char path[1024];
  snprintf(path, sizeof path, "%s/%s.npy", dir, name);
  CHECK(carl_npy_save(path, CARL_F32, ndim, shape, h));
  free(h);
}

static void save_bf(carl_cuda_t *g, const char *dir, const char *name, const uint16_t *dev, int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  float *f;
  CHECK(carl_cuda_malloc(g, sizeof(float) * (size_t)n, (void **)&f));
  CHECK(carl_cuda_from_bf16(g, f, dev, n));
  save_f32(g, dir, name, f, ndim, shape);
  carl_cuda_mfree(g, f);
}

static uint16_t *bf_rand(carl_cuda_t *g, int64_t n, uint64_t seed, float std) {
  float *t;
  uint16_t *p;
  CHECK(carl_cuda_malloc(g, 4 * (size_t)n, (void **)&t));
  CHECK(carl_cuda_malloc(g, 2 * (size_t)n, (void **)&p));
  CHECK(carl_cuda_fill_normal(g, t, n, seed, 0.0f, std));
  CHECK(carl_cuda_to_bf16(g, p, t, n));
  carl_cuda_mfree(g, t);
  return p;
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: %s DIR T d f E k gemm [seed]\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1];
  const int64_t T = atoll(argv[2]);
  const int d = atoi(argv[3]), f = atoi(argv[4]), E = atoi(argv[5]), k = atoi(argv[6]), gemm = atoi(argv[7]);
  const uint64_t seed = argc > 8 ? strtoull(argv[8], NULL, 10) : (uint64_t)time(NULL);
  carl_cuda_t *g;
  CHECK(carl_cuda_create(0, &g));
  printf("moe_dump: %s; T %lld d %d f %d E %d k %d gemm %d seed %llu\n", carl_cuda_describe(g), (long long)T, d, f, E, k,
         gemm, (unsigned long long)seed);
  float *z, *gates, *dgates, *dz;
  int32_t *ex;
  CHECK(carl_cuda_malloc(g, sizeof(float) * (size_t)T * E, (void **)&z));
  CHECK(carl_cuda_malloc(g, sizeof(float) * (size_t)T * E, (void **)&dz));
  CHECK(carl_cuda_malloc(g, sizeof(float) * (size_t)T * k, (void **)&gates));
  CHECK(carl_cuda_malloc(g, sizeof(float) * (size_t)T * k, (void **)&dgates));
  CHECK(carl_cuda_malloc(g, sizeof(int32_t) * (size_t)T * k, (void **)&ex));
  CHECK(carl_cuda_fill_normal(g, z, T * E, seed * 7 + 1, 0.0f, 1.0f));
  const char *keys[] = {"k"};
  double vals[] = {k};
  carl_router_t *r;
  CHECK(carl_router_create("topk", 1, keys, vals, &r));
  carl_route_in_t in = {.T = T, .E = E, .logits = z};
  carl_cuda_route_t o = {.out = {.experts = ex, .weights = gates}};
  CHECK(carl_cuda_route(g, r, &in, &o));
  int32_t *hex = malloc(sizeof(int32_t) * (size_t)T * k);
  CHECK(carl_cuda_download(g, hex, ex, sizeof(int32_t) * (size_t)T * k));
  carl_topo_t topo;
  CHECK(carl_topo_make(&topo, 1, 1, 160, 3, 50, 10));
  carl_placement_t pl;
  CHECK(carl_placement_contiguous(&pl, E, 1));
  carl_plan_t plan = {0};
  CHECK(carl_plan_build(&topo, &pl, hex, NULL, T, k, CARL_PLAN_FLAT, -1, CARL_PLAN_ROWS, &plan));
  const int64_t nx = T * d, n13 = (int64_t)E * 2 * f * d, n2 = (int64_t)E * d * f;
  uint16_t *x = bf_rand(g, nx, seed * 7 + 2, 1.0f), *dy = bf_rand(g, nx, seed * 7 + 3, 1.0f);
  uint16_t *w13 = bf_rand(g, n13, seed * 7 + 4, 1.0f / 32), *w2 = bf_rand(g, n2, seed * 7 + 5, 1.0f / 32);
  uint16_t *y, *dx, *dw13, *dw2;
  CHECK(carl_cuda_malloc(g, 2 * (size_t)nx, (void **)&y));
  CHECK(carl_cuda_malloc(g, 2 * (size_t)nx, (void **)&dx));
  CHECK(carl_cuda_malloc(g, 2 * (size_t)n13, (void **)&dw13));
  CHECK(carl_cuda_malloc(g, 2 * (size_t)n2, (void **)&dw2));
  carl_cuda_moe_t L = {.d = d, .f = f, .S = E, .k = k, .gemm = gemm};
  carl_cuda_moe_w_t W = {w13, w2};
  carl_cuda_moe_act_t *A;
  CHECK(carl_cuda_moe_act_create(g, &A));
  CHECK(carl_cuda_moe_plan(g, &L, A, &plan, 0));
  CHECK(carl_cuda_moe_forward(g, &L, &W, A, x, gates, y));
  CHECK(carl_cuda_moe_backward(g, &L, &W, A, gates, dy, dx, dw13, dw2, dgates));
  CHECK(carl_cuda_memset(g, dz, 0, sizeof(float) * (size_t)T * E));
  CHECK(carl_cuda_gate_backward(g, z, T, E, k, 0, 1, ex, dgates, dz));
  CHECK(carl_cuda_sync(g));
  const int64_t sx[2] = {T, d}, s13[3] = {E, 2 * f, d}, s2[3] = {E, d, f}, sk[2] = {T, k}, sz[2] = {T, E};
  save_f32(g, dir, "logits", z, 2, sz);
  save_f32(g, dir, "gates", gates, 2, sk);
  save_bf(g, dir, "x", x, 2, sx);
  save_bf(g, dir, "dy", dy, 2, sx);
  save_bf(g, dir, "w13", w13, 3, s13);
  save_bf(g, dir, "w2", w2, 3, s2);
  save_bf(g, dir, "y", y, 2, sx);
  save_bf(g, dir, "dx", dx, 2, sx);
  save_bf(g, dir, "dw13", dw13, 3, s13);
  save_bf(g, dir, "dw2", dw2, 3, s2);
  save_f32(g, dir, "dgates", dgates, 2, sk);
  save_f32(g, dir, "dlogits", dz, 2, sz);
  char path[1024];
  snprintf(path, sizeof path, "%s/experts.npy", dir);
  CHECK(carl_npy_save(path, CARL_I32, 2, sk, hex));
  printf("moe_dump: %lld rows written to %s\n", (long long)carl_cuda_moe_rows(A), dir);
  carl_cuda_moe_act_free(A);
  carl_plan_free(&plan);
  carl_placement_free(&pl);
  carl_router_free(r);
  free(hex);
  carl_cuda_free(g);
  return 0;
}
