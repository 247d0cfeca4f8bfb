/* bench/sim: simulator throughput in tokens x layers x steps per second.
 *
 * One grid cell (the carl router, or another given as argv[1]) on 8 nodes x 8 devices (D = 64),
 * d = 64, for E = 64 and 256 and T = 2048, 4096, 8192, 16384 tokens per step. The time of a step
 * is (time of a 10-step run - time of a 2-step run) / 8, so that set-up (workload
 * tables, router creation) is not counted; each run repeats `reps` times (default 5) and the
 * medians are used. A least-squares fit time/step = a + b T over
 * the four sizes shows whether the cost grows linearly with T (R^2, and the per-token cost b
 * against the mean per-token cost).
 *
 * carl runs with W = 1 (Sinkhorn warm start on the first step only), so that the timed steps are
 * the steady state (the warm start is a separate, dearer phase of the first W steps).
 * Beside it, measured in the same run:
 *   - peer: the same cell with the plain `topk` router (the cheapest router: what the simulator's
 *     own machinery costs without a topology-aware router);
 *   - limit: the gate's two GEMMs (forward and weight gradient, 4 T d E flops) at the sgemm rate
 *     measured here, plus one read of logits and one write of their gradient (8 T E bytes) at the
 *     memcpy bandwidth measured here: a step cannot be faster than that.
 * Single thread (OpenMP and BLAS set to 1: the simulator runs each cell on one thread, cells in
 * parallel). Times are process CPU time (CLOCK_PROCESS_CPUTIME_ID), which a shared, loaded machine
 * disturbs far less than wall time; wall-time medians are printed beside them.
 *
 * usage: bench_sim [router] [reps]
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "carl/sim.h"
#include "bench_util.h"

static double time_run(const char *router, int E, int64_t T, int steps, int reps, double *wall) {
  char json[2048];
  snprintf(json, sizeof json,
           "{\"name\":\"bench\",\"steps\":%d,\"tokens\":%lld,\"layers\":1,\"d\":64,\"experts\":%d,"
           "\"routers\":[{\"name\":\"%s\",\"opts\":{\"k\":2%s}}],"
           "\"topologies\":[{\"name\":\"8x8\",\"nodes\":8,\"devices_per_node\":8,"
           "\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3.4},\"inter\":{\"GBps\":50,\"latency_us\":9.6}}}],"
           "\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
           steps, (long long)T, E, router, strcmp(router, "carl") ? "" : ",\"W\":1");
  carl_sim_config_t cfg;
  if (carl_sim_config_parse(json, strlen(json), NULL, &cfg) != CARL_OK) {
    fprintf(stderr, "bench_sim: %s\n", carl_errmsg());
    exit(1);
  }
  double t[64], w[64];
  for (int r = 0; r < reps; r++) {
    carl_sim_run_t run;
    double c0 = bench_cpu_seconds(), t0 = carl_now();
    if (carl_sim_run_cell(&cfg, 0, 0, 0, 0, &run) != CARL_OK) {
      fprintf(stderr, "bench_sim: %s\n", carl_errmsg());
      exit(1);
    }
    t[r] = bench_cpu_seconds() - c0;
    w[r] = carl_now() - t0;
    free(run.rows);
  }
  carl_sim_config_free(&cfg);
  *wall = bench_median(w, reps);
  return bench_median(t, reps);
}

/* seconds per simulated step: difference of two run lengths */
static double time_step(const char *router, int E, int64_t T, int reps, double *wall) {
  const int s1 = 2, s2 = 10;
  double w1, w2;
  double c = (time_run(router, E, T, s2, reps, &w2) - time_run(router, E, T, s1, reps, &w1)) / (s2 - s1);
  *wall = (w2 - w1) / (s2 - s1);
  return c;
}

static double sgemm_rate(int64_t T, int d, int E) {
  float *x = calloc((size_t)T * d, 4), *w = calloc((size_t)d * E, 4), *z = calloc((size_t)T * E, 4);
  double best = 0;
  for (int r = 0; r < 5; r++) {
    double t0 = carl_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, E, d, 1.0f, x, d, w, E, 0.0f, z, E);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, E, (int)T, 1.0f, x, d, z, E, 1.0f, w, E);
    double f = 4.0 * T * d * E / (carl_now() - t0);
    if (f > best) best = f;
  }
  free(x); free(w); free(z);
  return best;
}

static double memcpy_bw(void) {
  size_t n = 64u << 20;
  char *a = malloc(n), *b = malloc(n);
  memset(a, 1, n);
  memset(b, 2, n);
  double best = 0;
  for (int r = 0; r < 5; r++) {
    double t0 = carl_now();
    memcpy(b, a, n);
    double bw = 2.0 * n / (carl_now() - t0); /* read + write */
    if (bw > best) best = bw;
  }
  free(a); free(b);
  return best;
}

int main(int argc, char **argv) {
  const char *router = argc > 1 ? argv[1] : "carl";
  int reps = argc > 2 ? atoi(argv[2]) : 5;
  if (reps < 1 || reps > 64) reps = 5;
  openblas_set_num_threads(1);
  omp_set_num_threads(1);
  const int64_t Ts[4] = {2048, 4096, 8192, 16384};
  const int Es[2] = {64, 256};
  double bw = memcpy_bw();
  printf("bench_sim: router %s vs peer topk, 1 thread, 8x8 topology (D = 64), d = 64, k = 2, step time = (10-step run "
         "- 2-step run)/8, medians of %d reps, CPU time (wall time beside)\n", router, reps);
  printf("memcpy bandwidth %.2f GB/s (read + write)\n\n", bw / 1e9);
  printf("| E | T | %s tok*layer*step per CPU-s | (per wall-s) | topk (peer) per CPU-s | %s/peer | limit | %s/limit |\n",
         router, router, router);
  printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int ei = 0; ei < 2; ei++) {
    int E = Es[ei];
    double ts[4];
    for (int i = 0; i < 4; i++) {
      double wall, wallp;
      ts[i] = time_step(router, E, Ts[i], reps, &wall);
      double tp = time_step("topk", E, Ts[i], reps, &wallp);
      double flops = sgemm_rate(Ts[i], 64, E);
      double lim = 4.0 * Ts[i] * 64 * E / flops + 8.0 * Ts[i] * E / bw;
      printf("| %d | %lld | %.4g | %.4g | %.4g | %.2f | %.4g | %.3f |\n", E, (long long)Ts[i], Ts[i] / ts[i], Ts[i] / wall,
             Ts[i] / tp, tp / ts[i], Ts[i] / lim, lim / ts[i]);
    }
    /* least squares t = a + b T */
    double mx = 0, my = 0, sxx = 0, sxy = 0, syy = 0;
    for (int i = 0; i < 4; i++) mx += Ts[i] / 4.0, my += ts[i] / 4.0;
    for (int i = 0; i < 4; i++) {
      sxx += (Ts[i] - mx) * (Ts[i] - mx);
      sxy += (Ts[i] - mx) * (ts[i] - my);
      syy += (ts[i] - my) * (ts[i] - my);
    }
    double b = sxy / sxx, a = my - b * mx, r2 = sxy * sxy / (sxx * syy);
    printf("\nE = %d: fit time/step = %.3g ms + %.4g us x T (R^2 = %.5f); per-token cost at T = 16384: %.4g us, "
           "fitted slope / that = %.3f\n\n",
           E, a * 1e3, b * 1e6, r2, ts[3] / Ts[3] * 1e6, b / (ts[3] / Ts[3]));
  }
  return 0;
}
