/* topk / switch routers, the registry and the common machinery: hand-computed cases, the tie rule,
 * capacity dropping, gradients by finite differences, option and input errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <omp.h>
#include <stdio.h>

#include "route_testutil.h"

/* Row 0: z = [1, 3, 2, 0]: top-2 = {1, 2}; renormalised gates = softmax over the two logits
 * = [1/(1+e^-1), e^-1/(1+e^-1)] = [0.7310586, 0.2689414].
 * Row 1: z = [0, 0, 0, 0]: all tied, the lower indices win: {0, 1}, gates 0.5, 0.5. */
static void test_topk_hand(void **st) {
  (void)st;
  float z[8] = {1, 3, 2, 0, 0, 0, 0, 0};
  carl_router_t *r;
  assert_int_equal(tu_create("topk", "k=2", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 4, 2, 0);
  carl_route_in_t in = {.T = 2, .E = 4, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 1);
  assert_int_equal(o.experts[1], 2);
  assert_float_equal(o.weights[0], 0.7310586, 1e-6);
  assert_float_equal(o.weights[1], 0.2689414, 1e-6);
  assert_int_equal(o.experts[2], 0);
  assert_int_equal(o.experts[3], 1);
  assert_float_equal(o.weights[2], 0.5, 1e-7);
  assert_float_equal(o.weights[3], 0.5, 1e-7);
  assert_int_equal(o.out.dropped, 0);
  assert_int_equal(o.out.capacity, 0);
  /* losses: z-loss 1e-3 * mean(lse^2); lse0 = ln(e+e^3+e^2+1) = ln 31.19287 = 3.440188, lse1 = ln 4.
   * aux = 0.01 * E * sum f P: f = [1,2,1,0]/4 experts... loads e0:1 e1:2 e2:1 e3:0 over T*k = 4;
   * P = mean of s: s0 = [.0871443,.6439142,.2368828,.0320586], s1 = .25 each. */
  double lse0 = log(exp(1) + exp(3) + exp(2) + 1), lse1 = log(4.0);
  double zl = 1e-3 * (lse0 * lse0 + lse1 * lse1) / 2;
  double s0[4] = {exp(1) / 31.192874, exp(3) / 31.192874, exp(2) / 31.192874, 1 / 31.192874};
  double f[4] = {0.25, 0.5, 0.25, 0};
  double aux = 0;
  for (int e = 0; e < 4; e++) aux += f[e] * (s0[e] + 0.25) / 2;
  aux *= 0.01 * 4;
  int found = 0;
  for (int i = 0; i < o.out.nloss; i++) {
    if (!strcmp(o.out.loss[i].name, "z")) assert_float_equal(o.out.loss[i].value, zl, 1e-8), found++;
    if (!strcmp(o.out.loss[i].name, "aux")) assert_float_equal(o.out.loss[i].value, aux, 1e-8), found++;
  }
  assert_int_equal(found, 2);
  assert_float_equal(o.out.loss_total, zl + aux, 1e-8);
  tu_out_free(&o);
  carl_router_free(r);
}

/* switch: k = 1, gate = softmax probability (not renormalised). Capacity with cf = 1, T = 4, E = 2:
 * C = ceil(1 * 4 * 1 / 2) = 2. z[t] = [a_t, 0], a = [1, 3, 2, 0.5]: all pick expert 0; it keeps the two
 * highest scores (tokens 1 and 2), tokens 0 and 3 are dropped. Gate of token 1 = 1/(1+e^-3). */
static void test_switch_capacity(void **st) {
  (void)st;
  float z[8] = {1, 0, 3, 0, 2, 0, 0.5f, 0};
  carl_router_t *r;
  assert_int_equal(tu_create("switch", "capacity_factor=1", &r), CARL_OK);
  assert_int_equal((int)carl_router_get(r, "k"), 1);
  tu_out_t o;
  tu_out_init(&o, 4, 2, 1, 0);
  carl_route_in_t in = {.T = 4, .E = 2, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.out.capacity, 2);
  assert_int_equal(o.out.dropped, 2);
  int32_t want[4] = {-1, 0, 0, -1};
  for (int t = 0; t < 4; t++) assert_int_equal(o.experts[t], want[t]);
  assert_float_equal(o.weights[0], 0, 0);
  assert_float_equal(o.weights[1], 1 / (1 + exp(-3.0)), 1e-6);
  assert_float_equal(o.weights[2], 1 / (1 + exp(-2.0)), 1e-6);
  double rate = carl_drop_rate(o.experts, 4, 1);
  assert_float_equal(rate, 0.5, 1e-12);
  tu_out_free(&o);
  carl_router_free(r);
}

/* Capacity tie rule: equal scores, the higher token index is dropped first. T = 4 identical tokens
 * z = [1, 0], k = 1, cf = 0.5 -> C = ceil(0.5 * 4 / 2) = 1: only token 0 keeps expert 0. */
static void test_capacity_ties(void **st) {
  (void)st;
  float z[8] = {1, 0, 1, 0, 1, 0, 1, 0};
  carl_router_t *r;
  assert_int_equal(tu_create("topk", "k=1 capacity_factor=0.5", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 4, 2, 1, 0);
  carl_route_in_t in = {.T = 4, .E = 2, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.out.capacity, 1);
  assert_int_equal(o.experts[0], 0);
  for (int t = 1; t < 4; t++) assert_int_equal(o.experts[t], -1);
  /* k = 1 with renorm: the kept gate is 1 */
  assert_float_equal(o.weights[0], 1.0, 1e-7);
  tu_out_free(&o);
  carl_router_free(r);
}

/* Renormalisation over the kept experts after a drop: k = 2, E = 2, T = 2, cf = 0.5 -> C = 1.
 * Both tokens pick {0, 1} (z = [2, 0] and [1, 0]); per expert the higher-score pair stays:
 * expert 0 keeps token 0 (s = .8808 > .7311), expert 1 keeps token 1 (s = .2689 > .1192).
 * So token 0 keeps only expert 0 (gate 1) and token 1 only expert 1 (gate 1). */
static void test_capacity_renorm(void **st) {
  (void)st;
  float z[4] = {2, 0, 1, 0};
  carl_router_t *r;
  assert_int_equal(tu_create("topk", "k=2 capacity_factor=0.5", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 2, 2, 0);
  carl_route_in_t in = {.T = 2, .E = 2, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.out.dropped, 2);
  assert_int_equal(o.experts[0], 0);
  assert_int_equal(o.experts[1], -1);
  assert_int_equal(o.experts[2], -1);
  assert_int_equal(o.experts[3], 1);
  assert_float_equal(o.weights[0], 1, 1e-7);
  assert_float_equal(o.weights[3], 1, 1e-7);
  tu_out_free(&o);
  carl_router_free(r);
}

/* The fast top-k against a full selection sort, on random rows and on rows with many ties
 * (values quantised to 4 levels), for several k and E (including E not a multiple of 16). */
static void test_topk_vs_reference(void **st) {
  (void)st;
  int Es[] = {1, 5, 16, 37, 64, 256};
  for (size_t ie = 0; ie < sizeof Es / sizeof Es[0]; ie++) {
    int E = Es[ie];
    float v[256];
    double vd[256];
    int32_t idx[256], ref[256];
    float val[256];
    for (int rep = 0; rep < 200; rep++) {
      for (int e = 0; e < E; e++) {
        float u = carl_rng_uniform(7, CARL_STREAM_DATA, (uint64_t)(rep * 1000 + e));
        v[e] = rep % 2 ? floorf(u * 4) : u;
        vd[e] = v[e];
      }
      for (int k = 1; k <= E && k <= 9; k++) {
        carl_kern_topk_row(v, E, k, idx, val);
        tu_topk(vd, E, k, ref);
        for (int j = 0; j < k; j++) {
          assert_int_equal(idx[j], ref[j]);
          assert_float_equal(val[j], v[ref[j]], 0);
        }
      }
    }
  }
}

/* The fused kernel against the double reference, E = 64 and 256, k = 8: the same experts in the
 * same order and gates within 1e-6, for softmax and sigmoid, with and without the losses (without
 * them the kernel never forms the full softmax), on continuous logits and on logits quantised to
 * 4 levels (many exact ties: the lower index must win). */
static void test_topk_random_vs_reference(void **st) {
  (void)st;
  const int64_t T = 700;
  const int k = 8;
  const int Es[2] = {64, 256};
  const char *extra[2] = {"", "aux=0 z_loss=0"};
  for (int ie = 0; ie < 2; ie++)
    for (int quant = 0; quant <= 1; quant++)
      for (int score = 0; score <= 1; score++)
        for (int ex = 0; ex < 2; ex++) {
          const int E = Es[ie];
          float *z = malloc(sizeof(float) * T * E);
          tu_logits(z, T, E, NULL, 2.0, 11 + (uint64_t)quant);
          if (quant)
            for (int64_t i = 0; i < T * E; i++) z[i] = floorf(z[i]);
          carl_router_t *r;
          char opt[96];
          snprintf(opt, sizeof opt, "k=8 score=%d %s", score, extra[ex]);
          assert_int_equal(tu_create("topk", opt, &r), CARL_OK);
          tu_out_t o;
          tu_out_init(&o, T, E, k, 0);
          carl_route_in_t in = {.T = T, .E = E, .logits = z};
          assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
          for (int64_t t = 0; t < T; t++) {
            double s[256];
            int32_t ref[8];
            tu_scores(z + t * E, E, score, s);
            tu_topk(s, E, k, ref);
            double a = 0;
            for (int j = 0; j < k; j++) a += s[ref[j]];
            for (int j = 0; j < k; j++) {
              assert_int_equal(o.experts[t * k + j], ref[j]);
              assert_float_equal(o.weights[t * k + j], s[ref[j]] / a, 1e-6);
            }
          }
          tu_out_free(&o);
          carl_router_free(r);
          free(z);
        }
}

/* d(sum_j r_j w_j)/dz by central differences (double reference of the gates) against the router's
 * backward, for softmax/sigmoid and renorm on/off. */
static double gate_objective(const float *z, int E, int k, int score, int renorm, const int32_t *ex, const double *rw) {
  double s[16], a = 0, v = 0;
  tu_scores(z, E, score, s);
  for (int j = 0; j < k; j++) a += s[ex[j]];
  for (int j = 0; j < k; j++) v += rw[j] * s[ex[j]] / (renorm ? a : 1.0);
  return v;
}

static void test_gate_backward_fd(void **st) {
  (void)st;
  const int T = 5, E = 6, k = 3;
  float z[30];
  tu_logits(z, T, E, NULL, 1.0, 3);
  for (int score = 0; score <= 1; score++)
    for (int renorm = 0; renorm <= 1; renorm++) {
      carl_router_t *r;
      char opt[64];
      snprintf(opt, sizeof opt, "k=3 score=%d renorm=%d", score, renorm);
      assert_int_equal(tu_create("topk", opt, &r), CARL_OK);
      tu_out_t o;
      tu_out_init(&o, T, E, k, 0);
      carl_route_in_t in = {.T = T, .E = E, .logits = z};
      assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
      float dw[15], dz[30] = {0};
      double rw[15];
      for (int i = 0; i < 15; i++) rw[i] = dw[i] = carl_rng_normal(5, CARL_STREAM_DATA, (uint64_t)i);
      assert_int_equal(carl_router_backward(r, &in, &o.out, dw, dz), CARL_OK);
      for (int t = 0; t < T; t++)
        for (int e = 0; e < E; e++) {
          float zp[6], zm[6];
          memcpy(zp, z + t * E, sizeof zp);
          memcpy(zm, z + t * E, sizeof zm);
          const double h = 1e-3;
          zp[e] += (float)h;
          zm[e] -= (float)h;
          double hp = zp[e] - z[t * E + e], hm = z[t * E + e] - zm[e];
          double fd = (gate_objective(zp, E, k, score, renorm, o.experts + t * k, rw + t * k) -
                       gate_objective(zm, E, k, score, renorm, o.experts + t * k, rw + t * k)) / (hp + hm);
          assert_float_equal(dz[t * E + e], fd, 1e-4);
        }
      tu_out_free(&o);
      carl_router_free(r);
    }
}

/* dlogits of route (aux + z losses) against central differences of loss_total; the selection does
 * not change under the small perturbations (f is piecewise constant). */
static void test_route_loss_gradient_fd(void **st) {
  (void)st;
  const int T = 6, E = 5, k = 2;
  float z[30];
  tu_logits(z, T, E, NULL, 1.5, 9);
  carl_router_t *r;
  assert_int_equal(tu_create("topk", "k=2 aux=0.3 z_loss=0.01", &r), CARL_OK);
  tu_out_t o, p;
  tu_out_init(&o, T, E, k, 1);
  tu_out_init(&p, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  for (int i = 0; i < T * E; i++) {
    const float h = 1e-2f;
    float keep = z[i];
    z[i] = keep + h;
    assert_int_equal(carl_router_route(r, &in, &p.out), CARL_OK);
    assert_memory_equal(p.experts, o.experts, sizeof(int32_t) * T * k);
    double lp = p.out.loss_total;
    z[i] = keep - h;
    assert_int_equal(carl_router_route(r, &in, &p.out), CARL_OK);
    double lm = p.out.loss_total;
    z[i] = keep;
    assert_float_equal(o.dlogits[i], (lp - lm) / (2 * h), 2e-5);
  }
  tu_out_free(&o);
  tu_out_free(&p);
  carl_router_free(r);
}

/* The same outputs, bit for bit, with 1 and 2 threads (T = 3000 spans many blocks). */
static void test_thread_independence(void **st) {
  (void)st;
  const int64_t T = 3000;
  const int E = 32, k = 4;
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.0, 21);
  tu_out_t a, b;
  tu_out_init(&a, T, E, k, 1);
  tu_out_init(&b, T, E, k, 1);
  carl_router_t *r;
  assert_int_equal(tu_create("topk", "k=4 capacity_factor=1 jitter=0.1", &r), CARL_OK);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .seed = 5, .step = 3};
  omp_set_num_threads(1);
  assert_int_equal(carl_router_route(r, &in, &a.out), CARL_OK);
  omp_set_num_threads(2);
  assert_int_equal(carl_router_route(r, &in, &b.out), CARL_OK);
  assert_memory_equal(a.experts, b.experts, sizeof(int32_t) * T * k);
  assert_memory_equal(a.weights, b.weights, sizeof(float) * T * k);
  assert_memory_equal(a.dlogits, b.dlogits, sizeof(float) * T * E);
  assert_true(a.out.loss_total == b.out.loss_total);
  assert_true(a.out.dropped > 0);
  tu_out_free(&a);
  tu_out_free(&b);
  carl_router_free(r);
  free(z);
}

/* Jitter changes the selection only: gates are still the clean s at the chosen experts. With a huge
 * jitter, some token picks a non-top-k expert, and other seeds give other choices. */
static void test_jitter(void **st) {
  (void)st;
  const int64_t T = 200;
  const int E = 8;
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.0, 4);
  carl_router_t *r;
  assert_int_equal(tu_create("topk", "k=1 renorm=0 jitter=10", &r), CARL_OK);
  tu_out_t a;
  tu_out_init(&a, T, E, 1, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .seed = 1};
  assert_int_equal(carl_router_route(r, &in, &a.out), CARL_OK);
  int differ = 0;
  for (int64_t t = 0; t < T; t++) {
    double s[8];
    int32_t ref;
    tu_scores(z + t * E, E, 0, s);
    tu_topk(s, E, 1, &ref);
    differ += a.experts[t] != ref;
    assert_float_equal(a.weights[t], s[a.experts[t]], 1e-6);
  }
  assert_true(differ > T / 4);
  tu_out_free(&a);
  carl_router_free(r);
  free(z);
}

static void test_errors(void **st) {
  (void)st;
  carl_router_t *r = NULL;
  /* unknown router and option */
  assert_int_equal(tu_create("nosuch", "", &r), CARL_ERR_NOT_FOUND);
  assert_non_null(strstr(carl_errmsg(), "nosuch"));
  assert_int_equal(tu_create("topk", "k=2 foo=1", &r), CARL_ERR_NOT_FOUND);
  assert_non_null(strstr(carl_errmsg(), "'foo'"));
  /* out of range values */
  assert_int_equal(tu_create("topk", "k=0", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "k = 0"));
  assert_int_equal(tu_create("topk", "k=-3", &r), CARL_ERR_INVALID);
  assert_int_equal(tu_create("topk", "k=1.5", &r), CARL_ERR_INVALID);
  assert_int_equal(tu_create("topk", "capacity_factor=-1", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "capacity_factor"));
  assert_int_equal(tu_create("topk", "score=2", &r), CARL_ERR_INVALID);
  assert_null(r);
  /* k > E at route time */
  assert_int_equal(tu_create("topk", "k=5", &r), CARL_OK);
  float z[8] = {0, 1, 2, 3, NAN, 1, 2, 3};
  tu_out_t o;
  tu_out_init(&o, 2, 4, 5, 0);
  carl_route_in_t in = {.T = 2, .E = 4, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "k: 5"));
  carl_router_free(r);
  /* NaN / Inf logits name the token */
  assert_int_equal(tu_create("topk", "k=2", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_NUMERIC);
  assert_non_null(strstr(carl_errmsg(), "token 1"));
  z[4] = 1;
  z[2] = -INFINITY;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_NUMERIC);
  assert_non_null(strstr(carl_errmsg(), "token 0"));
  z[2] = 2;
  /* bad src */
  int32_t src[2] = {0, 3};
  in.src = src;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "src"));
  in.src = NULL;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  /* no state to save */
  assert_int_equal(carl_router_save(r, "x.state"), CARL_ERR_STATE);
  carl_router_free(r);
  tu_out_free(&o);
}

/* Registry: every name resolves, options list starts with the common ones, overrides apply. */
static void test_registry(void **st) {
  (void)st;
  const char *const *names = carl_router_names();
  int n = 0;
  for (; names[n]; n++) assert_non_null(carl_router_find(names[n]));
  assert_true(n >= 8);
  const carl_opt_t *opts[64];
  int m = carl_router_options("switch", opts, 64);
  assert_true(m >= CARL_NCOMMON);
  assert_string_equal(opts[CARL_OPT_K]->name, "k");
  assert_float_equal(opts[CARL_OPT_K]->def, 1, 0);
  assert_string_equal(opts[CARL_OPT_AUX]->name, "aux");
  assert_true(carl_router_options("nosuch", opts, 64) < 0);
  carl_router_t *r;
  assert_int_equal(tu_create("topk", "", &r), CARL_OK);
  assert_float_equal(carl_router_get(r, "k"), 2, 0);
  assert_float_equal(carl_router_get(r, "z_loss"), 1e-3, 0);
  assert_true(isnan(carl_router_get(r, "nosuch")));
  carl_router_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_topk_hand),          cmocka_unit_test(test_switch_capacity),
      cmocka_unit_test(test_capacity_ties),      cmocka_unit_test(test_capacity_renorm),
      cmocka_unit_test(test_topk_vs_reference),  cmocka_unit_test(test_topk_random_vs_reference),
      cmocka_unit_test(test_gate_backward_fd),   cmocka_unit_test(test_route_loss_gradient_fd),
      cmocka_unit_test(test_thread_independence), cmocka_unit_test(test_jitter),
      cmocka_unit_test(test_errors),             cmocka_unit_test(test_registry),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
