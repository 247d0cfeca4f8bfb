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
 * The operating point (--op): E = 256, k = 8 (sigmoid scores), 64 devices (8 x 8), T = 262,144 tokens
 * per step (4,096 per device, the DeepSeek-V3-like point of configs/experiments/op-*.json), one MoE
 * layer with the step time on (d 7168, f 2048, shared f 2048, forward + backward, pipelined in 2
 * chunks), hierarchical plan, at T/4, T/2 and T: tokens x layers per second (per CPU-s and per
 * wall-s), the same for the plain topk router, and the fraction of the memory-read bound of the
 * logits: one read of the T x E float32 logits at the memcpy bandwidth measured in the same run
 * (read + write bytes over time). Step time = (6-step run - 2-step run) / 4.
 *
 * usage: bench_sim [router] [reps]
 *        bench_sim --op [router] [reps]
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "carl/sim.h"
#include "bench_util.h"

static int op_mode = 0;

static double time_run(const char *router, int E, int64_t T, int steps, int reps, double *wall) {
  char json[2048];
  if (op_mode)
    snprintf(json, sizeof json,
             "{\"name\":\"bench-op\",\"steps\":%d,\"tokens\":%lld,\"layers\":1,\"d\":64,\"experts\":%d,"
             "\"token_bytes\":14336,\"expert_bytes\":616562688,\"plan\":\"hier\","
             "\"step_time\":{\"hidden\":7168,\"ffn\":2048,\"shared_ffn\":2048,\"backward\":true,\"overlap\":\"pipelined\","
             "\"chunks\":2},\"routers\":[{\"name\":\"%s\",\"opts\":{\"k\":8,\"score\":1%s}}],"
             "\"topologies\":[{\"name\":\"8x8\",\"nodes\":8,\"devices_per_node\":8,"
             "\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3.4},\"inter\":{\"GBps\":50,\"latency_us\":9.6}},"
             "\"flops\":{\"device\":\"H800 SXM5\",\"peak_TFLOPS\":989.4,\"efficiency\":0.6}}],"
             "\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
             steps, (long long)T, E, router, strcmp(router, "carl") ? "" : ",\"W\":1");
  else
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
  const int s1 = 2, s2 = op_mode ? 6 : 10;
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

/* The operating point: T/4, T/2, T of 262,144 tokens per step, E = 256, k = 8, 64 devices. */
static int op_point(const char *router, int reps) {
  const int E = 256;
  const int64_t Ts[3] = {65536, 131072, 262144};
  double bw = memcpy_bw();
  printf("bench_sim --op: router %s vs peer topk, 1 thread, 8x8 topology (D = 64), E = %d, k = 8, sigmoid, step time on, "
         "hierarchical plan, step = (6-step run - 2-step run)/4, medians of %d reps, CPU time (wall beside)\n", router, E,
         reps);
  printf("memcpy bandwidth %.2f GB/s (read + write)\n\n", bw / 1e9);
  printf("| T | %s tok*layer per CPU-s | (per wall-s) | topk (peer) per CPU-s | %s/peer | logits read bound tok/s | "
         "%s/bound | us per token |\n", router, router, router);
  printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  double ts[3];
  for (int i = 0; i < 3; i++) {
    double wall, wallp;
    ts[i] = time_step(router, E, Ts[i], reps, &wall);
    double tp = time_step("topk", E, Ts[i], reps, &wallp);
    double lim = 4.0 * Ts[i] * E / bw; /* one read of the float32 logits */
    printf("| %lld | %.4g | %.4g | %.4g | %.2f | %.4g | %.4f | %.3f |\n", (long long)Ts[i], Ts[i] / ts[i], Ts[i] / wall,
           Ts[i] / tp, tp / ts[i], Ts[i] / lim, lim / ts[i], ts[i] / Ts[i] * 1e6);
    fflush(stdout);
  }
  printf("\nlinearity: time(T) / time(T/2) = %.3f, time(T/2) / time(T/4) = %.3f (2 when linear); per-token cost at T "
         "/ at T/4 = %.3f\n", ts[2] / ts[1], ts[1] / ts[0], (ts[2] / Ts[2]) / (ts[0] / Ts[0]));
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--op")) {
    op_mode = 1;
    argc--, argv++;
  }
  const char *router = argc > 1 ? argv[1] : "carl";
  int reps = argc > 2 ? atoi(argv[2]) : 5;
  if (reps < 1 || reps > 64) reps = 5;
  openblas_set_num_threads(1);
  omp_set_num_threads(1);
  if (op_mode) return op_point(router, reps);
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
