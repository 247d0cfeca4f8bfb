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
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "carl/plan.h"
#include "plan/plan_internal.h"
#include "bench_util.h"

/* CPU seconds of the whole process (all threads): less disturbed than wall time on a shared machine. */
/* Streaming read of the assignment bytes: the least any plan must do. The read is repeated
 * BOUND_PASSES times and the time divided, so that the bound is measured over a window as long
 * as the plan's own (on a shared machine a 2 ms read fits in one scheduler slice, a 20 ms run
 * does not). 37.7 MB is more than the last-level cache, so every pass reads memory. */
#define BOUND_PASSES 8
static volatile int64_t bench_sink;
static double read_bound_s(const int32_t *ex, const int32_t *src, int64_t nex, int64_t T) {
  double t0 = carl_now();
  int64_t s = 0;
#pragma omp parallel reduction(+ : s)
  {
    int id = 0, n = 1;
#ifdef _OPENMP
    id = omp_get_thread_num();
    n = omp_get_num_threads();
#endif
    /* each thread streams its share of both arrays, one parallel region for all passes */
    const int64_t e0 = nex * id / n, e1 = nex * (id + 1) / n, s0 = T * id / n, s1 = T * (id + 1) / n;
    for (int pass = 0; pass < BOUND_PASSES; pass++) {
      for (int64_t i = e0; i < e1; i++) s += ex[i];
      for (int64_t i = s0; i < s1; i++) s += src[i];
    }
  }
  double dt = (carl_now() - t0) / BOUND_PASSES;
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
  int max_threads = 1;
#ifdef _OPENMP
  max_threads = omp_get_max_threads();
#endif
  const double bytes_read = (double)T * (K + 1) * sizeof(int32_t);
  printf("bench/plan: T=%lld k=%d E=%d devices=%d (%s), token_bytes=%zu, repeats=%d (medians)\n", (long long)T, K, E,
         topo.devices, topo.name, token_bytes, repeats);
  printf("bound = one parallel streaming read of the %.1f MB of assignments (int32 [T,k] + src [T])\n",
         bytes_read / 1e6);
  printf("%-7s %-5s %10s %10s %9s %11s %9s %9s %9s %12s\n", "threads", "mode", "bound ms", "bound GB/s", "fast ms",
         "fast Mtok/s", "vs bound", "ref ms", "fast/ref", "cpu vs bound");

  double *tb = malloc((size_t)repeats * sizeof *tb), *tf = malloc((size_t)repeats * sizeof *tf);
  double *tr = malloc((size_t)repeats * sizeof *tr);
  double *cb = malloc((size_t)repeats * sizeof *cb), *cf = malloc((size_t)repeats * sizeof *cf);
  carl_cost_t c;
  if (carl_cost_init(&c, &topo) != CARL_OK) return 1;
  double inter[2] = {0, 0}, a2a[2] = {0, 0};
  read_bound_s(ex, src, T * K, T); /* touch the pages once */
  for (int threads = 1; threads <= max_threads; threads = threads < max_threads ? max_threads : threads + 1) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    for (int mode = 0; mode < 2; mode++) {
      for (int r = 0; r < repeats; r++) {
        /* bound, fast and reference back to back, so that they share the machine's state */
        double c0 = bench_cpu_seconds();
        tb[r] = read_bound_s(ex, src, T * K, T);
        cb[r] = (bench_cpu_seconds() - c0) / BOUND_PASSES;
        carl_cost_reset(&c);
        c0 = bench_cpu_seconds();
        double t0 = carl_now();
        if (carl_plan_cost_decision(&topo, &pl, ex, src, T, K, token_bytes, (carl_plan_mode)mode, &c) != CARL_OK) {
          fprintf(stderr, "bench_plan: %s\n", carl_errmsg());
          return 1;
        }
        tf[r] = carl_now() - t0;
        cf[r] = bench_cpu_seconds() - c0;
        inter[mode] = c.bytes[CARL_LINK_INTER];
        a2a[mode] = c.a2a_s;
        carl_cost_reset(&c);
        t0 = carl_now();
        if (carl__plan_cost_ref(&topo, &pl, ex, src, T, K, token_bytes, (carl_plan_mode)mode, &c) != CARL_OK) {
          fprintf(stderr, "bench_plan: %s\n", carl_errmsg());
          return 1;
        }
        tr[r] = carl_now() - t0;
        if (c.bytes[CARL_LINK_INTER] != inter[mode] || c.copies <= 0) {
          fprintf(stderr, "bench_plan: fast and reference disagree\n");
          return 1;
        }
      }
      double mb = bench_median(tb, repeats), mf = bench_median(tf, repeats), mr = bench_median(tr, repeats);
      double mcb = bench_median(cb, repeats), mcf = bench_median(cf, repeats);
      printf("%-7d %-5s %10.3f %10.2f %9.3f %11.1f %8.1f%% %9.1f %8.1fx %11.1f%%\n", threads, mode ? "hier" : "flat",
             mb * 1e3, bytes_read / mb / 1e9, mf * 1e3, T / mf / 1e6, 100 * mb / mf, mr * 1e3, mr / mf,
             100 * mcb / mcf);
    }
  }
  printf("(the reference is the plain one-thread implementation, src/plan/plan_ref.c)\n");
  printf("model output: inter-node bytes flat %.4g, hierarchical %.4g (%.1f%%); a2a flat %.3f ms, hier %.3f ms\n",
         inter[0], inter[1], 100 * inter[1] / inter[0], a2a[0] * 1e3, a2a[1] * 1e3);
  carl_cost_free(&c);
  carl_placement_free(&pl);
  free(ex);
  free(src);
  free(tb);
  free(tf);
  free(tr);
  free(cb);
  free(cf);
  return 0;
}
