/* bench/a2a: the all-to-all of one MoE layer across MPI ranks (the mpi executor), measured, beside
 * the cost model's prediction for the same plan on a topology calibrated in the same run.
 *
 *   scripts/netns_cluster.sh -- build/bench_a2a [--tokens 4096] [--d 256] [--iters 20]
 *   mpirun -np 4 build/bench_a2a ...                       (one machine: shared memory only)
 *
 * Ranks = 2 nodes x (size / 2) devices, node-major. Calibration: a ping-pong of rank 0 with rank 1
 * (same node) and with the first rank of node 1, at 8 bytes (latency alpha = half the round
 * trip) and 1 MiB (bandwidth = 1 MiB / (half round trip - alpha)); the cost model then prices
 * each router's plan (carl_plan_cost: dispatch + combine, alpha per message, bytes / B per link
 * class, max over devices). The workload: router logits with a preference for the experts of the
 * token's own node (N(0, 1) + 1 on those), the same tokens for every router; 8 experts, top-2.
 * Measured: the median over iterations of one dispatch + combine (max over ranks of each
 * iteration), including the executor's count exchange (two MPI_Alltoall the model does not price).
 * The physical limit: per phase, the busiest node link's max(bytes out, bytes in) at the measured
 * inter-node bandwidth, for dispatch + combine (no latency, no intra-node time). */
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

static double pingpong(int a, int b, int bytes, int reps) {
  int r;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  char *buf = calloc((size_t)bytes, 1);
  double best = 1e30;
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
    double dt = (MPI_Wtime() - t0) / 2;
    if (dt < best) best = dt;
  }
  free(buf);
  MPI_Bcast(&best, 1, MPI_DOUBLE, a, MPI_COMM_WORLD);
  return best; /* the fastest repetition: the path's own time, least disturbed by other load */
}

/* Loaded ping-pong: every rank i < dpn exchanges `bytes` with rank i + dpn at the same time, both
 * directions at once (MPI_Sendrecv), as the all-to-all loads the node link: every device of a node
 * sends to the other node together. The median over reps of the max over ranks: the time a
 * message of that size takes while its node's other devices send too (one way, one message). */
static double loaded(int dpn, int bytes, int reps) {
  int r, D;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &D);
  char *sb = calloc((size_t)bytes, 1), *rb = calloc((size_t)bytes, 1);
  double *t = malloc(sizeof(double) * (size_t)reps);
  const int peer = r < dpn ? r + dpn : r >= dpn && r < 2 * dpn ? r - dpn : -1;
  for (int rep = 0; rep < reps; rep++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    if (peer >= 0) MPI_Sendrecv(sb, bytes, MPI_BYTE, peer, 9, rb, bytes, MPI_BYTE, peer, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    double dt = MPI_Wtime() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    t[rep] = dt;
  }
  const double m = bench_median(t, reps);
  free(sb), free(rb), free(t);
  return m;
}

/* The executor's count exchange: one MPI_Alltoall of one int per peer over every rank (median of
 * reps, max over ranks). */
static double count_exchange(int reps) {
  int D;
  MPI_Comm_size(MPI_COMM_WORLD, &D);
  int *a = calloc((size_t)D, sizeof(int)), *b = calloc((size_t)D, sizeof(int));
  double *t = malloc(sizeof(double) * (size_t)reps);
  for (int rep = 0; rep < reps; rep++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    MPI_Alltoall(a, 1, MPI_INT, b, 1, MPI_INT, MPI_COMM_WORLD);
    double dt = MPI_Wtime() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    t[rep] = dt;
  }
  const double m = bench_median(t, reps);
  free(a), free(b), free(t);
  return m;
}

static int run(int argc, char **argv, carl_exec_t *ex) {
  int64_t T = 4096;
  int d = 256, iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--tokens")) T = atoll(argv[i + 1]);
    else if (!strcmp(argv[i], "--d")) d = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
  }
  const int D = carl_exec_size(ex), r = carl_exec_rank(ex), E = 8, k = 2;
  if (D < 4 || D % 2 || T % D || iters < 1) {
    if (!r) fprintf(stderr, "bench_a2a: needs an even rank count >= 4 (2 nodes) and tokens a multiple of it\n");
    return 2;
  }
  const int dpn = D / 2;
  /* calibration */
  const double a_in = pingpong(0, 1, 8, 50), a_x = pingpong(0, dpn, 8, 50);
  const double t_in = pingpong(0, 1, 1 << 20, 10), t_x = pingpong(0, dpn, 1 << 20, 10);
  /* (a noisy 8-byte time above the 1 MiB one: the bandwidth from the 1 MiB time alone) */
  const double B_in = (1 << 20) / (t_in > 2 * a_in ? t_in - a_in : t_in) / 1e9,
               B_x = (1 << 20) / (t_x > 2 * a_x ? t_x - a_x : t_x) / 1e9;
  carl_topo_t topo;
  /* a node's ranks share its one inter-node link: each device gets B_x / dpn of it */
  if (carl_topo_make(&topo, 2, dpn, B_in, a_in * 1e6, B_x / dpn, a_x * 1e6) != CARL_OK) {
    fprintf(stderr, "bench_a2a: %s\n", carl_errmsg());
    return 1;
  }
  if (!r)
    printf("calibrated: intra %.2f us, %.3f GB/s; inter %.2f us, %.3f GB/s (ping-pong, best of reps); the model "
           "gives each device %.3f GB/s of its node's link\n", a_in * 1e6, B_in, a_x * 1e6, B_x, B_x / dpn);
  /* second calibration, under load and at the message sizes of the all-to-all (tens to hundreds
   * of KiB per pair and phase): least-squares line t = alpha + bytes / B through the loaded
   * exchange at 4 KiB .. 512 KiB; and the count exchange, measured */
  const int sizes[] = {4 << 10, 32 << 10, 128 << 10, 256 << 10, 512 << 10};
  const int ns = (int)(sizeof sizes / sizeof sizes[0]);
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (int i = 0; i < ns; i++) {
    const double tt = loaded(dpn, sizes[i], 9), xx = sizes[i];
    sx += xx, sy += tt, sxx += xx * xx, sxy += xx * tt;
    if (!r) printf("  loaded exchange %4d KiB: %9.1f us\n", sizes[i] >> 10, tt * 1e6);
  }
  const double slope = (ns * sxy - sx * sy) / (ns * sxx - sx * sx), a_l = (sy - slope * sx) / ns;
  const double B_l = 1 / slope / 1e9, t_cnt = count_exchange(iters * 5 > 50 ? iters * 5 : 50);
  carl_topo_t topo_l;
  if (carl_topo_make(&topo_l, 2, dpn, B_in, a_in * 1e6, B_l, (a_l > 0 ? a_l : 0) * 1e6) != CARL_OK) {
    fprintf(stderr, "bench_a2a: %s\n", carl_errmsg());
    return 1;
  }
  if (!r)
    printf("loaded fit: inter alpha %.2f us, %.4f GB/s per device (every device of a node sending); count exchange "
           "(MPI_Alltoall, 1 int per peer) %.1f us, the executor makes 2 per dispatch + combine (flat)\n",
           a_l * 1e6, B_l, t_cnt * 1e6);
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
  const char *routers[] = {"topk", "lossfree", "grouplimited", "c2r", "locmoe", "carl"};
  if (!r) printf("%-13s %8s %12s %12s %12s %9s %12s %9s %9s %9s\n", "router", "copies", "inter MB", "measured ms", "model ms",
                 "model/meas", "limit ms", "+cnt/meas", "load/meas", "l+c/meas");
  double *it = malloc(sizeof(double) * (size_t)iters);
  for (size_t q = 0; q < sizeof routers / sizeof routers[0]; q++) {
    /* topk with its aux loss (decisions are plain top-k), c2r while profiling (routes as top-k
     * without a collaboration table), locmoe top-1 (its only k) */
    const char *keys[] = {"k", "aux"}, *keys_c2r[] = {"k", "profile"}, *keys_l[] = {"k"};
    const double vals[] = {k, 0.01}, vals_c2r[] = {k, 1}, vals_l[] = {1};
    carl_router_t *rt = NULL;
    const int is_topk = !strcmp(routers[q], "topk"), is_c2r = !strcmp(routers[q], "c2r"), is_l = !strcmp(routers[q], "locmoe");
    carl_status st = carl_router_create(routers[q], is_l ? 1 : 2 - !(is_topk || is_c2r),
                                        is_c2r ? keys_c2r : is_l ? keys_l : keys, is_c2r ? vals_c2r : is_l ? vals_l : vals, &rt);
    carl_step_t *s = NULL;
    const int kq = is_l ? 1 : k;
    if (st == CARL_OK) {
      carl_step_opts_t o;
      carl_step_opts_default(&o);
      o.topo = &topo;
      o.layers = 1;
      o.E = E;
      o.k = kq;
      o.routers = &rt;
      o.exec = ex;
      o.token_bytes = sizeof(float) * (size_t)d;
      st = carl_step_create(&o, &s);
    }
    int32_t *experts = malloc(sizeof(int32_t) * (size_t)(T * kq));
    float *w = malloc(sizeof(float) * (size_t)(T * kq)), *dz = malloc(sizeof(float) * (size_t)(T * E));
    carl_route_in_t in = {.T = T, .E = E, .logits = z, .seed = 1};
    carl_route_out_t out = {.experts = experts, .weights = w, .dlogits = dz};
    if (st == CARL_OK) st = carl_step_route(s, 0, &in, &out);
    if (st != CARL_OK) {
      if (!r) printf("%-13s skipped: %s\n", routers[q], carl_errmsg());
    } else {
      const carl_plan_t *p = carl_step_plan(s, 0);
      const carl_cost_t *c = carl_step_cost(s, 0);
      float *xc = malloc(sizeof(float) * (size_t)((p->n_send + p->n_fwd) * d + 1));
      for (int i = 0; i < iters && st == CARL_OK; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        st = carl_exec_dispatch(ex, p, x, d, xc);
        if (st == CARL_OK) st = carl_exec_combine(ex, p, xc, d, y);
        double dt = MPI_Wtime() - t0;
        MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        it[i] = dt;
      }
      /* physical limit: each node's one inter-node link carries, per phase, max(bytes out of the
       * node, bytes into it) at the measured bandwidth; combine is dispatch transposed */
      double busiest = 0;
      for (int n = 0; n < 2; n++) {
        double out_b = 0, in_b = 0;
        for (int a = 0; a < D; a++)
          for (int b = 0; b < D; b++) {
            if ((a / dpn == n) && (b / dpn != n)) out_b += c->dispatch[a * D + b];
            if ((b / dpn == n) && (a / dpn != n)) in_b += c->dispatch[a * D + b];
          }
        const double m = out_b > in_b ? out_b : in_b;
        if (m > busiest) busiest = m;
      }
      busiest *= 2; /* dispatch + combine */
      const double meas = bench_median(it, iters);
      /* the same plan priced on the loaded calibration; + the two count exchanges measured */
      carl_cost_t cl;
      double a2a_l = 0;
      if (carl_cost_init(&cl, &topo_l) == CARL_OK && carl_plan_cost(&topo_l, p, sizeof(float) * (size_t)d, &cl) == CARL_OK)
        a2a_l = cl.a2a_s;
      carl_cost_free(&cl);
      const double cnt = 2 * t_cnt * (p->mode == CARL_PLAN_HIER ? 3 : 1);
      if (!r)
        printf("%-13s %8lld %12.3f %12.3f %12.3f %9.2f %12.3f %9.2f %9.2f %9.2f\n", routers[q], (long long)p->copies,
               c->bytes[CARL_LINK_INTER] / 1e6, meas * 1e3, c->a2a_s * 1e3, c->a2a_s / meas, busiest / (B_x * 1e9) * 1e3,
               (c->a2a_s + cnt) / meas, a2a_l / meas, (a2a_l + cnt) / meas);
      free(xc);
    }
    free(experts), free(w), free(dz);
    carl_step_free(s);
    carl_router_free(rt);
  }
  free(it), free(z), free(x), free(y);
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
