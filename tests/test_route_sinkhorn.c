/* sinkhorn: the closed-form 2x2 plan, plan marginals, gates, identity of the selection, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>

#include "route_testutil.h"

/* T = 2, E = 2, k = 1, z = [[2, 0], [1, 0]]. Both tokens prefer expert 0, but the balanced plan
 * P = [[a, 1/2 - a], [1/2 - a, a]] must satisfy (P00 P11)/(P01 P10) = (C00 C11)/(C01 C10) = e,
 * so a / (1/2 - a) = sqrt(e) -> a = 0.5 sqrt(e) / (1 + sqrt(e)) = 0.3112296.
 * Top-1 of the plan: token 0 -> expert 0, token 1 -> expert 1. Gates (k = 1): sigmoid(z) at the
 * chosen expert: sigmoid(2) = 0.8807971, sigmoid(0) = 0.5. */
static void test_closed_form(void **st) {
  (void)st;
  float z[4] = {2, 0, 1, 0};
  double d0[2], d1[2];
  float C[4];
  int it;
  double err;
  assert_int_equal(carl_sinkhorn_scalings(z, 2, 2, 1e-12, 10000, d0, d1, C, &it, &err), CARL_OK);
  double a = 0.5 * sqrt(exp(1.0)) / (1 + sqrt(exp(1.0)));
  assert_float_equal(d0[0] * exp(2.0) * d1[0], a, 1e-6);
  assert_float_equal(d0[1] * exp(0.0) * d1[1], a, 1e-6);
  assert_float_equal(d0[0] * exp(0.0) * d1[1], 0.5 - a, 1e-6);
  carl_router_t *r;
  assert_int_equal(tu_create("sinkhorn", "k=1", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 2, 1, 0);
  carl_route_in_t in = {.T = 2, .E = 2, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 0);
  assert_int_equal(o.experts[1], 1);
  assert_float_equal(o.weights[0], 0.8807971, 1e-6);
  assert_float_equal(o.weights[1], 0.5, 1e-6);
  /* no aux loss by default; only the z-loss */
  for (int i = 0; i < o.out.nloss; i++) assert_string_not_equal(o.out.loss[i].name, "aux");
  tu_out_free(&o);
  carl_router_free(r);
}

/* Marginals: after 200 iterations (float precision is reached by about 50) rows of P sum to 1/T
 * and columns to 1/E (skewed logits, T = 512, E = 16). Selection
 * equals the top-k of each plan row computed here in double; gates are softmax(z) (k > 1). */
static void test_marginals_and_selection(void **st) {
  (void)st;
  const int64_t T = 512;
  const int E = 16, k = 2;
  double off[16];
  for (int e = 0; e < E; e++) off[e] = 2.0 * e / (E - 1);
  float *z = malloc(sizeof(float) * T * E), *C = malloc(sizeof(float) * T * E);
  double *d0 = malloc(sizeof(double) * T), d1[16];
  tu_logits(z, T, E, off, 1.0, 5);
  int it;
  double err;
  /* tol = 0: run all 200 iterations (mean|d1 - d1_old| levels off near 3e-7 here: the 1e-8
   * guards make the common scale of d0 and d1 drift slowly; the plan itself has converged) */
  assert_int_equal(carl_sinkhorn_scalings(z, T, E, 0, 200, d0, d1, C, &it, &err), CARL_OK);
  assert_int_equal(it, 200);
  double col[16] = {0};
  for (int64_t t = 0; t < T; t++) {
    double row = 0;
    for (int e = 0; e < E; e++) {
      double p = d0[t] * exp((double)z[t * E + e]) * d1[e];
      row += p;
      col[e] += p;
    }
    assert_float_equal(row * T, 1.0, 1e-6);
  }
  for (int e = 0; e < E; e++) assert_float_equal(col[e] * E, 1.0, 1e-6);
  /* the router with a tight tolerance selects the plan's top-k */
  carl_router_t *r;
  assert_int_equal(tu_create("sinkhorn", "k=2 tol=0 max_iter=200", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  for (int64_t t = 0; t < T; t++) {
    double p[16], s[16];
    int32_t idx[2];
    for (int e = 0; e < E; e++) p[e] = d0[t] * exp((double)z[t * E + e]) * d1[e];
    tu_topk(p, E, k, idx);
    tu_scores(z + t * E, E, 0, s);
    for (int j = 0; j < k; j++) {
      assert_int_equal(o.experts[t * k + j], idx[j]);
      assert_float_equal(o.weights[t * k + j], s[idx[j]], 1e-6);
    }
  }
  /* and it balances far better than plain top-k on this skewed input */
  carl_router_t *tk;
  assert_int_equal(tu_create("topk", "k=2", &tk), CARL_OK);
  tu_out_t ot;
  tu_out_init(&ot, T, E, k, 0);
  assert_int_equal(carl_router_route(tk, &in, &ot.out), CARL_OK);
  assert_true(tu_maxvio(o.experts, T, k, E) < 0.5 * tu_maxvio(ot.experts, T, k, E));
  tu_out_free(&o);
  tu_out_free(&ot);
  carl_router_free(r);
  carl_router_free(tk);
  free(z);
  free(C);
  free(d0);
}

/* Large logits (max 500) do not overflow: the plan does not change under a constant shift. */
static void test_shift(void **st) {
  (void)st;
  float z[6] = {2, 0, 1, 1, 0, 3}, zs[6];
  for (int i = 0; i < 6; i++) zs[i] = z[i] + 497;
  double d0[2], d1[3], e0[2], e1[3];
  float C[6];
  int it;
  double err;
  assert_int_equal(carl_sinkhorn_scalings(z, 2, 3, 1e-12, 10000, d0, d1, C, &it, &err), CARL_OK);
  assert_int_equal(carl_sinkhorn_scalings(zs, 2, 3, 1e-12, 10000, e0, e1, C, &it, &err), CARL_OK);
  for (int t = 0; t < 2; t++)
    for (int e = 0; e < 3; e++) {
      double p = d0[t] * exp((double)z[t * 3 + e]) * d1[e];
      double q = e0[t] * (double)C[t * 3 + e] * e1[e];
      assert_float_equal(p, q, 1e-6);
    }
}

static void test_errors(void **st) {
  (void)st;
  float z[4] = {0, 1, INFINITY, 0};
  carl_router_t *r;
  assert_int_equal(tu_create("sinkhorn", "k=1", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 2, 1, 0);
  carl_route_in_t in = {.T = 2, .E = 2, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_NUMERIC);
  assert_non_null(strstr(carl_errmsg(), "token 1"));
  carl_router_free(r);
  assert_int_equal(tu_create("sinkhorn", "max_iter=0", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "max_iter"));
  tu_out_free(&o);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_closed_form), cmocka_unit_test(test_marginals_and_selection),
      cmocka_unit_test(test_shift),       cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
