/* bench/gpu/route: the fused routing kernel on the GPU at T x E logits (default 1,048,576 x 256,
 * k = 8), beside the physical limit: the device-to-device copy rate measured here (bytes read +
 * written), applied to the bytes the router must move (the logits read once, experts and weights
 * written once). PyTorch's figures come from bench/gpu/torch_route.py in the same run.
 *
 * usage: gpu_route [T] [E] [k] [repeats]
 * Each policy: 3 warm-up routes, then `repeats` timed routes (CUDA events around the whole
 * carl_cuda_route call, which includes its host work, the statistics download and the losses);
 * the median is printed. Lines starting with "RESULT" are for scripts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/cuda.h"
#include "carl/route.h"
#include "carl/topo.h"

#define CHECK(x)                                                                       \
  do {                                                                                 \
    carl_status st_ = (x);                                                             \
    if (st_ != CARL_OK) {                                                              \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, carl_strerror(st_), carl_errmsg()); \
      exit(1);                                                                         \
    }                                                                                  \
  } while (0)

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static carl_router_t *make(const char *name, const char *opts) {
  const char *keys[16];
  double vals[16];
  char buf[256], names[16][32];
  int n = 0;
  snprintf(buf, sizeof buf, "%s", opts);
  for (char *t = strtok(buf, " "); t && n < 16; t = strtok(NULL, " ")) {
    char *eq = strchr(t, '=');
    if (!eq) continue;
    *eq = 0;
    snprintf(names[n], sizeof names[n], "%s", t);
    keys[n] = names[n];
    vals[n] = atof(eq + 1);
    n++;
  }
  carl_router_t *r;
  CHECK(carl_router_create(name, n, keys, vals, &r));
  return r;
}

int main(int argc, char **argv) {
  const int64_t T = argc > 1 ? atoll(argv[1]) : 1048576;
  const int E = argc > 2 ? atoi(argv[2]) : 256;
  const int k = argc > 3 ? atoi(argv[3]) : 8;
  const int reps = argc > 4 ? atoi(argv[4]) : 20;
  carl_cuda_t *g;
  CHECK(carl_cuda_create(0, &g));
  printf("bench/gpu/route: %s; T = %lld, E = %d, k = %d, %d repeats\n", carl_cuda_describe(g), (long long)T, E, k, reps);
  const size_t zb = sizeof(float) * (size_t)T * E;
  float *z, *z2;
  int32_t *ex;
  float *w;
  CHECK(carl_cuda_malloc(g, zb, (void **)&z));
  CHECK(carl_cuda_malloc(g, zb, (void **)&z2));
  CHECK(carl_cuda_malloc(g, sizeof(int32_t) * (size_t)T * k, (void **)&ex));
  CHECK(carl_cuda_malloc(g, sizeof(float) * (size_t)T * k, (void **)&w));
  CHECK(carl_cuda_fill_normal(g, z, (int64_t)T * E, 12345, 0.0f, 1.0f));
  /* the copy bound: a device-to-device copy of the logits */
  double *ms = malloc(sizeof(double) * (size_t)(reps > 10 ? reps : 10));
  for (int i = 0; i < 13; i++) {
    CHECK(carl_cuda_mark(g, 0));
    CHECK(carl_cuda_copy(g, z2, z, zb));
    CHECK(carl_cuda_mark(g, 1));
    if (i >= 3) CHECK(carl_cuda_elapsed(g, 0, 1, &ms[i - 3]));
  }
  qsort(ms, 10, sizeof *ms, cmp_d);
  const double copy_ms = ms[5], copy_GBps = 2.0 * zb / (copy_ms * 1e-3) / 1e9;
  printf("device-to-device copy of the logits (%.2f GB): %.3f ms, %.0f GB/s (read + written)\n", zb / 1e9, copy_ms, copy_GBps);
  printf("RESULT copy GBps %.1f\n", copy_GBps);
  carl_cuda_mfree(g, z2);
  const double bytes = (double)zb + (double)T * k * 8.0;
  const double bound_ms = bytes / (copy_GBps * 1e9) * 1e3;
  carl_topo_t t88;
  CHECK(carl_topo_make(&t88, 8, 8, 160, 3, 50, 10));
  struct {
    const char *label, *router, *opts;
    int topo, hop;
  } pol[] = {
      {"topk (softmax, renorm, z + aux stats)", "topk", "", 0, 0},
      {"topk (no loss statistics)", "topk", "z_loss=0 aux=0", 0, 0},
      {"lossfree (sigmoid + bias)", "lossfree", "", 0, 0},
      {"DeepSeek-V3 (sigmoid + bias, 8 groups, top-4 by top-2 sum)", "lossfree", "groups=8 M=4", 0, 0},
      {"grouplimited (softmax, 8 groups, 4 kept)", "grouplimited", "groups=8 M=4", 0, 0},
      {"carl (8x8 devices: cost bias, 4 of 8 nodes, hop counts)", "carl", "warm=0 M=4 alpha_E0=0.01 alpha_G0=0.01", 1, 1},
      {"carl flat (8x8 devices: cost bias, hop counts)", "carl", "warm=0 hier=0", 1, 1},
  };
  double *load = malloc(sizeof(double) * (size_t)E);
  int64_t *hop = malloc(sizeof(int64_t) * 64 * 64);
  printf("\n| policy | ms (median) | GB/s moved | share of the copy bound (%.3f ms) |\n|---|---|---|---|\n", bound_ms);
  for (size_t p = 0; p < sizeof pol / sizeof pol[0]; p++) {
    char opts[200];
    snprintf(opts, sizeof opts, "k=%d %s", k, pol[p].opts);
    carl_router_t *r = make(pol[p].router, opts);
    carl_route_in_t in = {.T = T, .E = E, .logits = z, .topo = pol[p].topo ? &t88 : NULL};
    carl_cuda_route_t o = {.out = {.experts = ex, .weights = w}, .load = load, .hop = pol[p].hop ? hop : NULL};
    for (int i = 0; i < 3 + reps; i++) {
      CHECK(carl_cuda_mark(g, 2));
      CHECK(carl_cuda_route(g, r, &in, &o));
      CHECK(carl_cuda_mark(g, 3));
      if (i >= 3) CHECK(carl_cuda_elapsed(g, 2, 3, &ms[i - 3]));
    }
    if (o.on_cpu) printf("(ran on the CPU: %s)\n", o.note);
    qsort(ms, (size_t)reps, sizeof *ms, cmp_d);
    const double m = ms[reps / 2];
    printf("| %s | %.3f | %.0f | %.0f%% |\n", pol[p].label, m, bytes / (m * 1e-3) / 1e9, 100.0 * bound_ms / m);
    printf("RESULT route %s|%s| ms %.4f min %.4f max %.4f\n", pol[p].router, opts, m, ms[0], ms[reps - 1]);
    carl_router_free(r);
  }
  free(load);
  free(hop);
  free(ms);
  carl_cuda_mfree(g, z);
  carl_cuda_mfree(g, ex);
  carl_cuda_mfree(g, w);
  carl_cuda_free(g);
  return 0;
}
