/* expert_choice: a hand case, exactly equal loads, a token chosen by more experts than k slots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>

#include "route_testutil.h"

/* T = 4, E = 2, k = 1 -> C = 4 * 1 / 2 = 2. z = [[2,0],[1,0],[3,0],[0,0]]:
 * s[., 0] = sigmoid(z0 - z1) = .8808 .7311 .9526 .5 -> expert 0 takes tokens 2 and 0;
 * s[., 1] = .1192 .2689 .0474 .5 -> expert 1 takes tokens 3 and 1. Gates = s. */
static void test_hand(void **st) {
  (void)st;
  float z[8] = {2, 0, 1, 0, 3, 0, 0, 0};
  carl_router_t *r;
  assert_int_equal(tu_create("expert_choice", "k=1", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 4, 2, 1, 0);
  carl_route_in_t in = {.T = 4, .E = 2, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  int32_t want[4] = {0, 1, 0, 1};
  double w[4] = {0.8807971, 0.2689414, 0.9525741, 0.5};
  for (int t = 0; t < 4; t++) {
    assert_int_equal(o.experts[t], want[t]);
    assert_float_equal(o.weights[t], w[t], 1e-6);
  }
  assert_int_equal(o.out.capacity, 2);
  assert_int_equal(o.out.dropped, 0);
  tu_out_free(&o);
  carl_router_free(r);
}

/* A token wanted by more experts than its k slots: T = 4, E = 4, k = 1, C = 1.
 * z row 0 = [5, 5, 5, 5] (every expert's best token), rows 1..3 = [0, 0, 0, 0] with small
 * preferences: row t has +1 on expert t. Pure EC: all experts pick token 0. Token 0 keeps expert 0
 * (equal s, lower index); experts 1, 2, 3 refill with their next best free tokens: row t's own
 * expert t (s = e/(e+3) = 0.4753 > 1/(e+3)). Loads all 1. */
static void test_overchosen_token(void **st) {
  (void)st;
  float z[16] = {5, 5, 5, 5, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
  carl_router_t *r;
  assert_int_equal(tu_create("expert_choice", "k=1", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 4, 4, 1, 0);
  carl_route_in_t in = {.T = 4, .E = 4, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  for (int t = 0; t < 4; t++) assert_int_equal(o.experts[t], t);
  assert_float_equal(o.weights[0], 0.25, 1e-6);
  assert_float_equal(o.weights[1], exp(1.0) / (exp(1.0) + 3), 1e-6);
  tu_out_free(&o);
  carl_router_free(r);
}

/* Random logits with a strong per-expert skew: loads are exactly C = T k / E for every expert,
 * every token has at most k distinct experts, gates are the softmax scores, slots sorted. */
static void test_exact_balance(void **st) {
  (void)st;
  const int64_t T = 1024;
  const int E = 16, k = 2;
  double off[16];
  for (int e = 0; e < E; e++) off[e] = 3.0 * e / (E - 1);
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, off, 1.0, 31);
  carl_router_t *r;
  assert_int_equal(tu_create("expert_choice", "k=2", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  double load[16];
  carl_load_experts(o.experts, T, k, E, load);
  for (int e = 0; e < E; e++) assert_float_equal(load[e], 128, 0);
  assert_int_equal(o.out.dropped, 0);
  for (int64_t t = 0; t < T; t++) {
    double s[16];
    tu_scores(z + t * E, E, 0, s);
    const int32_t *ex = o.experts + t * k;
    assert_true(ex[0] != ex[1]);
    assert_true(s[ex[0]] >= s[ex[1]]);
    for (int j = 0; j < k; j++) assert_float_equal(o.weights[t * k + j], s[ex[j]], 1e-6);
  }
  tu_out_free(&o);
  carl_router_free(r);
  free(z);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hand),
      cmocka_unit_test(test_overchosen_token),
      cmocka_unit_test(test_exact_balance),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
