/* Traffic and co-activation placement against the optimum found by exhaustive search, on small
 * instances: E = 8 experts over 4 devices in 2 nodes (2 slots each). The search is written here,
 * from the objective of ALGORITHMS.md section 4, independently of the heuristics. The measured gap
 * is printed; docs/placement.md quotes it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"

enum { E = 8, D = 4, P = 2, N = 2, S = 2, INSTANCES = 200 };
static const double BOUND = 1.25;
/* node -> node cost: other node 1 (inter), own node: intra (50/160) for the (P-1)/P of tokens not on
 * the expert's device, 0 for the 1/P that are */
static const double C_OWN = 50.0 / 160.0 * (P - 1) / P;

static double traffic_cost(const double *A, const int32_t *dev) {
  double c = 0;
  for (int n = 0; n < N; n++)
    for (int e = 0; e < E; e++) c += A[n * E + e] * (dev[e] / P == n ? C_OWN : 1.0);
  return c;
}

static int feasible(const double *w, const int32_t *dev) {
  double dl[D] = {0}, tot = 0;
  for (int e = 0; e < E; e++) {
    if (dev[e] < 0 || dev[e] >= D) return 0;
    dl[dev[e]] += w[e];
    tot += w[e];
  }
  for (int d = 0; d < D; d++)
    if (dl[d] > BOUND * tot / D + 1e-9) return 0;
  return 1;
}

/* all assignments of E experts to D devices with S each */
static void search_traffic(const double *A, const double *w, int32_t *dev, int *cnt, int e, double *best) {
  if (e == E) {
    if (feasible(w, dev)) {
      double c = traffic_cost(A, dev);
      if (c < *best) *best = c;
    }
    return;
  }
  for (int d = 0; d < D; d++) {
    if (cnt[d] == S) continue;
    cnt[d]++;
    dev[e] = d;
    search_traffic(A, w, dev, cnt, e + 1, best);
    cnt[d]--;
  }
}

static void test_traffic_vs_exhaustive(void **s) {
  (void)s;
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, N, P, 160, 3, 50, 10), CARL_OK);
  int optimal = 0, infeasible_opt = 0, heur_infeasible = 0;
  double sum_gap = 0, max_gap = 0;
  for (int inst = 0; inst < INSTANCES; inst++) {
    double A[N * E], w[E] = {0};
    /* skewed traffic, half the instances with a node affinity (node 0 prefers low ids) */
    for (int n = 0; n < N; n++)
      for (int e = 0; e < E; e++) {
        double u = carl_rng_uniform((uint64_t)inst, 1, (uint64_t)(n * E + e));
        double aff = (inst % 2) ? ((e < E / 2) == (n == 0) ? 3.0 : 1.0) : 1.0;
        A[n * E + e] = floor(100 * u * u * aff);
        w[e] += A[n * E + e];
      }
    int32_t dev[E];
    int cnt[D] = {0};
    double opt = INFINITY;
    search_traffic(A, w, dev, cnt, 0, &opt);
    carl_place_input_t in = {E, N, w, A, NULL, NULL};
    carl_place_opts_t o;
    carl_place_opts_default(&o);
    o.algo = CARL_PLACE_TRAFFIC;
    o.load_bound = BOUND;
    carl_placement_t p;
    assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
    for (int e = 0; e < E; e++) {
      assert_int_equal(p.rep_off[e + 1] - p.rep_off[e], 1);
      dev[e] = p.home[e];
    }
    for (int d = 0; d < D; d++) /* equal experts per device */
      for (int q = 0; q < S; q++) assert_true(p.slot_expert[d * S + q] >= 0);
    double h = traffic_cost(A, dev);
    carl_placement_free(&p);
    if (!isfinite(opt)) { /* no placement meets the bound: only the cost is compared to nothing */
      infeasible_opt++;
      continue;
    }
    if (!feasible(w, dev)) {
      heur_infeasible++;
      continue;
    }
    assert_true(h >= opt - 1e-9); /* the search is exhaustive: nothing beats it */
    double gap = opt > 0 ? (h - opt) / opt : (h > 0 ? 1.0 : 0.0);
    optimal += gap < 1e-12;
    sum_gap += gap;
    if (gap > max_gap) max_gap = gap;
  }
  int compared = INSTANCES - infeasible_opt - heur_infeasible;
  printf("traffic vs exhaustive: %d instances (E=8, D=4, N=2, bound %.2f), %d with no feasible placement, "
         "%d where the heuristic broke the bound; of %d compared: optimal in %d, mean gap %.3f%%, max gap %.2f%%\n",
         INSTANCES, BOUND, infeasible_opt, heur_infeasible, compared, optimal, 100 * sum_gap / (compared > 0 ? compared : 1),
         100 * max_gap);
  /* what docs/placement.md states (measured: optimal on 141 of 144, mean gap 0.10%, max 11.4%):
   * the bound kept whenever it can be, optimal on >= 90%, mean gap <= 1%, max gap <= 15% */
  assert_int_equal(heur_infeasible, 0);
  assert_true(compared >= INSTANCES / 2);
  assert_true(optimal >= (compared * 9) / 10);
  assert_true(sum_gap / compared <= 0.01);
  assert_true(max_gap <= 0.15);
}

/* ---- co-activation: the best split into 4 pairs (105 perfect matchings) ---------------------------- */
static double pair_weight(const double *W, const int32_t *dev) {
  double x = 0;
  for (int i = 0; i < E; i++)
    for (int j = i + 1; j < E; j++)
      if (dev[i] == dev[j]) x += W[i * E + j];
  return x;
}

static void search_pairs(const double *W, const double *w, int32_t *dev, int next_dev, double *best) {
  int i = -1;
  for (int e = 0; e < E && i < 0; e++)
    if (dev[e] < 0) i = e;
  if (i < 0) {
    if (feasible(w, dev)) {
      double x = pair_weight(W, dev);
      if (x > *best) *best = x;
    }
    return;
  }
  dev[i] = next_dev;
  for (int j = i + 1; j < E; j++) {
    if (dev[j] >= 0) continue;
    dev[j] = next_dev;
    search_pairs(W, w, dev, next_dev + 1, best);
    dev[j] = -1;
  }
  dev[i] = -1;
}

static void test_coact_vs_exhaustive(void **s) {
  (void)s;
#ifndef CARL_WITH_METIS
  skip();
#endif
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, N, P, 160, 3, 50, 10), CARL_OK);
  int optimal = 0, compared = 0, heur_infeasible = 0;
  double sum_gap = 0, max_gap = 0;
  for (int inst = 0; inst < INSTANCES; inst++) {
    double C[E * E] = {0}, W[E * E] = {0}, w[E];
    for (int i = 0; i < E; i++) {
      w[i] = 50 + floor(50 * carl_rng_uniform((uint64_t)inst, 3, (uint64_t)i));
      for (int j = 0; j < E; j++) {
        if (i == j) continue;
        double u = carl_rng_uniform((uint64_t)inst, 4, (uint64_t)(i * E + j));
        C[i * E + j] = floor(100 * u * u * u);
      }
    }
    for (int i = 0; i < E; i++)
      for (int j = 0; j < E; j++) W[i * E + j] = i == j ? 0 : C[i * E + j] + C[j * E + i];
    int32_t dev[E];
    for (int e = 0; e < E; e++) dev[e] = -1;
    double opt = -1;
    search_pairs(W, w, dev, 0, &opt);
    if (opt < 0) continue; /* no pairing meets the bound */
    carl_place_input_t in = {E, N, w, NULL, C, NULL};
    carl_place_opts_t o;
    carl_place_opts_default(&o);
    o.algo = CARL_PLACE_COACTIVATION;
    o.load_bound = BOUND;
    carl_placement_t p;
    assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
    for (int e = 0; e < E; e++) dev[e] = p.home[e];
    for (int d = 0; d < D; d++)
      for (int q = 0; q < S; q++) assert_true(p.slot_expert[d * S + q] >= 0);
    carl_placement_free(&p);
    if (!feasible(w, dev)) {
      heur_infeasible++;
      continue;
    }
    double h = pair_weight(W, dev);
    assert_true(h <= opt + 1e-9);
    double gap = opt > 0 ? (opt - h) / opt : 0.0;
    compared++;
    optimal += gap < 1e-12;
    sum_gap += gap;
    if (gap > max_gap) max_gap = gap;
  }
  printf("coactivation vs exhaustive: %d instances compared (E=8, D=4, bound %.2f), %d where the heuristic broke "
         "the bound; optimal in %d, mean gap %.3f%%, max gap %.2f%% of the intra-device co-activation weight\n",
         compared, BOUND, heur_infeasible, optimal, 100 * sum_gap / (compared > 0 ? compared : 1), 100 * max_gap);
  /* what docs/placement.md states (measured: optimal on 187 of 200, mean gap 0.38%, max 14.5%):
   * the bound kept, optimal on >= 90%, mean gap <= 1%, max gap <= 20% */
  assert_int_equal(heur_infeasible, 0);
  assert_true(compared >= INSTANCES / 2);
  assert_true(optimal >= (compared * 9) / 10);
  assert_true(sum_gap / compared <= 0.01);
  assert_true(max_gap <= 0.20);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_traffic_vs_exhaustive),
      cmocka_unit_test(test_coact_vs_exhaustive),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
