/* fastermoe router: the reference gate's rule and the strict rule by hand, the quota on random
 * logits against a brute-force count, a single node equals topk, bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>

#include "carl/topo.h"
#include "route_testutil.h"

static carl_topo_t topo(int nodes, int per) {
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, nodes, per, 160, 3, 50, 10), CARL_OK);
  return t;
}

/* 2 nodes x 1 device, E = 4: experts {0,1} on node 0, {2,3} on node 1; all 8 tokens on device 0;
 * phi = .25 -> quota floor(.25 * 8) = 2. Logits:
 *   t0 [3,0,0,0]  top-2 {0,1} local
 *   t1 [0,0,5,0]  top-1 remote (2), s = e^5/(e^5+3) = .9802
 *   t2 [0,0,0,4]  top-1 remote (3), s = e^4/(e^4+3) = .9479
 *   t3 [1,0,3,0]  top-1 remote (2), s = e^3/(e^3+e+2) = .8098
 *   t4..t7 [2,1,0,0] local
 * Remote top-1 tokens: 3 >= quota -> the 2 with the highest top-1 score (t1, t2) keep their remote
 * expert, next to their best local one (expert 0: ties to the lower index); t3 goes local {0, 1}.
 * Gates renormalised: t1 {2: e^5/(e^5+1) = .9933071, 0: .0066929}, t2 {3: e^4/(e^4+1) = .9820138,
 * 0: .0179862}, t3 {0: e/(e+1) = .7310586, 1: .2689414}. Both rules agree here (every token with a
 * remote expert in its top-2 has a remote top-1). */
static void test_hand_quota(void **st) {
  (void)st;
  float z[32] = {3, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 4, 1, 0, 3, 0, 2, 1, 0, 0, 2, 1, 0, 0, 2, 1, 0, 0, 2, 1, 0, 0};
  int32_t src[8] = {0};
  carl_topo_t tp = topo(2, 1);
  for (int strict = 0; strict < 2; strict++) {
    carl_router_t *r;
    char opts[64];
    snprintf(opts, sizeof opts, "phi=0.25 strict=%d", strict);
    assert_int_equal(tu_create("fastermoe", opts, &r), CARL_OK);
    tu_out_t o;
    tu_out_init(&o, 8, 4, 2, 0);
    carl_route_in_t in = {.T = 8, .E = 4, .logits = z, .src = src, .topo = &tp};
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
    int32_t want[16] = {0, 1, 2, 0, 3, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
    assert_memory_equal(o.experts, want, sizeof want);
    assert_float_equal(o.weights[2], exp(5.0) / (exp(5.0) + 1), 1e-6);
    assert_float_equal(o.weights[3], 1 / (exp(5.0) + 1), 1e-6);
    assert_float_equal(o.weights[4], exp(4.0) / (exp(4.0) + 1), 1e-6);
    assert_float_equal(o.weights[6], exp(1.0) / (exp(1.0) + 1), 1e-6);
    tu_out_free(&o);
    carl_router_free(r);
  }
}

/* Where the rules differ: T = 4 on device 0, phi = .25 -> quota 1.
 *   t0 [2,0,1,0] top-2 {0, 2}: local top-1, remote second, s2 = e/(e^2+e+2) = .2245
 *   t1 [2,0,1.5,0] top-2 {0, 2}: s2 = e^1.5/(e^2+e^1.5+2) = .3231
 *   t2, t3 [2,1,0,0] local
 * Reference rule: no remote top-1 (0 < quota) -> plain top-2 for all: t0 and t1 both leave (2 > 1).
 * Strict rule: 2 tokens would leave > quota 1 -> t1 (higher remote score) keeps {0, 2}, t0 goes
 * local {0, 1}. */
static void test_hand_strict(void **st) {
  (void)st;
  float z[16] = {2, 0, 1, 0, 2, 0, 1.5f, 0, 2, 1, 0, 0, 2, 1, 0, 0};
  int32_t src[4] = {0};
  carl_topo_t tp = topo(2, 1);
  carl_route_in_t in = {.T = 4, .E = 4, .logits = z, .src = src, .topo = &tp};
  tu_out_t o;
  tu_out_init(&o, 4, 4, 2, 0);
  carl_router_t *r;
  assert_int_equal(tu_create("fastermoe", "phi=0.25 strict=0", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  int32_t ref[8] = {0, 2, 0, 2, 0, 1, 0, 1};
  assert_memory_equal(o.experts, ref, sizeof ref);
  carl_router_free(r);
  assert_int_equal(tu_create("fastermoe", "phi=0.25", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  int32_t strict[8] = {0, 1, 0, 2, 0, 1, 0, 1};
  assert_memory_equal(o.experts, strict, sizeof strict);
  carl_router_free(r);
  tu_out_free(&o);
}

/* Random logits on 2 nodes x 2 devices, E = 16 (4 per device), k = 2: per source device, the
 * number of tokens that reach another node is at most floor(phi * T_a) under the strict rule
 * (brute-force count here), and the reference rule keeps at most that many remote top-1 tokens
 * once it limits. Every token's experts are distinct. */
static void test_quota_random(void **st) {
  (void)st;
  enum { T = 1000, E = 16, k = 2, D = 4 };
  float *z = malloc(sizeof(float) * T * E);
  double off[E];
  for (int e = 0; e < E; e++) off[e] = (e >= 8) ? 0.8 : 0; /* node 1 is popular */
  tu_logits(z, T, E, off, 1.0, 9);
  int32_t src[T];
  for (int t = 0; t < T; t++) src[t] = (t * 7) % D;
  carl_topo_t tp = topo(2, 2);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = src, .topo = &tp};
  carl_router_t *r, *rt;
  assert_int_equal(tu_create("fastermoe", "", &r), CARL_OK);
  assert_int_equal(tu_create("topk", "", &rt), CARL_OK);
  tu_out_t o, ot;
  tu_out_init(&o, T, E, k, 0);
  tu_out_init(&ot, T, E, k, 0);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(rt, &in, &ot.out), CARL_OK);
  int leave[D] = {0}, leave_topk[D] = {0}, Ta[D] = {0};
  for (int t = 0; t < T; t++) {
    int a = src[t], na = a / 2, out = 0, out_t = 0;
    Ta[a]++;
    assert_true(o.experts[t * k] != o.experts[t * k + 1]);
    for (int j = 0; j < k; j++) {
      out |= (o.experts[t * k + j] / 4) / 2 != na; /* expert e on device e/4, node e/8 */
      out_t |= (ot.experts[t * k + j] / 4) / 2 != na;
    }
    leave[a] += out;
    leave_topk[a] += out_t;
  }
  for (int a = 0; a < D; a++) {
    assert_true(leave[a] <= (int)floor(0.14 * Ta[a]));
    assert_true(leave_topk[a] > leave[a]); /* the quota binds here */
  }
  tu_out_free(&o);
  tu_out_free(&ot);
  carl_router_free(r);
  carl_router_free(rt);
  free(z);
}

/* One node: every expert is local, so the gate is plain top-k (experts and weights bitwise). */
static void test_single_node_is_topk(void **st) {
  (void)st;
  enum { T = 200, E = 8, k = 2 };
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.0, 4);
  carl_topo_t tp = topo(1, 4);
  for (int strict = 0; strict < 2; strict++) {
    carl_router_t *r, *rt;
    assert_int_equal(tu_create("fastermoe", strict ? "strict=1" : "strict=0", &r), CARL_OK);
    assert_int_equal(tu_create("topk", "", &rt), CARL_OK);
    tu_out_t o, ot;
    tu_out_init(&o, T, E, k, 0);
    tu_out_init(&ot, T, E, k, 0);
    carl_route_in_t in = {.T = T, .E = E, .logits = z, .topo = &tp};
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
    assert_int_equal(carl_router_route(rt, &in, &ot.out), CARL_OK);
    assert_memory_equal(o.experts, ot.experts, sizeof(int32_t) * T * k);
    assert_memory_equal(o.weights, ot.weights, sizeof(float) * T * k);
    tu_out_free(&o);
    tu_out_free(&ot);
    carl_router_free(r);
    carl_router_free(rt);
  }
  free(z);
}

static void test_errors(void **st) {
  (void)st;
  carl_router_t *r;
  assert_int_equal(tu_create("fastermoe", "phi=1.5", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "phi"));
  assert_int_equal(tu_create("fastermoe", "strict=3", &r), CARL_ERR_INVALID);
  /* E = 2 over 2 nodes: one expert per node < k = 2 */
  assert_int_equal(tu_create("fastermoe", "", &r), CARL_OK);
  carl_topo_t tp = topo(2, 1);
  float z[4] = {0, 1, 1, 0};
  carl_route_in_t in = {.T = 2, .E = 2, .logits = z, .topo = &tp};
  tu_out_t o;
  tu_out_init(&o, 2, 2, 2, 0);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "fewer than k=2"));
  in.logits = NULL;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  tu_out_free(&o);
  carl_router_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hand_quota),   cmocka_unit_test(test_hand_strict),         cmocka_unit_test(test_quota_random),
      cmocka_unit_test(test_single_node_is_topk), cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
