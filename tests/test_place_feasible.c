/* Placements of feasible instances: whenever E <= R = D * S <= E * D (every expert at least once,
 * at most once per device), every replicating algorithm must give a valid placement. A hand case
 * for the device packing, then many small random instances. */
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
#include "place/place_internal.h"

/* One node, 2 devices of 3 slots, items X 10, Y 1, Z 1, W 1, A 0.5, A 0.5 (expert A twice). Sorted
 * by load, the lightest device with room: X -> d0, Y, Z, W -> d1 (full), A -> d0, and the second A
 * finds only d0 with room, which holds A. A valid packing exists (A on both devices); the best one
 * puts X with the two lightest others, A and one of Y, Z, W: max load 11.5, the other 2.5. */
static void test_pack_devices_hand(void **s) {
  (void)s;
  const int32_t item_e[] = {0, 1, 2, 3, 4, 4};
  const double item_w[] = {10, 1, 1, 1, 0.5, 0.5};
  int32_t dev[6];
  assert_int_equal(carl__pack_devices(item_e, item_w, 6, 2, 3, 8, dev), CARL_OK);
  double dl[2] = {0, 0};
  int cnt[2] = {0, 0};
  for (int i = 0; i < 6; i++) {
    assert_true(dev[i] == 0 || dev[i] == 1);
    dl[dev[i]] += item_w[i];
    cnt[dev[i]]++;
  }
  assert_int_equal(cnt[0], 3);
  assert_int_equal(cnt[1], 3);
  assert_int_not_equal(dev[4], dev[5]);
  assert_true(fabs((dl[0] > dl[1] ? dl[0] : dl[1]) - 11.5) < 1e-12);
}

static carl_topo_t topo(int nodes, int per) {
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, nodes, per, 160, 3, 50, 10), CARL_OK);
  return t;
}

/* Random instances: 1..3 nodes x 1..3 devices, 1..8 experts, every S with E <= D * S <= E * D,
 * loads from very skewed to flat (zeros included), random traffic and co-activation. Every slot is
 * used and the placement index accepts the table (ids in range, no expert twice on a device, every
 * expert present). */
static void check_random(carl_place_algo algo) {
  const int fills = algo != CARL_PLACE_EPLB; /* eplb leaves the slot of a second copy on a device empty */
  int runs = 0;
  for (int N = 1; N <= 3; N++)
    for (int P = 1; P <= 3; P++)
      for (int E = 1; E <= 8; E++) {
        const int D = N * P;
        carl_topo_t t = topo(N, P);
        for (int S = (E + D - 1) / D; S <= E; S++)
          for (int seed = 0; seed < 4; seed++) {
            double w[8], A[24], C[64];
            const uint64_t key = (uint64_t)(((N * 4 + P) * 9 + E) * 10 + S) * 8 + (uint64_t)seed;
            const double skew = seed == 0 ? 1 : seed == 1 ? 3 : 8;
            for (int e = 0; e < E; e++) {
              w[e] = 0;
              for (int n = 0; n < N; n++) {
                double u = carl_rng_uniform(11, key, (uint64_t)(n * E + e));
                A[n * E + e] = seed == 3 && e % 3 == 0 ? 0 : floor(1000 * pow(u, skew));
                w[e] += A[n * E + e];
              }
            }
            for (int i = 0; i < E; i++)
              for (int j = 0; j < E; j++) C[i * E + j] = i == j ? 0 : floor(10 * carl_rng_uniform(12, key, (uint64_t)(i * E + j)));
            for (int i = 0; i < E; i++)
              for (int j = 0; j < i; j++) C[i * E + j] = C[j * E + i];
            carl_place_input_t in = {E, N, w, A, C, NULL};
            carl_place_opts_t o;
            carl_place_opts_default(&o);
            o.algo = algo;
            o.replicas = D * S;
            carl_placement_t p;
            carl_status st = carl_place_compute(&t, &in, &o, &p);
            if (st != CARL_OK)
              fail_msg("%s refused a feasible instance: %d nodes x %d devices, E %d, S %d, seed %d: %s", carl_place_algo_name(algo),
                       N, P, E, S, seed, carl_errmsg());
            if (fills) assert_int_equal(p.rep_off[E], D * S);
            else assert_true(p.rep_off[E] <= D * S);
            carl_placement_free(&p);
            runs++;
          }
      }
  assert_true(runs > 500);
}

static void test_traffic_random(void **s) {
  (void)s;
  check_random(CARL_PLACE_TRAFFIC);
}

static void test_coact_random(void **s) {
  (void)s;
#ifdef CARL_WITH_METIS
  check_random(CARL_PLACE_COACTIVATION);
#else
  skip();
#endif
}

static void test_eplb_random(void **s) {
  (void)s;
  check_random(CARL_PLACE_EPLB);
}

static void test_eplb_nodup_random(void **s) {
  (void)s;
  check_random(CARL_PLACE_EPLB_NODUP);
}

/* max over GPUs of sum over its slots of w[e] / cnt[e] (EPLB's model; per: slots per GPU) */
static double max_gpu_load(const double *w, const int32_t *phy2log, const int32_t *cnt, int R, int per) {
  double mx = 0;
  for (int g = 0; g < R / per; g++) {
    double l = 0;
    for (int q = 0; q < per; q++) l += w[phy2log[g * per + q]] / cnt[phy2log[g * per + q]];
    mx = l > mx ? l : mx;
  }
  return mx;
}

static int has_dup(const int32_t *phy2log, int R, int per) {
  for (int i = 0; i < R; i++)
    for (int j = i - i % per; j < i; j++)
      if (phy2log[j] == phy2log[i]) return 1;
  return 0;
}

/* eplb-nodup against eplb (which tests/test_place_eplb_ref.c holds to eplb.py) on 200 random loads
 * per shape: eplb-nodup never fails and never puts an expert twice on a GPU; where eplb has no such
 * duplicate, eplb-nodup is the same table (so its maximum GPU load is not above eplb's). */
static void test_eplb_nodup_vs_eplb(void **s) {
  (void)s;
  const int shapes[][5] = {{12, 16, 4, 2, 8}, {16, 24, 4, 2, 4}, {64, 80, 8, 2, 16}, {20, 30, 5, 2, 6},
                           {64, 72, 1, 2, 8}, {8, 16, 2, 2, 4}, {32, 64, 4, 4, 16}, {256, 288, 8, 4, 32}};
  int clean = 0, dup = 0, lower = 0, higher = 0;
  for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
    const int E = shapes[k][0], R = shapes[k][1], G = shapes[k][2], N = shapes[k][3], gpus = shapes[k][4], per = R / gpus;
    double *w = malloc((size_t)E * sizeof *w);
    int32_t *p0 = malloc((size_t)R * sizeof *p0), *p1 = malloc((size_t)R * sizeof *p1);
    int32_t *c0 = malloc((size_t)E * sizeof *c0), *c1 = malloc((size_t)E * sizeof *c1);
    assert_true(w && p0 && p1 && c0 && c1);
    for (int c = 0; c < (E > 100 ? 40 : 200); c++) {
      const double skew = 1 + c % 6;
      for (int e = 0; e < E; e++) {
        double u = carl_rng_uniform(21, (uint32_t)(k * 1000 + c), (uint64_t)e);
        w[e] = c % 2 ? floor(65536 * pow(u, skew)) : 100 * exp(skew * (u - 0.5));
      }
      assert_int_equal(carl_eplb_rebalance(w, E, R, G, N, gpus, p0, c0), CARL_OK);
      assert_int_equal(carl_eplb_rebalance_nodup(w, E, R, G, N, gpus, p1, c1), CARL_OK);
      assert_false(has_dup(p1, R, per));
      const double m0 = max_gpu_load(w, p0, c0, R, per), m1 = max_gpu_load(w, p1, c1, R, per);
      if (!has_dup(p0, R, per)) {
        assert_memory_equal(p0, p1, (size_t)R * sizeof *p0);
        assert_memory_equal(c0, c1, (size_t)E * sizeof *c0);
        assert_true(m1 <= m0);
        clean++;
      } else {
        dup++;
        lower += m1 < m0;
        higher += m1 > m0;
      }
    }
    free(w); free(p0); free(p1); free(c0); free(c1);
  }
  print_message("eplb-nodup vs eplb: %d loads without duplicates (all identical), %d with: max GPU load lower on %d, "
                "higher on %d\n", clean, dup, lower, higher);
  assert_true(clean >= 100);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pack_devices_hand),
      cmocka_unit_test(test_traffic_random),
      cmocka_unit_test(test_coact_random),
      cmocka_unit_test(test_eplb_random),
      cmocka_unit_test(test_eplb_nodup_random),
      cmocka_unit_test(test_eplb_nodup_vs_eplb),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
