/* grouplimited: a hand-computed case, identity with topk when M = number of groups, a brute-force
 * reference, groups from the topology (devices, nodes, placement), and input errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>

#include "route_testutil.h"

/* E = 4 in groups {0,1} {2,3}, k = 2, M = 1 -> per-group sum of the top 2 scores.
 * z = [3, 0, 2, 2]: e^3 + e^0 = 21.09 > 2 e^2 = 14.78, so group 0 is kept and S = {0, 1}
 * (plain top-2 would be {0, 2}). Gates: s0 / (s0 + s1) = e^3 / (e^3 + 1) = 0.9525741. */
static void test_hand(void **st) {
  (void)st;
  float z[4] = {3, 0, 2, 2};
  carl_router_t *r;
  assert_int_equal(tu_create("grouplimited", "k=2 M=1 groups=2", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 1, 4, 2, 0);
  carl_route_in_t in = {.T = 1, .E = 4, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 0);
  assert_int_equal(o.experts[1], 1);
  assert_float_equal(o.weights[0], 0.9525741, 1e-6);
  assert_float_equal(o.weights[1], 1 - 0.9525741, 1e-6);
  tu_out_free(&o);
  carl_router_free(r);
}

/* M = number of groups: the same experts and gates as topk. */
static void test_identity_with_topk(void **st) {
  (void)st;
  const int64_t T = 500;
  const int E = 32, k = 4;
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.5, 8);
  carl_router_t *a, *b;
  assert_int_equal(tu_create("grouplimited", "k=4 M=8 groups=8", &a), CARL_OK);
  assert_int_equal(tu_create("topk", "k=4", &b), CARL_OK);
  tu_out_t oa, ob;
  tu_out_init(&oa, T, E, k, 0);
  tu_out_init(&ob, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z};
  assert_int_equal(carl_router_route(a, &in, &oa.out), CARL_OK);
  assert_int_equal(carl_router_route(b, &in, &ob.out), CARL_OK);
  assert_memory_equal(oa.experts, ob.experts, sizeof(int32_t) * T * k);
  assert_memory_equal(oa.weights, ob.weights, sizeof(float) * T * k);
  tu_out_free(&oa);
  tu_out_free(&ob);
  carl_router_free(a);
  carl_router_free(b);
  free(z);
}

/* Against a brute-force reference in double: E experts in G contiguous groups, top k of the best
 * M groups by the sum of their top (k / M) scores. */
static void check_vs_reference(int E, int G, int k, int M, int score, uint64_t seed) {
  const int64_t T = 300;
  const int n = E / G, q = k / M > 0 ? k / M : 1;
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 2.0, seed);
  carl_router_t *r;
  char opt[128];
  snprintf(opt, sizeof opt, "k=%d M=%d groups=%d score=%d", k, M, G, score);
  assert_int_equal(tu_create("grouplimited", opt, &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  double s[256], gs[64], masked[256];
  int32_t gi[64], idx[64], top[64];
  for (int64_t t = 0; t < T; t++) {
    tu_scores(z + t * E, E, score, s);
    for (int g = 0; g < G; g++) {
      tu_topk(s + g * n, n, q, top);
      gs[g] = 0;
      for (int j = 0; j < q; j++) gs[g] += s[g * n + top[j]];
    }
    tu_topk(gs, G, M, gi);
    for (int e = 0; e < E; e++) {
      int kept = 0;
      for (int j = 0; j < M; j++) kept |= e / n == gi[j];
      masked[e] = kept ? s[e] : -1.0;
    }
    tu_topk(masked, E, k, idx);
    double a = 0;
    for (int j = 0; j < k; j++) a += s[idx[j]];
    for (int j = 0; j < k; j++) {
      assert_int_equal(o.experts[t * k + j], idx[j]);
      assert_float_equal(o.weights[t * k + j], s[idx[j]] / a, 1e-6);
    }
  }
  tu_out_free(&o);
  carl_router_free(r);
  free(z);
}

/* Small groups (4 experts, sigmoid as DeepSeek-V3), groups of 8 and 16 (the vectorised per-group
 * top-2), DeepSeek-V3's shape (256 experts, 8 groups, k = 8, M = 4), and top-1 per group (k/M = 1). */
static void test_vs_reference(void **st) {
  (void)st;
  check_vs_reference(32, 8, 4, 2, 1, 12);
  check_vs_reference(64, 8, 4, 2, 0, 13);
  check_vs_reference(64, 4, 6, 3, 1, 14);
  check_vs_reference(256, 8, 8, 4, 1, 15);
  check_vs_reference(64, 8, 2, 2, 0, 16);
}

/* Groups from the topology: 2 nodes x 2 devices, E = 8 (contiguous: 2 experts per device).
 * Node-limited M = 1 keeps one node (4 experts); device-limited M = 1 keeps one device (2 experts).
 * With a placement that swaps experts 0 and 7, node 0 holds {7, 1, 2, 3}. */
static void test_topology_groups(void **st) {
  (void)st;
  carl_topo_t topo = {.nodes = 2, .devices_per_node = 2, .devices = 4};
  /* z: expert 0 best, then 7 and 6 (node 1), then the rest */
  float z[8] = {5, 0, 0, 0, 0, 0, 3, 4};
  tu_out_t o;
  tu_out_init(&o, 1, 8, 2, 0);
  carl_route_in_t in = {.T = 1, .E = 8, .logits = z, .topo = &topo};
  carl_router_t *r;
  /* node level: node 0 = {0..3}: top-1 sum e^5; node 1 = {4..7}: e^4 -> node 0, S = {0, then 1} */
  assert_int_equal(tu_create("grouplimited", "k=2 M=1 level=1", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 0);
  assert_int_equal(o.experts[1], 1);
  carl_router_free(r);
  /* device level, M = 2: device scores (top-1 each): d0 {0,1}: e^5, d3 {6,7}: e^4 -> S = {0, 7} */
  assert_int_equal(tu_create("grouplimited", "k=2 M=2 level=0", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 0);
  assert_int_equal(o.experts[1], 7);
  carl_router_free(r);
  /* placement: device 0 holds {7, 1}, device 3 holds {6, 0}; node level M = 1:
   * node 0 = {7,1,2,3}: top-1 e^4; node 1 = {4,5,6,0}: e^5 -> node 1, S = {0, 6} */
  int32_t table[8] = {7, 1, 2, 3, 4, 5, 6, 0};
  carl_placement_t pl = {.E = 8, .D = 4, .slots = 2, .slot_expert = table};
  in.place = &pl;
  assert_int_equal(tu_create("grouplimited", "k=2 M=1 level=1", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 0);
  assert_int_equal(o.experts[1], 6);
  carl_router_free(r);
  tu_out_free(&o);
}

static void test_errors(void **st) {
  (void)st;
  float z[12] = {0};
  tu_out_t o;
  tu_out_init(&o, 1, 12, 2, 0);
  carl_route_in_t in = {.T = 1, .E = 12, .logits = z};
  carl_router_t *r;
  /* M > groups */
  assert_int_equal(tu_create("grouplimited", "k=2 M=5 groups=4", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "M: 5"));
  carl_router_free(r);
  /* E not divisible by the groups */
  assert_int_equal(tu_create("grouplimited", "k=2 M=1 groups=5", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "divisible"));
  carl_router_free(r);
  carl_topo_t topo = {.nodes = 1, .devices_per_node = 5, .devices = 5};
  in.topo = &topo;
  assert_int_equal(tu_create("grouplimited", "k=2 M=1 level=0", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "divisible"));
  carl_router_free(r);
  in.topo = NULL;
  /* E = 16 over 3 nodes x 2 devices: 16 is divisible neither by the 6 devices nor by the 3 nodes,
   * without a placement and with the contiguous one (what the command line passes) */
  {
    float z16[16] = {0};
    tu_out_t o16;
    tu_out_init(&o16, 1, 16, 2, 0);
    carl_topo_t t32 = {.nodes = 3, .devices_per_node = 2, .devices = 6};
    carl_placement_t pl = {0};
    assert_int_equal(carl_placement_contiguous(&pl, 16, 6), CARL_OK);
    carl_route_in_t in16 = {.T = 1, .E = 16, .logits = z16, .topo = &t32};
    for (int with_place = 0; with_place < 2; with_place++) {
      in16.place = with_place ? &pl : NULL;
      assert_int_equal(tu_create("grouplimited", "k=2 level=1", &r), CARL_OK);
      assert_int_equal(carl_router_route(r, &in16, &o16.out), CARL_ERR_INVALID);
      assert_non_null(strstr(carl_errmsg(), "E = 16"));
      assert_non_null(strstr(carl_errmsg(), "3 nodes"));
      carl_router_free(r);
      assert_int_equal(tu_create("grouplimited", "k=2 level=0", &r), CARL_OK);
      assert_int_equal(carl_router_route(r, &in16, &o16.out), CARL_ERR_INVALID);
      assert_non_null(strstr(carl_errmsg(), "E = 16"));
      assert_non_null(strstr(carl_errmsg(), "6 devices"));
      carl_router_free(r);
    }
    /* E = 12 is divisible by both: accepted with the placement */
    float z12[12] = {0};
    carl_placement_t p12 = {0};
    assert_int_equal(carl_placement_contiguous(&p12, 12, 6), CARL_OK);
    carl_route_in_t in12 = {.T = 1, .E = 12, .logits = z12, .topo = &t32, .place = &p12};
    assert_int_equal(tu_create("grouplimited", "k=2 level=0", &r), CARL_OK);
    assert_int_equal(carl_router_route(r, &in12, &o.out), CARL_OK);
    carl_router_free(r);
    carl_placement_free(&pl);
    carl_placement_free(&p12);
    tu_out_free(&o16);
  }
  /* kept groups too small for k: 6 groups of 2 experts, M = 1, k = 3 */
  tu_out_t o3;
  tu_out_init(&o3, 1, 12, 3, 0);
  assert_int_equal(tu_create("grouplimited", "k=3 M=1 groups=6", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o3.out), CARL_ERR_INVALID);
  carl_router_free(r);
  /* bad option values */
  assert_int_equal(tu_create("grouplimited", "level=2", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "level"));
  assert_int_equal(tu_create("grouplimited", "M=-1", &r), CARL_ERR_INVALID);
  tu_out_free(&o);
  tu_out_free(&o3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hand),           cmocka_unit_test(test_identity_with_topk),
      cmocka_unit_test(test_vs_reference),   cmocka_unit_test(test_topology_groups),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
