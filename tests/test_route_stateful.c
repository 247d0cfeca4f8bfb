/* lossfree and bip: hand-computed updates, balancing of a skewed stationary input, state files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <unistd.h>

#include "route_testutil.h"

/* The skewed stationary input of the balancing tests: E = 16 experts, T = 16384 tokens, k = 2;
 * z[t, e] = amp * e / 15 + N(0, 1), fresh noise every step (seed 100 + step). Expert 15 is
 * systematically preferred, expert 0 avoided. Returns the MaxVio of each step in mv. */
static void run_skewed(const char *router, const char *opts, double amp, int steps, double *mv) {
  const int64_t T = 16384;
  const int E = 16, k = 2;
  double off[16];
  for (int e = 0; e < E; e++) off[e] = amp * e / (E - 1);
  carl_router_t *r;
  assert_int_equal(tu_create(router, opts, &r), CARL_OK);
  float *z = malloc(sizeof(float) * T * E);
  tu_out_t o;
  tu_out_init(&o, T, E, k, 0);
  for (int step = 0; step < steps; step++) {
    tu_logits(z, T, E, off, 1.0, 100 + (uint64_t)step);
    carl_route_in_t in = {.T = T, .E = E, .logits = z, .step = step};
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
    mv[step] = tu_maxvio(o.experts, T, k, E);
    assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  }
  tu_out_free(&o);
  free(z);
  carl_router_free(r);
}

/* lossfree with the default u = 1e-3 and sigmoid scores, amp = 0.4: MaxVio starts above 0.3 and is
 * below 0.2 after 20 updates (steps 20..24). Plain topk on the same input stays above 0.3. */
static void test_lossfree_balances(void **st) {
  (void)st;
  double mv[25], base[2];
  run_skewed("lossfree", "k=2", 0.4, 25, mv);
  run_skewed("topk", "k=2 score=1", 0.4, 2, base);
  assert_true(mv[0] > 0.3);
  assert_true(base[0] > 0.3 && base[1] > 0.3);
  for (int s = 20; s < 25; s++) assert_true(mv[s] < 0.2);
}

/* bip (T_iter = 2, softmax scores), amp = 1.5: MaxVio starts above 1 and is below 0.2 after 5
 * updates (steps 5..9). */
static void test_bip_balances(void **st) {
  (void)st;
  double mv[10];
  run_skewed("bip", "k=2", 1.5, 10, mv);
  assert_true(mv[0] > 1.0);
  for (int s = 5; s < 10; s++) assert_true(mv[s] < 0.2);
}

/* lossfree update by hand: T = 4, E = 4, k = 1, z = one-hot preference for experts 0, 0, 0, 1:
 * loads [3, 1, 0, 0], mean 1 -> sign(mean - load) = [-1, 0, +1, +1] -> b = 1e-3 * [-1, 0, 1, 1].
 * Save, load into a fresh router, and the second route must match the original's. */
static void test_lossfree_update_and_state(void **st) {
  (void)st;
  float z[16] = {5, 0, 0, 0, 5, 0, 0, 0, 5, 0, 0, 0, 0, 5, 0, 0};
  carl_router_t *r, *r2;
  assert_int_equal(tu_create("lossfree", "k=1", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 4, 4, 1, 0);
  carl_route_in_t in = {.T = 4, .E = 4, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  const char *path = "test_lossfree.state";
  assert_int_equal(carl_router_save(r, path), CARL_OK);
  double b[4];
  assert_int_equal(carl_route_state_load(path, "lossfree", CARL_STATE_F64, 4, b, NULL, NULL), CARL_OK);
  double want[4] = {-1e-3, 0, 1e-3, 1e-3};
  for (int e = 0; e < 4; e++) assert_float_equal(b[e], want[e], 1e-9);
  /* round trip: a fresh router with the loaded bias routes like the original */
  assert_int_equal(tu_create("lossfree", "k=1", &r2), CARL_OK);
  assert_int_equal(carl_router_load(r2, path), CARL_OK);
  tu_out_t o2;
  tu_out_init(&o2, 4, 4, 1, 0);
  float z2[16] = {0.1f, 0.1f, 0.1f, 0.1f, 0, 0.5f, 0.5f, 0, 1, 1, 1, 1.0005f, 0, 0, 0, 0};
  in.logits = z2;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(r2, &in, &o2.out), CARL_OK);
  assert_memory_equal(o.experts, o2.experts, 4 * sizeof(int32_t));
  /* with b = [-1, 0, 1, 1] * 1e-3, token 0 (all equal) goes to expert 2, token 1 (tie 1 vs 2) to 2 */
  assert_int_equal(o.experts[0], 2);
  assert_int_equal(o.experts[1], 2);
  /* wrong size: r2 now has E = 4; a state of E = 8 is rejected */
  carl_router_t *r8;
  assert_int_equal(tu_create("lossfree", "k=1", &r8), CARL_OK);
  float z8[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  tu_out_t o8;
  tu_out_init(&o8, 1, 8, 1, 0);
  carl_route_in_t in8 = {.T = 1, .E = 8, .logits = z8};
  assert_int_equal(carl_router_route(r8, &in8, &o8.out), CARL_OK);
  assert_int_equal(carl_router_save(r8, "test_lossfree8.state"), CARL_OK);
  assert_int_equal(carl_router_load(r2, "test_lossfree8.state"), CARL_ERR_STATE);
  assert_non_null(strstr(carl_errmsg(), "8 entries"));
  /* a state of another router is rejected, and so is a truncated file */
  assert_int_equal(carl_route_state_save("test_other.state", "bip", CARL_STATE_F64, 4, b), CARL_OK);
  assert_int_equal(carl_router_load(r2, "test_other.state"), CARL_ERR_STATE);
  assert_non_null(strstr(carl_errmsg(), "bip"));
  FILE *f = fopen("test_trunc.state", "wb");
  fwrite("CARLRST1", 1, 8, f);
  fclose(f);
  assert_int_equal(carl_router_load(r2, "test_trunc.state"), CARL_ERR_PARSE);
  assert_int_equal(carl_router_load(r2, "no/such/file.state"), CARL_ERR_IO);
  unlink(path);
  unlink("test_lossfree8.state");
  unlink("test_other.state");
  unlink("test_trunc.state");
  tu_out_free(&o);
  tu_out_free(&o2);
  tu_out_free(&o8);
  carl_router_free(r);
  carl_router_free(r2);
  carl_router_free(r8);
}

/* bip duals by hand: T = 4, E = 2, k = 1, s[., 0] = .9 .8 .7 .6 (s[., 1] = 1 - s[., 0]),
 * capacity floor(kT/E) = 2 -> q_j = max(0, 3rd largest_i (s_ij - p_i)).
 * iter 1: p = 2nd largest of s_i - 0 = [.1 .2 .3 .4]; q0 = 3rd of [.8 .6 .4 .2] = .4;
 *         q1 = 3rd of [0 0 0 0] = 0.
 * iter 2: p = 2nd largest of [s_i0 - .4, s_i1] = [.1 .2 .3 .2]; q0 = 3rd of [.8 .6 .4 .4] = .4;
 *         q1 = 3rd of [0 0 0 .2] = 0.   -> q = [0.4, 0]. */
static void test_bip_hand(void **st) {
  (void)st;
  float z[8];
  double s0[4] = {.9, .8, .7, .6};
  for (int t = 0; t < 4; t++) {
    z[2 * t] = (float)log(s0[t]);
    z[2 * t + 1] = (float)log(1 - s0[t]);
  }
  carl_router_t *r;
  assert_int_equal(tu_create("bip", "k=1", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 4, 2, 1, 0);
  carl_route_in_t in = {.T = 4, .E = 2, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  for (int t = 0; t < 4; t++) assert_int_equal(o.experts[t], 0); /* q = 0: plain top-1 */
  assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_save(r, "test_bip.state"), CARL_OK);
  double q[2];
  assert_int_equal(carl_route_state_load("test_bip.state", "bip", CARL_STATE_F64, 2, q, NULL, NULL), CARL_OK);
  assert_float_equal(q[0], 0.4, 1e-6);
  assert_float_equal(q[1], 0.0, 1e-6);
  /* round trip into a fresh router; wrong-size state rejected */
  carl_router_t *r2;
  assert_int_equal(tu_create("bip", "k=1", &r2), CARL_OK);
  assert_int_equal(carl_router_load(r2, "test_bip.state"), CARL_OK);
  tu_out_t o2;
  tu_out_init(&o2, 4, 2, 1, 0);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(r2, &in, &o2.out), CARL_OK);
  assert_memory_equal(o.experts, o2.experts, 4 * sizeof(int32_t));
  /* s - q: token 3 = [.2, .4] -> expert 1; token 0 = [.5, .1] -> expert 0 */
  assert_int_equal(o.experts[3], 1);
  assert_int_equal(o.experts[0], 0);
  double q3[3] = {0, 0, 0};
  assert_int_equal(carl_route_state_save("test_bip3.state", "bip", CARL_STATE_F64, 3, q3), CARL_OK);
  assert_int_equal(carl_router_load(r2, "test_bip3.state"), CARL_ERR_STATE);
  unlink("test_bip.state");
  unlink("test_bip3.state");
  tu_out_free(&o);
  tu_out_free(&o2);
  carl_router_free(r);
  carl_router_free(r2);
}

/* bip's dual update against a brute-force reference (full sorts) on a random case. */
static int dcmp_desc(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x < y) - (x > y);
}
static void test_bip_vs_reference(void **st) {
  (void)st;
  const int T = 300, E = 7, k = 2;
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.0, 77);
  carl_router_t *r;
  assert_int_equal(tu_create("bip", "k=2 T_iter=3", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_save(r, "test_bipref.state"), CARL_OK);
  double q[7];
  assert_int_equal(carl_route_state_load("test_bipref.state", "bip", CARL_STATE_F64, E, q, NULL, NULL), CARL_OK);
  double ref[7] = {0}, p[300], buf[300], s[7];
  int cap = k * T / E;
  for (int it = 0; it < 3; it++) {
    for (int t = 0; t < T; t++) {
      tu_scores(z + t * E, E, 0, s);
      for (int e = 0; e < E; e++) buf[e] = (float)s[e] - ref[e];
      qsort(buf, E, sizeof(double), dcmp_desc);
      p[t] = buf[k] > 0 ? buf[k] : 0;
    }
    for (int e = 0; e < E; e++) {
      for (int t = 0; t < T; t++) {
        tu_scores(z + t * E, E, 0, s);
        buf[t] = (float)s[e] - p[t];
      }
      qsort(buf, T, sizeof(double), dcmp_desc);
      ref[e] = buf[cap] > 0 ? buf[cap] : 0;
    }
  }
  for (int e = 0; e < E; e++) assert_float_equal(q[e], ref[e], 1e-6);
  unlink("test_bipref.state");
  tu_out_free(&o);
  free(z);
  carl_router_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lossfree_update_and_state), cmocka_unit_test(test_bip_hand),
      cmocka_unit_test(test_bip_vs_reference),          cmocka_unit_test(test_lossfree_balances),
      cmocka_unit_test(test_bip_balances),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
