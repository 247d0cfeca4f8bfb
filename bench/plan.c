/* bench/plan: dispatch plan + cost accounting of one DeepSeek-V3-sized step.
 *
 * T = 1,048,576 tokens, k = 8 of E = 256 experts, 64 devices (8 nodes x 8, h800-8x8), contiguous
 * placement, flat and hierarchical. Reports tokens/s of the fast path (OpenMP), of the plain
 * reference implementation (the peer figure), and of the physical bound: streaming the
 * assignments (int32 [T, k] + src int32 [T]) from memory once, measured in the same run by a
 * parallel read of the same bytes. Medians of REPEATS runs.
 *
 * Usage: bench_plan [topology.json] [repeats]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "carl/plan.h"
#include "plan/plan_internal.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Streaming read of the assignment bytes: the least any plan must do. */
static volatile int64_t bench_sink;
static double read_bound_s(const int32_t *ex, const int32_t *src, int64_t nex, int64_t T) {
  double t0 = carl_now();
  int64_t s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
  for (int64_t i = 0; i < nex; i++) s += ex[i];
#pragma omp parallel for reduction(+ : s) schedule(static)
  for (int64_t i = 0; i < T; i++) s += src[i];
  double dt = carl_now() - t0;
  bench_sink = s;
  return dt;
}

int main(int argc, char **argv) {
  const char *topo_path = argc > 1 ? argv[1] : "configs/topologies/h800-8x8.json";
  int repeats = argc > 2 ? atoi(argv[2]) : 7;
  if (repeats < 1) repeats = 1;
  enum { K = 8, E = 256 };
  const int64_t T = 1 << 20;
  const size_t token_bytes = 7168; /* DeepSeek-V3 hidden size, FP8 dispatch */

  carl_topo_t topo;
  if (carl_topo_load(topo_path, &topo) != CARL_OK) {
    fprintf(stderr, "bench_plan: %s\n", carl_errmsg());
    return 1;
  }
  carl_placement_t pl;
  if (carl_placement_contiguous(&pl, E, topo.devices) != CARL_OK) {
    fprintf(stderr, "bench_plan: %s\n", carl_errmsg());
    return 1;
  }
  int32_t *ex = malloc((size_t)T * K * sizeof *ex), *src = malloc((size_t)T * sizeof *src);
  if (!ex || !src) {
    fprintf(stderr, "bench_plan: out of memory\n");
    return 1;
  }
  /* k distinct experts per token, uniform (Philox, not timed); token t on device t*D/T. */
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; t++) {
    src[t] = (int32_t)(t * topo.devices / T);
    int n = 0;
    for (uint64_t j = 0; n < K; j++) {
      int e = (int)(carl_rng_uniform(1, CARL_STREAM_WORKLOAD, (uint64_t)t * 64 + j) * E);
      int dup = 0;
      for (int q = 0; q < n; q++) dup |= ex[t * K + q] == e;
      if (!dup) ex[t * K + n++] = e;
    }
  }
  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  const double bytes_read = (double)T * (K + 1) * sizeof(int32_t);
  printf("bench/plan: T=%lld k=%d E=%d devices=%d (%s), token_bytes=%zu, threads=%d, repeats=%d\n", (long long)T, K, E,
         topo.devices, topo.name, token_bytes, threads, repeats);

  double *tb = malloc((size_t)repeats * sizeof *tb), *tf = malloc((size_t)repeats * sizeof *tf);
  double *th = malloc((size_t)repeats * sizeof *th), *trf = malloc((size_t)repeats * sizeof *trf);
  double *trh = malloc((size_t)repeats * sizeof *trh);
  carl_cost_t c;
  if (carl_cost_init(&c, &topo) != CARL_OK) return 1;
  double inter[2] = {0, 0}, a2a[2] = {0, 0};
  read_bound_s(ex, src, T * K, T); /* warm up pages */
  for (int r = 0; r < repeats; r++) {
    tb[r] = read_bound_s(ex, src, T * K, T);
    for (int mode = 0; mode < 2; mode++) {
      carl_cost_reset(&c);
      double t0 = carl_now();
      if (carl_plan_cost(&topo, &pl, ex, src, T, K, token_bytes, (carl_plan_mode)mode, &c) != CARL_OK) {
        fprintf(stderr, "bench_plan: %s\n", carl_errmsg());
        return 1;
      }
      (mode ? th : tf)[r] = carl_now() - t0;
      inter[mode] = c.bytes[CARL_LINK_INTER];
      a2a[mode] = c.a2a_s;
      carl_cost_reset(&c);
      t0 = carl_now();
      if (carl__plan_cost_ref(&topo, &pl, ex, src, T, K, token_bytes, (carl_plan_mode)mode, &c) != CARL_OK) {
        fprintf(stderr, "bench_plan: %s\n", carl_errmsg());
        return 1;
      }
      (mode ? trh : trf)[r] = carl_now() - t0;
      if (c.bytes[CARL_LINK_INTER] != inter[mode]) {
        fprintf(stderr, "bench_plan: fast and reference disagree\n");
        return 1;
      }
    }
  }
  double mb = median(tb, repeats), mf = median(tf, repeats), mh = median(th, repeats);
  double mrf = median(trf, repeats), mrh = median(trh, repeats);
  printf("memory bound: read %.1f MB in %.3f ms = %.2f GB/s -> %.1f Mtokens/s\n", bytes_read / 1e6, mb * 1e3,
         bytes_read / mb / 1e9, T / mb / 1e6);
  printf("%-14s %12s %14s %12s %14s\n", "mode", "fast ms", "fast Mtok/s", "vs bound", "vs reference");
  printf("%-14s %12.3f %14.1f %11.1f%% %13.1fx   (reference %.1f ms, %.2f Mtok/s)\n", "flat", mf * 1e3, T / mf / 1e6,
         100 * mb / mf, mrf / mf, mrf * 1e3, T / mrf / 1e6);
  printf("%-14s %12.3f %14.1f %11.1f%% %13.1fx   (reference %.1f ms, %.2f Mtok/s)\n", "hierarchical", mh * 1e3,
         T / mh / 1e6, 100 * mb / mh, mrh / mh, mrh * 1e3, T / mrh / 1e6);
  printf("model output: inter-node bytes flat %.3g, hierarchical %.3g (%.1f%%); a2a flat %.3f ms, hier %.3f ms\n",
         inter[0], inter[1], 100 * inter[1] / inter[0], a2a[0] * 1e3, a2a[1] * 1e3);
  carl_cost_free(&c);
  carl_placement_free(&pl);
  free(ex);
  free(src);
  free(tb);
  free(tf);
  free(th);
  free(trf);
  free(trh);
  return 0;
}
