/* hash router: balanced table by hand, random table properties, state round trip, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <unistd.h>

#include "route_testutil.h"

/* Ids 0..5 with counts [5, 3, 3, 2, 1, 1], E = 2, greedy by decreasing count to the least-loaded
 * expert (lower index on ties):
 *   id0 (5) -> e0 (5,0); id1 (3) -> e1 (5,3); id2 (3) -> e1 (5,6); id3 (2) -> e0 (7,6);
 *   id4 (1) -> e1 (7,7); id5 (1) -> e0 (tie, lower index) (8,7).
 * Table [0, 1, 1, 0, 1, 0]; loads of the batch 8 and 7. */
static void test_balanced_hand(void **st) {
  (void)st;
  int32_t ids[15] = {0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5};
  carl_router_t *r;
  assert_int_equal(tu_create("hash", "", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 15, 2, 1, 0);
  carl_route_in_t in = {.T = 15, .E = 2, .token_ids = ids};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  int32_t table[6] = {0, 1, 1, 0, 1, 0};
  for (int t = 0; t < 15; t++) {
    assert_int_equal(o.experts[t], table[ids[t]]);
    assert_float_equal(o.weights[t], 1.0, 0);
  }
  double load[2];
  carl_load_experts(o.experts, 15, 1, 2, load);
  assert_float_equal(load[0], 8, 0);
  assert_float_equal(load[1], 7, 0);
  /* save, load into a fresh router, route another batch (id 9 unseen: random hash, same in both) */
  assert_int_equal(carl_router_save(r, "test_hash.state"), CARL_OK);
  carl_router_t *r2;
  assert_int_equal(tu_create("hash", "", &r2), CARL_OK);
  assert_int_equal(carl_router_load(r2, "test_hash.state"), CARL_OK);
  int32_t ids2[4] = {5, 9, 1, 3};
  tu_out_t o2;
  tu_out_init(&o2, 4, 2, 1, 0);
  carl_route_in_t in2 = {.T = 4, .E = 2, .token_ids = ids2};
  assert_int_equal(carl_router_route(r, &in2, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(r2, &in2, &o2.out), CARL_OK);
  assert_memory_equal(o.experts, o2.experts, 4 * sizeof(int32_t));
  assert_int_equal(o2.experts[0], 0);
  assert_int_equal(o2.experts[2], 1);
  assert_int_equal(o2.experts[3], 0);
  /* the table was built for E = 2: routing E = 3 is refused */
  carl_route_in_t in3 = {.T = 4, .E = 3, .token_ids = ids2};
  assert_int_equal(carl_router_route(r2, &in3, &o2.out), CARL_ERR_STATE);
  /* gradient: none (gates are constant) */
  float dw[4] = {1, 1, 1, 1}, dz[8] = {0};
  float zz[8] = {0};
  in2.logits = zz;
  assert_int_equal(carl_router_backward(r2, &in2, &o2.out, dw, dz), CARL_OK);
  for (int i = 0; i < 8; i++) assert_float_equal(dz[i], 0, 0);
  unlink("test_hash.state");
  tu_out_free(&o);
  tu_out_free(&o2);
  carl_router_free(r);
  carl_router_free(r2);
}

/* carl_router_hash_build with counts given directly. */
static void test_build_from_counts(void **st) {
  (void)st;
  int64_t counts[6] = {5, 3, 3, 2, 1, 1};
  carl_router_t *r;
  assert_int_equal(tu_create("hash", "", &r), CARL_OK);
  assert_int_equal(carl_router_hash_build(r, counts, 6, 2), CARL_OK);
  int32_t ids[6] = {0, 1, 2, 3, 4, 5}, want[6] = {0, 1, 1, 0, 1, 0};
  tu_out_t o;
  tu_out_init(&o, 6, 2, 1, 0);
  carl_route_in_t in = {.T = 6, .E = 2, .token_ids = ids};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  for (int t = 0; t < 6; t++) assert_int_equal(o.experts[t], want[t]);
  counts[2] = -1;
  assert_int_equal(carl_router_hash_build(r, counts, 6, 2), CARL_ERR_INVALID);
  tu_out_free(&o);
  carl_router_free(r);
}

/* Random table: fixed per id (same id -> same expert, independent of the batch), all experts used,
 * near-uniform over many ids (10,000 ids, E = 8: each expert 1250 +- 5 sigma (sqrt(1250*7/8) = 33)). */
static void test_random_table(void **st) {
  (void)st;
  const int T = 10000, E = 8;
  int32_t *ids = malloc(sizeof(int32_t) * T);
  for (int t = 0; t < T; t++) ids[t] = t;
  carl_router_t *r;
  assert_int_equal(tu_create("hash", "balanced=0 hash_seed=3", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, T, E, 1, 0);
  carl_route_in_t in = {.T = T, .E = E, .token_ids = ids};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  double load[8];
  carl_load_experts(o.experts, T, 1, E, load);
  for (int e = 0; e < E; e++) assert_true(fabs(load[e] - 1250) < 5 * 33);
  int32_t one[2] = {1234, 17};
  tu_out_t o1;
  tu_out_init(&o1, 2, E, 1, 0);
  carl_route_in_t in1 = {.T = 2, .E = E, .token_ids = one};
  assert_int_equal(carl_router_route(r, &in1, &o1.out), CARL_OK);
  assert_int_equal(o1.experts[0], o.experts[1234]);
  assert_int_equal(o1.experts[1], o.experts[17]);
  assert_int_equal(carl_router_save(r, "x.state"), CARL_ERR_STATE); /* random: nothing to save */
  tu_out_free(&o);
  tu_out_free(&o1);
  carl_router_free(r);
  free(ids);
}

/* Capacity with equal gates: the later tokens are dropped first. */
static void test_capacity(void **st) {
  (void)st;
  int32_t ids[4] = {0, 0, 0, 1};
  int64_t counts[2] = {1, 1};
  carl_router_t *r;
  assert_int_equal(tu_create("hash", "capacity_factor=1", &r), CARL_OK);
  assert_int_equal(carl_router_hash_build(r, counts, 2, 2), CARL_OK); /* id0 -> 0, id1 -> 1 */
  tu_out_t o;
  tu_out_init(&o, 4, 2, 1, 0);
  carl_route_in_t in = {.T = 4, .E = 2, .token_ids = ids};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  /* C = ceil(4 * 1 / 2) = 2: tokens 0, 1 keep expert 0; token 2 dropped */
  int32_t want[4] = {0, 0, -1, 1};
  for (int t = 0; t < 4; t++) assert_int_equal(o.experts[t], want[t]);
  assert_int_equal(o.out.dropped, 1);
  tu_out_free(&o);
  carl_router_free(r);
}

static void test_errors(void **st) {
  (void)st;
  carl_router_t *r;
  assert_int_equal(tu_create("hash", "k=2", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "k = 2"));
  assert_int_equal(tu_create("hash", "", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 4, 1, 0);
  carl_route_in_t in = {.T = 2, .E = 4};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "token_ids"));
  int32_t ids[2] = {3, -4};
  in.token_ids = ids;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "token 1"));
  tu_out_free(&o);
  carl_router_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_balanced_hand), cmocka_unit_test(test_build_from_counts),
      cmocka_unit_test(test_random_table),  cmocka_unit_test(test_capacity),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
