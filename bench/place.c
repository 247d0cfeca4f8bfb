/* bench/place: 256 experts over 64 devices in 8 nodes (8 x 8), every placement algorithm.
 * Prints, per algorithm and replica count: the median time of carl_place_compute over the runs,
 * device max/mean load, expected inter-node copies and bytes under the statistics, each beside the
 * contiguous baseline and a lower bound (ratios from the same run).
 *
 * Workload (synthetic, deterministic): T tokens spread over the 64 devices, top-8 of
 * log(Zipf(0.6) popularity) + 5 * [expert in the token's cluster] + Gumbel noise. 64 clusters of 4
 * experts (scattered over expert ids by a fixed permutation); a token of node n picks one of
 * "its" 8 clusters (c mod 8 == n) with probability 0.7, else any cluster. So loads are skewed,
 * traffic is node-local in a way contiguous does not follow, and experts of a cluster co-fire.
 *
 * Lower bounds: device max/mean >= max(1, max_e load_e / min(D, R - E + 1) / mean) (an expert with c
 * replicas has one carrying >= load/c, and c <= R - E + 1); inter-node copies >= sum over nodes n of
 * (traffic of n - the sum of its P*S largest entries) (a node hosts at most P*S distinct experts).
 *
 * usage: bench_place [runs (7)] [tokens (65536)] [DIR: also save the statistics there, for carl place] */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"
#include "bench_util.h"

enum { NODES = 8, PER = 8, D = NODES * PER, E = 256, K = 8, CLUSTERS = 64 };
static const double ZIPF = 0.6, BOOST = 5.0;

static int cmp_desc(const void *a, const void *b) { return bench_cmp_double(b, a); }

int main(int argc, char **argv) {
  int runs = argc > 1 ? atoi(argv[1]) : 7;
  int64_t T = argc > 2 ? atoll(argv[2]) : 65536;
  if (runs < 1 || T < D) {
    fprintf(stderr, "usage: bench_place [runs >= 1] [tokens >= %d]\n", D);
    return 2;
  }
  carl_log_set_level(CARL_LOG_WARN);
  carl_topo_t topo;
  if (carl_topo_make(&topo, NODES, PER, 160, 3.4, 50, 9.6)) return 1; /* h800-8x8 figures */
  /* workload */
  int perm[E], cluster[E];
  for (int e = 0; e < E; e++) perm[e] = e;
  for (int e = E - 1; e > 0; e--) {
    int j = (int)(carl_rng_uniform(1, CARL_STREAM_WORKLOAD, (uint64_t)e) * (e + 1));
    int x = perm[e]; perm[e] = perm[j]; perm[j] = x;
  }
  for (int e = 0; e < E; e++) cluster[perm[e]] = e / (E / CLUSTERS);
  double logpop[E];
  for (int e = 0; e < E; e++) logpop[e] = -ZIPF * log((double)(perm[(e * 7) % E] + 1)); /* Zipf, shuffled ranks */
  int32_t *experts = malloc((size_t)T * K * sizeof *experts), *src = malloc((size_t)T * sizeof *src);
  if (!experts || !src) return 1;
  for (int64_t t = 0; t < T; t++) {
    int dev = (int)(t * D / T), n = dev / PER;
    src[t] = n;
    double u = carl_rng_uniform(2, CARL_STREAM_WORKLOAD, (uint64_t)t);
    int c = u < 0.7 ? n + NODES * (int)(carl_rng_uniform(3, CARL_STREAM_WORKLOAD, (uint64_t)t) * (CLUSTERS / NODES))
                    : (int)(carl_rng_uniform(4, CARL_STREAM_WORKLOAD, (uint64_t)t) * CLUSTERS);
    double sc[E];
    for (int e = 0; e < E; e++) {
      double g = carl_rng_uniform64(5, CARL_STREAM_WORKLOAD, (uint64_t)t * E + e);
      sc[e] = logpop[e] + (cluster[e] == c ? BOOST : 0.0) - log(-log(g + 1e-300));
    }
    for (int j = 0; j < K; j++) { /* top-k, ties to the lower index */
      int b = -1;
      for (int e = 0; e < E; e++)
        if (sc[e] > -INFINITY && (b < 0 || sc[e] > sc[b])) b = e;
      experts[t * K + j] = b;
      sc[b] = -INFINITY;
    }
  }
  carl_place_stats_t st;
  if (carl_place_stats_init(&st, 1, E, NODES, 0.9) || carl_place_stats_add(&st, 0, experts, src, T, K)) {
    fprintf(stderr, "bench_place: %s\n", carl_errmsg());
    return 1;
  }
  if (argc > 3 && carl_place_stats_save(&st, argv[3])) {
    fprintf(stderr, "bench_place: %s\n", carl_errmsg());
    return 1;
  }
  carl_place_input_t in;
  carl_place_stats_layer(&st, 0, &in);
  const double token_bytes = 7168 * 2;
  double wmax = 0, total = 0;
  for (int e = 0; e < E; e++) { wmax = in.load[e] > wmax ? in.load[e] : wmax; total += in.load[e]; }
  printf("## bench_place: E=%d experts, D=%d devices (%d nodes x %d), %lld tokens, top-%d, %d runs (median)\n\n", E, D,
         NODES, PER, (long long)T, K, runs);
  printf("expert load max/mean %.3f; token bytes %.0f (dispatch + combine counted)\n\n", wmax / (total / E), token_bytes);
  printf("| algorithm | replicas | wall ms (median) | CPU ms (median) | device max/mean | vs contiguous | vs lower bound | inter-node copies | "
         "inter-node GB | vs contiguous | vs lower bound | co-activation local |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const int reps[2] = {E, E + D};
  double base_load = 0, base_inter = 0;
  double times[64], cpus[64];
  for (int r = 0; r < 2; r++) {
    const int R = reps[r], S = R / D;
    double lb_load = wmax / (R - E + 1 < D ? R - E + 1 : D) / (total / D);
    if (lb_load < 1) lb_load = 1;
    double lb_inter = 0;
    for (int n = 0; n < NODES; n++) {
      double row[E], s = 0;
      for (int e = 0; e < E; e++) { row[e] = in.traffic[(size_t)n * E + e]; s += row[e]; }
      qsort(row, E, sizeof *row, cmp_desc);
      for (int e = 0; e < PER * S && e < E; e++) s -= row[e];
      lb_inter += s;
    }
    for (int a = 0; a < CARL_PLACE_NALGO; a++) {
      if (r > 0 && a <= CARL_PLACE_ROUNDROBIN) continue;
      carl_place_opts_t o;
      carl_place_opts_default(&o);
      o.algo = (carl_place_algo)a;
      o.replicas = R;
      carl_placement_t p = {0};
      carl_status s = CARL_OK;
      for (int i = 0; i < runs && s == CARL_OK; i++) {
        if (i) carl_placement_free(&p);
        double t0 = carl_now(), c0 = bench_thread_cpu_seconds();
        s = carl_place_compute(&topo, &in, &o, &p);
        times[i < 64 ? i : 63] = (carl_now() - t0) * 1e3;
        cpus[i < 64 ? i : 63] = (bench_thread_cpu_seconds() - c0) * 1e3;
      }
      if (s != CARL_OK) {
        printf("| %s | %d | %s: %s |\n", carl_place_algo_name(o.algo), R, carl_strerror(s), carl_errmsg());
        continue;
      }
      int nt = runs < 64 ? runs : 64;
      qsort(times, (size_t)nt, sizeof *times, bench_cmp_double);
      qsort(cpus, (size_t)nt, sizeof *cpus, bench_cmp_double);
      carl_place_eval_t ev;
      carl_place_evaluate(&topo, &in, &p, token_bytes, &ev);
      carl_placement_free(&p);
      double load = ev.dev_max / ev.dev_mean;
      if (a == CARL_PLACE_CONTIGUOUS) { base_load = load; base_inter = ev.inter_copies; }
      printf("| %s | %d | %.2f | %.2f | %.3f | %.3f | %.3f | %.0f | %.3f | %.3f | %.3f | %.3f |\n", carl_place_algo_name(o.algo), R,
             times[nt / 2], cpus[nt / 2], load, load / base_load, load / lb_load, ev.inter_copies,
             ev.bytes[CARL_LINK_INTER] / 1e9, ev.inter_copies / base_inter, lb_inter > 0 ? ev.inter_copies / lb_inter : 0,
             ev.coact_local);
    }
    printf("| lower bound | %d | | | %.3f | %.3f | 1 | %.0f | %.3f | %.3f | 1 | |\n", R, lb_load, lb_load / base_load, lb_inter,
           lb_inter * 2 * token_bytes / 1e9, lb_inter / base_inter);
  }
  { /* the clusters of the generator, one per device: what co-activation placement could find */
    int32_t tab[E];
    int used[D] = {0};
    for (int e = 0; e < E; e++) tab[cluster[e] * 4 + used[cluster[e]]++] = e;
    carl_placement_t p;
    carl_place_eval_t ev;
    if (carl_placement_from_table(&p, E, D, 4, tab) == CARL_OK && carl_place_evaluate(&topo, &in, &p, token_bytes, &ev) == CARL_OK)
      printf("| generator clusters (reference) | %d | | | %.3f | %.3f | | %.0f | %.3f | %.3f | | %.3f |\n", E, ev.dev_max / ev.dev_mean,
             ev.dev_max / ev.dev_mean / base_load, ev.inter_copies, ev.bytes[CARL_LINK_INTER] / 1e9, ev.inter_copies / base_inter, ev.coact_local);
    carl_placement_free(&p);
  }
  printf("\n(timings: one thread; wall time on a shared machine includes waiting for a core, thread CPU time does not)\n");
  carl_place_stats_free(&st);
  free(experts);
  free(src);
  return 0;
}
