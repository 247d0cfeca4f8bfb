/* Load, skew and selectivity metrics against hand-computed values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>

#include "route_testutil.h"

/* loads [1, 2, 3, 6]: mean 3, max 6, min 1, max/mean 2, MaxVio 1;
 * CV = sqrt(((1-3)^2 + (2-3)^2 + 0 + (6-3)^2) / 4) / 3 = sqrt(3.5) / 3 = 0.6236096;
 * Gini: pairwise |differences| 1,2,5,1,4,3 sum 16, both orders 32; 32 / (2 * 16 * 3) = 1/3. */
static void test_skew(void **st) {
  (void)st;
  double l[4] = {6, 2, 3, 1};
  carl_skew_t s;
  carl_skew(l, 4, &s);
  assert_float_equal(s.mean, 3, 1e-12);
  assert_float_equal(s.max, 6, 0);
  assert_float_equal(s.min, 1, 0);
  assert_float_equal(s.max_over_mean, 2, 1e-12);
  assert_float_equal(s.maxvio, 1, 1e-12);
  assert_float_equal(s.cv, sqrt(3.5) / 3, 1e-12);
  assert_float_equal(s.gini, 1.0 / 3, 1e-12);
  /* balanced: everything 0; all on one of 4: Gini = (n-1)/n = 0.75, MaxVio = 3 */
  double b[4] = {5, 5, 5, 5}, one[4] = {0, 0, 8, 0};
  carl_skew(b, 4, &s);
  assert_float_equal(s.maxvio, 0, 0);
  assert_float_equal(s.cv, 0, 0);
  assert_float_equal(s.gini, 0, 0);
  carl_skew(one, 4, &s);
  assert_float_equal(s.gini, 0.75, 1e-12);
  assert_float_equal(s.maxvio, 3, 1e-12);
}

/* Expert loads from [T, k] with a dropped slot; device and node loads with replicas:
 * E = 4, D = 2 devices, 3 slots: dev0 = [0, 1, 2], dev1 = [3, 2, 0] -> experts 0 and 2 have two
 * replicas. Loads [4, 2, 6, 1] -> dev0 = 4/2 + 2 + 6/2 = 7, dev1 = 1 + 6/2 + 4/2 = 6.
 * Contiguous (no placement), 4 devices in 2 nodes, E = 4: devices = loads, nodes = [6, 7]. */
static void test_loads(void **st) {
  (void)st;
  int32_t ex[8] = {0, 1, 2, -1, 2, 0, 3, 2};
  double l[4];
  carl_load_experts(ex, 4, 2, 4, l);
  assert_float_equal(l[0], 2, 0);
  assert_float_equal(l[1], 1, 0);
  assert_float_equal(l[2], 3, 0);
  assert_float_equal(l[3], 1, 0);
  assert_float_equal(carl_drop_rate(ex, 4, 2), 1.0 / 8, 1e-15);
  double el[4] = {4, 2, 6, 1}, g[4];
  int n;
  int32_t table[6] = {0, 1, 2, 3, 2, 0};
  carl_placement_t pl = {.E = 4, .D = 2, .slots = 3, .slot_expert = table};
  carl_topo_t t2 = {.nodes = 1, .devices_per_node = 2, .devices = 2};
  assert_int_equal(carl_load_groups(el, 4, &t2, &pl, 0, g, &n), CARL_OK);
  assert_int_equal(n, 2);
  assert_float_equal(g[0], 7, 1e-12);
  assert_float_equal(g[1], 6, 1e-12);
  assert_int_equal(carl_load_groups(el, 4, &t2, &pl, 1, g, &n), CARL_OK);
  assert_int_equal(n, 1);
  assert_float_equal(g[0], 13, 1e-12);
  carl_topo_t t4 = {.nodes = 2, .devices_per_node = 2, .devices = 4};
  assert_int_equal(carl_load_groups(el, 4, &t4, NULL, 1, g, &n), CARL_OK);
  assert_int_equal(n, 2);
  assert_float_equal(g[0], 6, 0);
  assert_float_equal(g[1], 7, 0);
  /* a placement whose E disagrees is an error */
  assert_int_equal(carl_load_groups(el, 3, &t2, &pl, 0, g, &n), CARL_ERR_INVALID);
}

/* Selectivity on one token z = [ln 4, ln 3, ln 2, ln 1] (s = [.4, .3, .2, .1]), k = 2:
 * S = {0, 2}: rho = (.4 + .2) / (.4 + .3) = 6/7; Jaccard with {0, 1} = 1/3.
 * S = {0, -1} (one slot dropped): rho = .4/.7; Jaccard = 1/2.
 * Token entropy: -(.4 ln .4 + .3 ln .3 + .2 ln .2 + .1 ln .1) = 1.2798542. */
static void test_selectivity(void **st) {
  (void)st;
  float z[8] = {(float)log(4), (float)log(3), (float)log(2), 0, (float)log(4), (float)log(3), (float)log(2), 0};
  int32_t ex[4] = {0, 2, 0, -1};
  double rho, jac, h, hl;
  assert_int_equal(carl_retained_mass(z, 1, 4, 0, ex, 2, &rho), CARL_OK);
  assert_float_equal(rho, 6.0 / 7, 1e-6);
  assert_int_equal(carl_topk_jaccard(z, 1, 4, 0, ex, 2, &jac), CARL_OK);
  assert_float_equal(jac, 1.0 / 3, 1e-12);
  assert_int_equal(carl_retained_mass(z, 2, 4, 0, ex, 2, &rho), CARL_OK);
  assert_float_equal(rho, (6.0 / 7 + 4.0 / 7) / 2, 1e-6);
  assert_int_equal(carl_topk_jaccard(z, 2, 4, 0, ex, 2, &jac), CARL_OK);
  assert_float_equal(jac, (1.0 / 3 + 0.5) / 2, 1e-12);
  assert_int_equal(carl_routing_entropy(z, 2, 4, 0, ex, 2, &h, &hl), CARL_OK);
  assert_float_equal(h, -(.4 * log(.4) + .3 * log(.3) + .2 * log(.2) + .1 * log(.1)), 1e-6);
  /* load entropy: loads e0 = 2, e2 = 1 of 3 -> -(2/3 ln 2/3 + 1/3 ln 1/3) = 0.6365142 */
  assert_float_equal(hl, 0.6365142, 1e-6);
  /* routing by plain top-k retains all mass and agrees fully */
  int32_t top[4] = {0, 1, 0, 1};
  assert_int_equal(carl_retained_mass(z, 2, 4, 0, top, 2, &rho), CARL_OK);
  assert_float_equal(rho, 1, 1e-7);
  assert_int_equal(carl_topk_jaccard(z, 2, 4, 0, top, 2, &jac), CARL_OK);
  assert_float_equal(jac, 1, 0);
  z[5] = NAN;
  assert_int_equal(carl_retained_mass(z, 2, 4, 0, top, 2, &rho), CARL_ERR_NUMERIC);
  assert_non_null(strstr(carl_errmsg(), "token 1"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_skew),
      cmocka_unit_test(test_loads),
      cmocka_unit_test(test_selectivity),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
