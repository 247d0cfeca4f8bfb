/* bench/a2a: the all-to-all of one MoE layer across MPI ranks (the mpi executor), measured, beside
 * the cost model's prediction for the same plan on a topology calibrated in the same run.
 *
 *   scripts/netns_cluster.sh -- build/bench_a2a [--tokens 4096] [--d 256] [--iters 10] [--rounds 5]
 *   mpirun -np 4 build/bench_a2a ...                       (one machine: shared memory only)
 *
 * Ranks = 2 nodes x (size / 2) devices, node-major. Each round calibrates, then measures every
 * router; the table at the end gives per router the medians over the rounds.
 * Calibration (docs/cost-model.md, "Calibrating alpha and beta"):
 *   - small messages: the 8-byte ping-pong of rank 0 with rank 1 (same node) and with the first rank
 *     of node 1, half the round trip, median of the repetitions: the latency of the executor's
 *     count exchanges (ctl_latency_us);
 *   - copies: the exchange the all-to-all makes, every device sending s bytes to each device of the
 *     other node at once (MPI_Alltoallv, nothing inside the node), at s = 64 .. 512 KiB (the
 *     workload's per-pair sizes), median over the iterations of the max over ranks (each
 *     iteration runs these exchanges and then every router once, so that calibration and
 *     measurement meet the same load); a least-squares line t = M alpha + M s / B (M = peers
 *     per device) gives the inter-node latency per message alpha and the bandwidth per device B
 *     under that load; the same inside the nodes (every device to each other device of its node)
 *     for the intra class;
 *   - self copies: a memcpy of 4 MiB (median), the self_GBps of carl_plan_time_mpi.
 * Prediction: carl_plan_time_mpi (count exchanges + copies, both phases) on that calibration; also
 * carl_plan_cost's a2a_s on the single-pair ping-pong calibration (the first version of this
 * benchmark), for comparison. The routers decide on the link figures of test-2x2 (the same
 * decisions in every round). Workload: router logits with a preference for the experts of the
 * token's own node (N(0, 1) + 1 on those), the same tokens for every router; 8 experts, top-2
 * (locmoe top-1). Measured: the median over iterations of one dispatch + combine (max over ranks of
 * each iteration), the executor's count exchanges included. The physical limit: per phase, the
 * busiest node link's max(bytes out, bytes in) at the single-pair bandwidth, for dispatch + combine
 * (no latency, no intra-node time). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "carl/core.h"
#include "carl/exec.h"
#include "carl/plan.h"
#include "carl/route.h"
#include "carl/step.h"

#ifdef CARL_WITH_MPI
#include <mpi.h>

/* Half the round trip of `bytes` between ranks a and b: *best the fastest repetition, the return
 * value the median (what a call in the all-to-all meets on the shared machine). */
static double pingpong(int a, int b, int bytes, int reps, double *best) {
  int r;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  char *buf = calloc((size_t)bytes, 1);
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int rep = 0; rep < reps; rep++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    if (r == a) {
      MPI_Send(buf, bytes, MPI_BYTE, b, 7, MPI_COMM_WORLD);
      MPI_Recv(buf, bytes, MPI_BYTE, b, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else if (r == b) {
      MPI_Recv(buf, bytes, MPI_BYTE, a, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      MPI_Send(buf, bytes, MPI_BYTE, a, 7, MPI_COMM_WORLD);
    }
    t[rep] = (MPI_Wtime() - t0) / 2;
  }
  double m = bench_median(t, reps);
  *best = t[0];
  free(buf), free(t);
  MPI_Bcast(&m, 1, MPI_DOUBLE, a, MPI_COMM_WORLD);
  MPI_Bcast(best, 1, MPI_DOUBLE, a, MPI_COMM_WORLD);
  return m;
}

/* The pattern of the all-to-all's copies: every rank sends `bytes` to each rank of the other node
 * (inter = 1) or to each other rank of its own node (inter = 0) in one MPI_Alltoallv. Median over
 * reps of the max over ranks. */
static double exchange(int dpn, int inter, int bytes, int reps) {
  int r, D;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &D);
  int *sc = calloc((size_t)D, sizeof(int)), *sd = calloc((size_t)D, sizeof(int));
  int peers = 0;
  for (int b = 0; b < D; b++) {
    const int other = b / dpn != r / dpn;
    sc[b] = b != r && other == inter ? bytes : 0;
    sd[b] = peers * bytes;
    peers += sc[b] > 0;
  }
  char *sb = calloc((size_t)peers * (size_t)bytes + 1, 1), *rb = calloc((size_t)peers * (size_t)bytes + 1, 1);
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int rep = 0; rep < reps; rep++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    MPI_Alltoallv(sb, sc, sd, MPI_BYTE, rb, sc, sd, MPI_BYTE, MPI_COMM_WORLD); /* symmetric pattern */
    double dt = MPI_Wtime() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    t[rep] = dt;
  }
  const double m = bench_median(t, reps);
  free(sc), free(sd), free(sb), free(rb), free(t);
  return m;
}

/* The message sizes of the calibrating exchanges: those of the workload's pairs and phases */
static const int SIZES[] = {64 << 10, 128 << 10, 192 << 10, 256 << 10, 512 << 10};
#define NS ((int)(sizeof SIZES / sizeof SIZES[0]))

/* Least-squares line t = c0 + c1 s through the exchange times t[i] at SIZES[i]; with M peers per
 * device, alpha = c0 / M (clamped at 0) and B = M / c1 (bytes/s). */
static void fit_exchange(const double *t, int M, double *alpha, double *B) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (int i = 0; i < NS; i++) {
    const double xx = SIZES[i];
    sx += xx, sy += t[i], sxx += xx * xx, sxy += xx * t[i];
  }
  const double c1 = (NS * sxy - sx * sy) / (NS * sxx - sx * sx), c0 = (sy - c1 * sx) / NS;
  if (!(c1 > 0)) { /* times that do not grow with the size (noise over a fast path): the largest
                      size's rate, no latency */
    *alpha = 0;
    *B = M * (double)SIZES[NS - 1] / t[NS - 1];
    return;
  }
  *alpha = c0 > 0 ? c0 / M : 0;
  *B = M / c1;
}

/* memcpy rate of 4 MiB, median of reps (bytes/s) */
static double memcpy_rate(int reps) {
  const size_t n = 4u << 20;
  char *a = malloc(n), *b = malloc(n);
  memset(a, 1, n), memset(b, 2, n);
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int i = 0; i < reps; i++) {
    double t0 = MPI_Wtime();
    memcpy(b, a, n);
    t[i] = MPI_Wtime() - t0;
    a[i % n] = b[(i * 7) % n]; /* keep the copies */
  }
  double m = bench_median(t, reps);
  MPI_Allreduce(MPI_IN_PLACE, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  free(a), free(b), free(t);
  return (double)n / m;
}

#define NR 6
#define MAX_ROUNDS 64

static int run(int argc, char **argv, carl_exec_t *ex) {
  int64_t T = 4096;
  int d = 256, iters = 10, rounds = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--tokens")) T = atoll(argv[i + 1]);
    else if (!strcmp(argv[i], "--d")) d = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
  }
  const int D = carl_exec_size(ex), r = carl_exec_rank(ex), E = 8, k = 2;
  if (D < 4 || D % 2 || T % D || iters < 1 || rounds < 1 || rounds > MAX_ROUNDS) {
    if (!r) fprintf(stderr, "bench_a2a: needs an even rank count >= 4 (2 nodes), tokens a multiple of it, iters >= 1, "
                    "rounds in 1..%d\n", MAX_ROUNDS);
    return 2;
  }
  const int dpn = D / 2;
  carl_topo_t topo0;
  /* routing and plans on fixed link figures (those of configs/topologies/test-2x2.json: intra
   * 160 GB/s, 3 us; inter 50 GB/s, 10 us), so that every round prices the same decisions */
  if (carl_topo_make(&topo0, 2, dpn, 160, 3, 50, 10) != CARL_OK) {
    fprintf(stderr, "bench_a2a: %s\n", carl_errmsg());
    return 1;
  }
  /* the workload */
  float *z = malloc(sizeof(float) * (size_t)(T * E));
  for (int64_t t = 0; t < T; t++) {
    const int node = (int)(t * D / T) / dpn;
    for (int e = 0; e < E; e++)
      z[t * E + e] = carl_rng_normal(42, CARL_STREAM_WORKLOAD, (uint64_t)(t * E + e)) + ((e * D / E) / dpn == node ? 1.0f : 0.0f);
  }
  const int64_t Tr = T / D;
  float *x = malloc(sizeof(float) * (size_t)(Tr * d)), *y = calloc((size_t)(Tr * d), sizeof(float));
  for (int64_t i = 0; i < Tr * d; i++) x[i] = (float)(i % 97) / 97.0f;
  const char *routers[NR] = {"topk", "lossfree", "grouplimited", "c2r", "locmoe", "carl"};
  carl_router_t *rt[NR] = {0};
  carl_step_t *st_[NR] = {0};
  int ok[NR] = {0};
  float *xc[NR] = {0};
  int32_t *experts[NR] = {0};
  float *w[NR] = {0}, *dz[NR] = {0};
  for (int q = 0; q < NR; q++) {
    /* topk with its aux loss (decisions are plain top-k), c2r while profiling (routes as top-k
     * without a collaboration table), locmoe top-1 (its only k) */
    const char *keys[] = {"k", "aux"}, *keys_c2r[] = {"k", "profile"}, *keys_l[] = {"k"};
    const double vals[] = {k, 0.01}, vals_c2r[] = {k, 1}, vals_l[] = {1};
    const int is_topk = !strcmp(routers[q], "topk"), is_c2r = !strcmp(routers[q], "c2r"), is_l = !strcmp(routers[q], "locmoe");
    carl_status st = carl_router_create(routers[q], is_l ? 1 : 2 - !(is_topk || is_c2r),
                                        is_c2r ? keys_c2r : is_l ? keys_l : keys, is_c2r ? vals_c2r : is_l ? vals_l : vals, &rt[q]);
    const int kq = is_l ? 1 : k;
    if (st == CARL_OK) {
      carl_step_opts_t o;
      carl_step_opts_default(&o);
      o.topo = &topo0;
      o.layers = 1;
      o.E = E;
      o.k = kq;
      o.routers = &rt[q];
      o.exec = ex;
      o.token_bytes = sizeof(float) * (size_t)d;
      st = carl_step_create(&o, &st_[q]);
    }
    experts[q] = malloc(sizeof(int32_t) * (size_t)(T * kq));
    w[q] = malloc(sizeof(float) * (size_t)(T * kq)), dz[q] = malloc(sizeof(float) * (size_t)(T * E));
    carl_route_in_t in = {.T = T, .E = E, .logits = z, .seed = 1};
    carl_route_out_t out = {.experts = experts[q], .weights = w[q], .dlogits = dz[q]};
    if (st == CARL_OK) st = carl_step_route(st_[q], 0, &in, &out);
    if (st != CARL_OK) {
      if (!r) printf("%-13s skipped: %s\n", routers[q], carl_errmsg());
      continue;
    }
    const carl_plan_t *p = carl_step_plan(st_[q], 0);
    xc[q] = malloc(sizeof(float) * (size_t)((p->n_send + p->n_fwd) * d + 1));
    ok[q] = 1;
  }
  /* per round and router: measured, predicted (carl_plan_time_mpi on the loaded calibration),
   * the first version's prediction (carl_plan_cost on the single-pair ping-pong) */
  static double meas[NR][MAX_ROUNDS], pred[NR][MAX_ROUNDS], pred0[NR][MAX_ROUNDS], cnt[NR][MAX_ROUNDS];
  double busiest[NR] = {0}, inter_mb[NR] = {0}, B1_med[MAX_ROUNDS];
  int64_t copies[NR] = {0};
  double *tx = malloc(sizeof(double) * (size_t)(NS * iters)), *tin = malloc(sizeof(double) * (size_t)(NS * iters));
  double *tr = malloc(sizeof(double) * (size_t)(NR * iters));
  for (int round = 0; round < rounds; round++) {
    double b_in, b_x, t_in1, t_x1;
    const double a_in = pingpong(0, 1, 8, 50, &b_in), a_x = pingpong(0, dpn, 8, 50, &b_x);
    pingpong(0, 1, 1 << 20, 10, &t_in1), pingpong(0, dpn, 1 << 20, 10, &t_x1);
    /* single-pair calibration of the first version: best repetition, a node's link shared by dpn */
    const double B_in1 = (1 << 20) / (t_in1 > 2 * b_in ? t_in1 - b_in : t_in1) / 1e9,
                 B_x1 = (1 << 20) / (t_x1 > 2 * b_x ? t_x1 - b_x : t_x1) / 1e9;
    B1_med[round] = B_x1;
    const double self = memcpy_rate(9);
    /* iterations interleave the calibrating exchanges and the routers' all-to-alls, so that both
     * meet the same load of the shared machine */
    for (int i = 0; i < iters; i++) {
      for (int j = 0; j < NS; j++) tx[j * iters + i] = exchange(dpn, 1, SIZES[j], 1);
      for (int j = 0; j < NS; j++) tin[j * iters + i] = exchange(dpn, 0, SIZES[j], 1);
      for (int q = 0; q < NR; q++) {
        if (!ok[q]) continue;
        const carl_plan_t *p = carl_step_plan(st_[q], 0);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        carl_status st = carl_exec_dispatch(ex, p, x, d, xc[q]);
        if (st == CARL_OK) st = carl_exec_combine(ex, p, xc[q], d, y);
        double dt = MPI_Wtime() - t0;
        if (st != CARL_OK) {
          fprintf(stderr, "bench_a2a: %s\n", carl_errmsg());
          return 1;
        }
        MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        tr[q * iters + i] = dt;
      }
    }
    double mx[NS], min_[NS];
    for (int j = 0; j < NS; j++) mx[j] = bench_median(tx + j * iters, iters), min_[j] = bench_median(tin + j * iters, iters);
    if (round == 0 && !r)
      for (int j = 0; j < NS; j++)
        printf("    exchange %4d KiB to each peer: inter (%d peers) %9.1f us, intra (%d peer%s) %7.1f us\n", SIZES[j] >> 10,
               dpn, mx[j] * 1e6, dpn - 1, dpn > 2 ? "s" : "", min_[j] * 1e6);
    double al_x, B_x, al_in, B_in;
    fit_exchange(mx, dpn, &al_x, &B_x);
    fit_exchange(min_, dpn - 1, &al_in, &B_in);
    carl_topo_t t1, tl;
    if (carl_topo_make(&t1, 2, dpn, B_in1, b_in * 1e6, B_x1 / dpn, b_x * 1e6) != CARL_OK ||
        carl_topo_make(&tl, 2, dpn, B_in / 1e9, al_in * 1e6, B_x / 1e9, al_x * 1e6) != CARL_OK) {
      fprintf(stderr, "bench_a2a: %s\n", carl_errmsg());
      return 1;
    }
    carl_mpi_cost_opts_t mo = {{0}, self / 1e9};
    mo.ctl_latency_us[CARL_LINK_INTRA] = a_in * 1e6;
    mo.ctl_latency_us[CARL_LINK_INTER] = a_x * 1e6;
    if (!r)
      printf("round %d: small messages intra %.1f us, inter %.1f us (median); copies: intra %.1f us + bytes / %.3f GB/s, "
             "inter %.1f us + bytes / %.4f GB/s per device (exchange fit); self %.2f GB/s; single pair inter %.3f GB/s\n",
             round + 1, a_in * 1e6, a_x * 1e6, al_in * 1e6, B_in / 1e9, al_x * 1e6, B_x / 1e9, self / 1e9, B_x1);
    for (int q = 0; q < NR; q++) {
      if (!ok[q]) continue;
      const carl_plan_t *p = carl_step_plan(st_[q], 0);
      meas[q][round] = bench_median(tr + q * iters, iters);
      carl_mpi_time_t mt;
      carl_cost_t c1;
      if (carl_plan_time_mpi(&tl, p, sizeof(float) * (size_t)d, &mo, &mt) != CARL_OK || carl_cost_init(&c1, &t1) != CARL_OK ||
          carl_plan_cost(&t1, p, sizeof(float) * (size_t)d, &c1) != CARL_OK) {
        fprintf(stderr, "bench_a2a: %s\n", carl_errmsg());
        return 1;
      }
      pred[q][round] = mt.total_s;
      cnt[q][round] = mt.counts_s;
      pred0[q][round] = c1.a2a_s;
      copies[q] = p->copies;
      inter_mb[q] = c1.bytes[CARL_LINK_INTER] / 1e6;
      /* physical limit: each node's one inter-node link carries, per phase, max(bytes out of the
       * node, bytes into it); combine is dispatch transposed */
      double bz = 0;
      for (int n = 0; n < 2; n++) {
        double out_b = 0, in_b = 0;
        for (int a = 0; a < D; a++)
          for (int b = 0; b < D; b++) {
            if ((a / dpn == n) && (b / dpn != n)) out_b += c1.dispatch[a * D + b];
            if ((b / dpn == n) && (a / dpn != n)) in_b += c1.dispatch[a * D + b];
          }
        const double m = out_b > in_b ? out_b : in_b;
        if (m > bz) bz = m;
      }
      busiest[q] = 2 * bz;
      carl_cost_free(&c1);
      if (!r)
        printf("  %-13s measured %8.3f ms  predicted %8.3f ms (counts %.3f)  pred/meas %.2f  first model %.2f\n", routers[q],
               meas[q][round] * 1e3, pred[q][round] * 1e3, cnt[q][round] * 1e3, pred[q][round] / meas[q][round],
               pred0[q][round] / meas[q][round]);
    }
  }
  const double B1 = bench_median(B1_med, rounds);
  if (!r) {
    printf("\nmedians over %d rounds (each round: calibration, then every router, median of %d iterations)\n", rounds, iters);
    printf("%-13s %8s %9s %12s %13s %10s %10s %11s %10s\n", "router", "copies", "inter MB", "measured ms", "predicted ms",
           "pred/meas", "range", "first/meas", "limit ms");
  }
  for (int q = 0; q < NR && !r; q++) {
    if (!ok[q]) continue;
    double ratio[MAX_ROUNDS], r0[MAX_ROUNDS];
    for (int i = 0; i < rounds; i++) ratio[i] = pred[q][i] / meas[q][i], r0[i] = pred0[q][i] / meas[q][i];
    const double mr = bench_median(ratio, rounds), lo = ratio[0], hi = ratio[rounds - 1], m0 = bench_median(r0, rounds);
    printf("%-13s %8lld %9.3f %12.3f %13.3f %10.2f %5.2f-%4.2f %11.2f %10.3f\n", routers[q], (long long)copies[q], inter_mb[q],
           bench_median(meas[q], rounds) * 1e3, bench_median(pred[q], rounds) * 1e3, mr, lo, hi, m0,
           busiest[q] / (B1 * 1e9) * 1e3);
  }
  for (int q = 0; q < NR; q++) {
    free(xc[q]), free(experts[q]), free(w[q]), free(dz[q]);
    carl_step_free(st_[q]);
    carl_router_free(rt[q]);
  }
  free(tx), free(tin), free(tr), free(z), free(x), free(y);
  return 0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  carl_exec_t *ex = NULL;
  int rc = 1;
  if (carl_exec_mpi_create(&ex) == CARL_OK) rc = run(argc, argv, ex);
  else fprintf(stderr, "bench_a2a: %s\n", carl_errmsg());
  carl_exec_free(ex);
  MPI_Finalize();
  return rc;
}

#else
int main(void) {
  fprintf(stderr, "bench_a2a: this build has no MPI\n");
  return 1;
}
#endif
