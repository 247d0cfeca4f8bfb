/* Balance losses: closed-form values and gradients by central finite differences (in double). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>

#include "route_testutil.h"

/* Reference losses in double, written here from the definitions (ALGORITHMS.md 2.1, 2.11). */
static void ref_P(const float *z, int T, int E, int score, double *P) {
  for (int e = 0; e < E; e++) P[e] = 0;
  for (int t = 0; t < T; t++) {
    double s[16], a = 0;
    tu_scores(z + t * E, E, score, s);
    for (int e = 0; e < E; e++) a += s[e];
    for (int e = 0; e < E; e++) P[e] += (score == 1 ? s[e] / a : s[e]) / T;
  }
}
static void ref_f(const int32_t *ex, int T, int k, int E, double *f) {
  for (int e = 0; e < E; e++) f[e] = 0;
  for (int i = 0; i < T * k; i++)
    if (ex[i] >= 0) f[ex[i]] += 1.0 / (T * k);
}
/* which: 0 = L_E (coef 1), 1 = L_G (coef 1), 2 = z-loss (coef 1) */
static double ref_loss(int which, const float *z, int T, int E, int score, const int32_t *ex, int k, const int32_t *grp,
                       int G) {
  double P[16], f[16], v = 0;
  if (which == 2) {
    for (int t = 0; t < T; t++) {
      double m = z[t * E], a = 0;
      for (int e = 1; e < E; e++) m = z[t * E + e] > m ? z[t * E + e] : m;
      for (int e = 0; e < E; e++) a += exp(z[t * E + e] - m);
      v += (m + log(a)) * (m + log(a)) / T;
    }
    return v;
  }
  ref_P(z, T, E, score, P);
  ref_f(ex, T, k, E, f);
  if (which == 0) {
    for (int e = 0; e < E; e++) v += E * f[e] * P[e];
    return v;
  }
  for (int g = 0; g < G; g++) {
    double fg = 0, Pg = 0;
    int n = 0;
    for (int e = 0; e < E; e++)
      if (grp[e] == g) fg += f[e], Pg += P[e], n++;
    v += fg / n * Pg;
  }
  return v;
}

static void check_fd(int which, int score) {
  const int T = 7, E = 6, k = 2, G = 3;
  float z[42];
  tu_logits(z, T, E, NULL, 1.3, 40 + (uint64_t)which * 2 + (uint64_t)score);
  int32_t ex[14];
  for (int i = 0; i < T * k; i++) ex[i] = (int32_t)((i * 5 + i / 3) % E);
  ex[3] = -1; /* a dropped slot */
  int32_t grp[6] = {0, 0, 1, 1, 2, 2};
  const double coef = 0.7;
  float dz[42] = {0};
  double v = 0, vE = 0, vG = 0;
  if (which == 0) assert_int_equal(carl_loss_expert(z, T, E, score, ex, k, coef, &v, dz), CARL_OK);
  if (which == 1) assert_int_equal(carl_loss_group(z, T, E, score, ex, k, grp, G, coef, &v, dz), CARL_OK);
  if (which == 2) assert_int_equal(carl_loss_z(z, T, E, coef, &v, dz), CARL_OK);
  assert_float_equal(v, coef * ref_loss(which, z, T, E, score, ex, k, grp, G), 1e-6);
  if (which < 2) {
    /* the dual loss gives both values and the sum of both gradients */
    float dd[42] = {0};
    assert_int_equal(carl_loss_dual(z, T, E, score, ex, k, grp, G, 0.3, 0.9, &vE, &vG, dd), CARL_OK);
    assert_float_equal(vE, 0.3 * ref_loss(0, z, T, E, score, ex, k, grp, G), 1e-6);
    assert_float_equal(vG, 0.9 * ref_loss(1, z, T, E, score, ex, k, grp, G), 1e-6);
    /* the same values from statistics at hand: psum = T * P of the reference */
    double P[6], psum[6], wE = 0, wG = 0;
    ref_P(z, T, E, score, P);
    for (int e = 0; e < E; e++) psum[e] = P[e] * T;
    assert_int_equal(carl_loss_dual_value(ex, NULL, T, k, E, psum, grp, G, 0.3, 0.9, &wE, &wG), CARL_OK);
    assert_float_equal(wE, 0.3 * ref_loss(0, z, T, E, score, ex, k, grp, G), 1e-9);
    assert_float_equal(wG, 0.9 * ref_loss(1, z, T, E, score, ex, k, grp, G), 1e-9);
    /* and with the loads given: kept pairs per expert, counted here */
    double load[6] = {0};
    for (int i = 0; i < T * k; i++)
      if (ex[i] >= 0) load[ex[i]] += 1;
    assert_int_equal(carl_loss_dual_value(NULL, load, T, k, E, psum, grp, G, 0.3, 0.9, &wE, &wG), CARL_OK);
    assert_float_equal(wE, 0.3 * ref_loss(0, z, T, E, score, ex, k, grp, G), 1e-9);
    assert_float_equal(wG, 0.9 * ref_loss(1, z, T, E, score, ex, k, grp, G), 1e-9);
    for (int i = 0; i < T * E; i++) {
      float zp[42], zm[42];
      memcpy(zp, z, sizeof zp);
      memcpy(zm, z, sizeof zm);
      zp[i] += 1e-2f;
      zm[i] -= 1e-2f;
      double h = (double)zp[i] - zm[i];
      double fd = (0.3 * (ref_loss(0, zp, T, E, score, ex, k, grp, G) - ref_loss(0, zm, T, E, score, ex, k, grp, G)) +
                   0.9 * (ref_loss(1, zp, T, E, score, ex, k, grp, G) - ref_loss(1, zm, T, E, score, ex, k, grp, G))) / h;
      assert_float_equal(dd[i], fd, 2e-5);
    }
  }
  for (int i = 0; i < T * E; i++) {
    float zp[42], zm[42];
    memcpy(zp, z, sizeof zp);
    memcpy(zm, z, sizeof zm);
    zp[i] += 1e-2f;
    zm[i] -= 1e-2f;
    double h = (double)zp[i] - zm[i];
    double fd = coef * (ref_loss(which, zp, T, E, score, ex, k, grp, G) - ref_loss(which, zm, T, E, score, ex, k, grp, G)) / h;
    assert_float_equal(dz[i], fd, 2e-5 * (1 + fabs(fd)));
  }
}

static void test_expert_fd_softmax(void **st) { (void)st; check_fd(0, 0); }
static void test_expert_fd_sigmoid(void **st) { (void)st; check_fd(0, 1); }
static void test_group_fd_softmax(void **st) { (void)st; check_fd(1, 0); }
static void test_group_fd_sigmoid(void **st) { (void)st; check_fd(1, 1); }
static void test_z_fd(void **st) { (void)st; check_fd(2, 0); }

/* Closed forms: uniform routing (all logits equal, loads equal) gives L_E = 1 (Switch: "uniform
 * routing gives alpha"), L_G = 1/E for any equal-size groups; z-loss of z = 0 is ln(E)^2. */
static void test_closed_forms(void **st) {
  (void)st;
  const int T = 8, E = 4, k = 1;
  float z[32] = {0};
  int32_t ex[8] = {0, 1, 2, 3, 0, 1, 2, 3};
  int32_t grp[4] = {0, 0, 1, 1};
  double v;
  assert_int_equal(carl_loss_expert(z, T, E, 0, ex, k, 1.0, &v, NULL), CARL_OK);
  assert_float_equal(v, 1.0, 1e-7);
  assert_int_equal(carl_loss_group(z, T, E, 0, ex, k, grp, 2, 1.0, &v, NULL), CARL_OK);
  assert_float_equal(v, 0.25, 1e-7);
  assert_int_equal(carl_loss_z(z, T, E, 1.0, &v, NULL), CARL_OK);
  assert_float_equal(v, log(4.0) * log(4.0), 1e-6);
  /* all tokens on expert 0 with P uniform: L_E = E * 1 * 1/E = 1 too; with P concentrated on 0
   * (z0 = 30): L_E -> E = 4. */
  int32_t all0[8] = {0};
  for (int t = 0; t < T; t++) z[t * E] = 30;
  assert_int_equal(carl_loss_expert(z, T, E, 0, all0, k, 1.0, &v, NULL), CARL_OK);
  assert_float_equal(v, 4.0, 1e-6);
}

static void test_errors(void **st) {
  (void)st;
  float z[4] = {0, NAN, 0, 0};
  int32_t ex[2] = {0, 1}, bad[2] = {0, 7}, grp[2] = {0, 5};
  double v;
  assert_int_equal(carl_loss_expert(z, 2, 2, 0, ex, 1, 1, &v, NULL), CARL_ERR_NUMERIC);
  assert_non_null(strstr(carl_errmsg(), "token 0"));
  z[1] = 0;
  assert_int_equal(carl_loss_expert(z, 2, 2, 0, bad, 1, 1, &v, NULL), CARL_ERR_INVALID);
  assert_int_equal(carl_loss_group(z, 2, 2, 0, ex, 1, grp, 2, 1, &v, NULL), CARL_ERR_INVALID);
  assert_int_equal(carl_loss_z(z, 0, 2, 1, &v, NULL), CARL_ERR_INVALID);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_expert_fd_softmax), cmocka_unit_test(test_expert_fd_sigmoid),
      cmocka_unit_test(test_group_fd_softmax),  cmocka_unit_test(test_group_fd_sigmoid),
      cmocka_unit_test(test_z_fd),              cmocka_unit_test(test_closed_forms),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
