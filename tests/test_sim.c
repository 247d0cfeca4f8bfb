/* Simulator workloads and the gate model: closed forms, hand-computed cases, finite differences,
 * and a naive matrix product as the reference for the BLAS gate. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/sim.h"

static carl_workload_cfg_t small_cfg(int scenario) {
  carl_workload_cfg_t c;
  carl_workload_defaults(&c);
  c.scenario = scenario;
  c.E = 16;
  c.d = 8;
  c.D = 4;
  c.layers = 2;
  c.clusters = 8;
  c.steps = 100;
  c.seed = 7;
  return c;
}

/* token t lives on device floor(t*D/T): T=10, D=4 gives 0,0,0,1,1,2,2,2,3,3 (by hand). */
static void test_sources(void **s) {
  (void)s;
  carl_workload_cfg_t c = small_cfg(CARL_SCEN_BALANCED);
  carl_workload_t w;
  assert_int_equal(carl_workload_init(&w, &c), CARL_OK);
  int32_t src[10];
  carl_workload_tokens(&w, 0, 10, NULL, src, NULL);
  const int32_t want[10] = {0, 0, 0, 1, 1, 2, 2, 2, 3, 3};
  for (int t = 0; t < 10; t++) assert_int_equal(src[t], want[t]);
  carl_workload_free(&w);
}

/* Topic frequencies: with seq_coherence = 0 every token draws its topic independently from the
 * popularity: uniform for balanced, p_c = (c+1)^-s / H for zipf. Each count within 5 sigma of
 * the binomial mean. */
static void test_popularity(void **s) {
  (void)s;
  for (int scen = 0; scen < 2; scen++) {
    carl_workload_cfg_t c = small_cfg(scen == 0 ? CARL_SCEN_BALANCED : CARL_SCEN_ZIPF);
    c.seq_coherence = 0;
    c.home_bias = 0;
    c.zipf = 1.2;
    carl_workload_t w;
    assert_int_equal(carl_workload_init(&w, &c), CARL_OK);
    const int64_t T = 20000;
    const int steps = 5;
    int32_t *cl = malloc(T * sizeof(int32_t));
    double cnt[8] = {0};
    for (int st = 0; st < steps; st++) {
      carl_workload_tokens(&w, st, T, cl, NULL, NULL);
      for (int64_t t = 0; t < T; t++) {
        assert_true(cl[t] >= 0 && cl[t] < 8);
        cnt[cl[t]]++;
      }
    }
    double H = 0;
    for (int k = 0; k < 8; k++) H += pow(k + 1, -1.2);
    double n = (double)T * steps;
    for (int k = 0; k < 8; k++) {
      double p = scen == 0 ? 1.0 / 8 : pow(k + 1, -1.2) / H;
      assert_true(fabs(cnt[k] - n * p) < 5 * sqrt(n * p * (1 - p)));
    }
    free(cl);
    carl_workload_free(&w);
  }
}

/* Same (seed, step) gives the same tokens; another step or seed gives others. */
static void test_determinism(void **s) {
  (void)s;
  carl_workload_cfg_t c = small_cfg(CARL_SCEN_ZIPF);
  carl_workload_t w1, w2;
  assert_int_equal(carl_workload_init(&w1, &c), CARL_OK);
  c.seed = 8;
  assert_int_equal(carl_workload_init(&w2, &c), CARL_OK);
  int32_t a[512], b[512], x[512];
  float fa[512 * 8], fb[512 * 8];
  carl_workload_tokens(&w1, 3, 512, a, NULL, NULL);
  carl_workload_tokens(&w1, 3, 512, b, NULL, NULL);
  assert_memory_equal(a, b, sizeof a);
  carl_workload_features(&w1, 3, 1, 512, a, fa);
  carl_workload_features(&w1, 3, 1, 512, a, fb);
  assert_memory_equal(fa, fb, sizeof fa);
  carl_workload_tokens(&w2, 3, 512, x, NULL, NULL);
  assert_true(memcmp(a, x, sizeof a) != 0);
  carl_workload_tokens(&w1, 4, 512, x, NULL, NULL);
  assert_true(memcmp(a, x, sizeof a) != 0);
  carl_workload_free(&w1);
  carl_workload_free(&w2);
}

/* Sequences keep their topic: with seq_coherence = 1 and seq_len = 16, every aligned block of 16
 * tokens on a device has one topic. */
static void test_sequences(void **s) {
  (void)s;
  carl_workload_cfg_t c = small_cfg(CARL_SCEN_ZIPF);
  c.seq_coherence = 1;
  c.seq_len = 16;
  carl_workload_t w;
  assert_int_equal(carl_workload_init(&w, &c), CARL_OK);
  int32_t cl[256];
  carl_workload_tokens(&w, 2, 256, cl, NULL, NULL); /* 64 tokens per device, 4 sequences each */
  int distinct_blocks = 0;
  for (int b = 0; b < 16; b++) {
    for (int j = 1; j < 16; j++) assert_int_equal(cl[b * 16 + j], cl[b * 16]);
    if (b && cl[b * 16] != cl[(b - 1) * 16]) distinct_blocks++;
  }
  assert_true(distinct_blocks > 0);
  carl_workload_free(&w);
}

/* Teacher: rows are distributions; hot_expert multiplies the odds of expert 0 against any other
 * expert by exp(hot) relative to zipf (same seed, same tables): p0/p1 (hot) = e^hot p0/p1 (zipf). */
static void test_teacher(void **s) {
  (void)s;
  carl_workload_cfg_t c = small_cfg(CARL_SCEN_ZIPF);
  carl_workload_t wz, wh, wd;
  assert_int_equal(carl_workload_init(&wz, &c), CARL_OK);
  c.scenario = CARL_SCEN_HOT_EXPERT;
  c.hot = 1.5;
  assert_int_equal(carl_workload_init(&wh, &c), CARL_OK);
  c.scenario = CARL_SCEN_HOT_DEVICE;
  assert_int_equal(carl_workload_init(&wd, &c), CARL_OK);
  float pz[8 * 16], ph[8 * 16], pd[8 * 16];
  carl_workload_teacher(&wz, 5, 1, pz);
  carl_workload_teacher(&wh, 5, 1, ph);
  carl_workload_teacher(&wd, 5, 1, pd);
  for (int k = 0; k < 8; k++) {
    double sum = 0;
    for (int e = 0; e < 16; e++) sum += pz[k * 16 + e];
    assert_true(fabs(sum - 1) < 1e-5);
    double rz = pz[k * 16 + 0] / pz[k * 16 + 1], rh = ph[k * 16 + 0] / ph[k * 16 + 1];
    assert_true(fabs(rh / rz / exp(1.5) - 1) < 1e-4);
    /* hot_device: experts 0..3 (E/D = 4) boosted: expert 3 vs 4 odds up by e^1.5, 4 vs 5 unchanged */
    double r34z = pz[k * 16 + 3] / pz[k * 16 + 4], r34d = pd[k * 16 + 3] / pd[k * 16 + 4];
    assert_true(fabs(r34d / r34z / exp(1.5) - 1) < 1e-4);
    double r45z = pz[k * 16 + 4] / pz[k * 16 + 5], r45d = pd[k * 16 + 4] / pd[k * 16 + 5];
    assert_true(fabs(r45d / r45z - 1) < 1e-4);
  }
  carl_workload_free(&wz);
  carl_workload_free(&wh);
  carl_workload_free(&wd);
}

/* Rotating: at step 0 group 0 (experts 0..3) is hot, at step `period` group 1 (experts 4..7). */
static void test_rotating(void **s) {
  (void)s;
  carl_workload_cfg_t c = small_cfg(CARL_SCEN_ZIPF);
  carl_workload_t wz, wr;
  assert_int_equal(carl_workload_init(&wz, &c), CARL_OK);
  c.scenario = CARL_SCEN_ROTATING;
  c.hot = 2.0;
  c.period = 10;
  assert_int_equal(carl_workload_init(&wr, &c), CARL_OK);
  float pz[8 * 16], p0[8 * 16], p1[8 * 16];
  carl_workload_teacher(&wz, 0, 0, pz);
  carl_workload_teacher(&wr, 0, 0, p0);
  carl_workload_teacher(&wr, 10, 0, p1);
  /* odds of expert 2 vs expert 6 */
  double rz = pz[2] / pz[6], r0 = p0[2] / p0[6], r1 = p1[2] / p1[6];
  assert_true(fabs(r0 / rz / exp(2.0) - 1) < 1e-4);
  assert_true(fabs(r1 / rz * exp(2.0) - 1) < 1e-4);
  carl_workload_free(&wz);
  carl_workload_free(&wr);
}

/* Burst: during a burst window (the last burst_len steps of each period) at least burst_frac of the
 * tokens share one topic; outside it the most common topic has less than that (zipf, s = 0.5). */
static void test_burst(void **s) {
  (void)s;
  carl_workload_cfg_t c = small_cfg(CARL_SCEN_BURST);
  c.zipf = 0.5;
  c.seq_coherence = 0;
  c.home_bias = 0;
  c.period = 20;
  c.burst_len = 5;
  c.burst_frac = 0.6;
  carl_workload_t w;
  assert_int_equal(carl_workload_init(&w, &c), CARL_OK);
  const int64_t T = 4000;
  int32_t *cl = malloc(T * sizeof(int32_t));
  for (int step = 0; step < 40; step += 1) {
    carl_workload_tokens(&w, step, T, cl, NULL, NULL);
    double cnt[8] = {0}, mx = 0;
    for (int64_t t = 0; t < T; t++) cnt[cl[t]]++;
    for (int k = 0; k < 8; k++)
      if (cnt[k] > mx) mx = cnt[k];
    int in_burst = (step % 20) >= 15;
    /* burst: 0.6 + 0.4 * p_c >= 0.6; normal: max p_c = 1/H(0.5, 8) ~ 0.198 */
    if (in_burst)
      assert_true(mx / T > 0.6 - 5 * sqrt(0.24 / T));
    else
      assert_true(mx / T < 0.3);
  }
  free(cl);
  carl_workload_free(&w);
}

/* Features: x - centre has the noise variance per dimension: tokens of one topic in one layer,
 * the sample variance around their mean is noise^2 (here 0.25) within 5%. */
static void test_features(void **s) {
  (void)s;
  carl_workload_cfg_t c = small_cfg(CARL_SCEN_BALANCED);
  c.noise = 0.5;
  carl_workload_t w;
  assert_int_equal(carl_workload_init(&w, &c), CARL_OK);
  const int64_t T = 8000;
  int32_t *cl = calloc(T, sizeof(int32_t)); /* all topic 0 */
  float *x = malloc(T * 8 * sizeof(float));
  carl_workload_features(&w, 1, 0, T, cl, x);
  for (int j = 0; j < 8; j++) {
    double m = 0, v = 0;
    for (int64_t t = 0; t < T; t++) m += x[t * 8 + j];
    m /= T;
    for (int64_t t = 0; t < T; t++) v += (x[t * 8 + j] - m) * (x[t * 8 + j] - m);
    v /= T - 1;
    assert_true(fabs(v / 0.25 - 1) < 0.05);
  }
  free(cl);
  free(x);
  carl_workload_free(&w);
}

/* KL gradient against central finite differences (in double, on a 3 x 5 case). */
static void test_kl_grad(void **s) {
  (void)s;
  const int T = 3, E = 5;
  float z[15], dz[15], dz0[15];
  const int32_t cl[3] = {1, 0, 1};
  const float probs[10] = {0.1f, 0.2f, 0.3f, 0.25f, 0.15f, 0.5f, 0.05f, 0.05f, 0.2f, 0.2f};
  for (int i = 0; i < 15; i++) z[i] = 0.3f * (float)((i * 7) % 11) - 1.2f;
  memset(dz, 0, sizeof dz);
  for (int i = 0; i < 15; i++) dz0[i] = 0.5f; /* accumulation: dz += grad */
  memcpy(dz, dz0, sizeof dz);
  double L = carl_sim_kl_grad(T, E, z, cl, probs, dz);
  /* direct: KL for token 0 by hand formula sum p log(p/s) */
  double ref = 0;
  for (int t = 0; t < T; t++) {
    double mx = -1e30, sum = 0;
    for (int e = 0; e < E; e++) mx = fmax(mx, z[t * E + e]);
    for (int e = 0; e < E; e++) sum += exp(z[t * E + e] - mx);
    for (int e = 0; e < E; e++) {
      double p = probs[cl[t] * E + e], sm = exp(z[t * E + e] - mx) / sum;
      ref += p * log(p / sm);
    }
  }
  assert_true(fabs(L - ref / T) < 1e-6);
  const float h = 1e-2f;
  float tmp[15];
  for (int i = 0; i < 15; i++) {
    float zp[15], zm[15];
    memcpy(zp, z, sizeof z);
    memcpy(zm, z, sizeof z);
    zp[i] += h;
    zm[i] -= h;
    memset(tmp, 0, sizeof tmp);
    double Lp = carl_sim_kl_grad(T, E, zp, cl, probs, tmp);
    double Lm = carl_sim_kl_grad(T, E, zm, cl, probs, tmp);
    double fd = (Lp - Lm) / (2 * h);
    assert_true(fabs((dz[i] - dz0[i]) - fd) < 2e-4);
  }
}

/* Gate forward and SGD against a naive triple loop. */
static void test_gate_blas(void **s) {
  (void)s;
  const int T = 37, d = 9, E = 13;
  carl_gate_t g;
  assert_int_equal(carl_gate_init(&g, d, E, 3, 1), CARL_OK);
  float *x = malloc(T * d * sizeof(float)), *z = malloc(T * E * sizeof(float)), *dz = malloc(T * E * sizeof(float));
  float *W0 = malloc(d * E * sizeof(float));
  for (int i = 0; i < T * d; i++) x[i] = (float)((i * 13) % 17) / 17.0f - 0.5f;
  for (int i = 0; i < T * E; i++) dz[i] = (float)((i * 5) % 7) / 7.0f - 0.4f;
  memcpy(W0, g.W, d * E * sizeof(float));
  carl_gate_forward(&g, x, T, z);
  for (int t = 0; t < T; t++)
    for (int e = 0; e < E; e++) {
      double acc = 0;
      for (int j = 0; j < d; j++) acc += (double)x[t * d + j] * W0[j * E + e];
      assert_true(fabs(z[t * E + e] - acc) < 1e-5);
    }
  carl_gate_sgd(&g, x, T, dz, 0.25f);
  for (int j = 0; j < d; j++)
    for (int e = 0; e < E; e++) {
      double acc = 0;
      for (int t = 0; t < T; t++) acc += (double)x[t * d + j] * dz[t * E + e];
      assert_true(fabs(g.W[j * E + e] - (W0[j * E + e] - 0.25 * acc)) < 1e-5);
    }
  free(x); free(z); free(dz); free(W0);
  carl_gate_free(&g);
}

/* The gate learns the teacher: plain SGD on the KL task alone cuts the loss to under a third
 * in 150 steps (the teacher is linearly representable: 8 topic centres in 8 dims). */
static void test_gate_learns(void **s) {
  (void)s;
  carl_workload_cfg_t c = small_cfg(CARL_SCEN_ZIPF);
  c.noise = 0.2;
  carl_workload_t w;
  assert_int_equal(carl_workload_init(&w, &c), CARL_OK);
  carl_gate_t g;
  assert_int_equal(carl_gate_init(&g, 8, 16, 1, 0), CARL_OK);
  const int64_t T = 512;
  int32_t *cl = malloc(T * sizeof(int32_t));
  float *x = malloc(T * 8 * sizeof(float)), *z = malloc(T * 16 * sizeof(float)), *dz = malloc(T * 16 * sizeof(float));
  float probs[8 * 16];
  double first = 0, last = 0;
  for (int step = 0; step < 150; step++) {
    carl_workload_tokens(&w, step, T, cl, NULL, NULL);
    carl_workload_features(&w, step, 0, T, cl, x);
    carl_workload_teacher(&w, step, 0, probs);
    carl_gate_forward(&g, x, T, z);
    memset(dz, 0, T * 16 * sizeof(float));
    double L = carl_sim_kl_grad(T, 16, z, cl, probs, dz);
    if (step == 0) first = L;
    last = L;
    carl_gate_sgd(&g, x, T, dz, 0.1f);
  }
  assert_true(last < first / 3);
  free(cl); free(x); free(z); free(dz);
  carl_gate_free(&g);
  carl_workload_free(&w);
}

static void test_bad_input(void **s) {
  (void)s;
  int sc;
  assert_int_equal(carl_scenario_parse("hot_expert", &sc), CARL_OK);
  assert_int_equal(sc, CARL_SCEN_HOT_EXPERT);
  assert_int_equal(carl_scenario_parse("hotexpert", &sc), CARL_ERR_NOT_FOUND);
  assert_non_null(strstr(carl_errmsg(), "hotexpert"));
  carl_workload_cfg_t c = small_cfg(CARL_SCEN_ZIPF);
  c.home_bias = 1.5;
  carl_workload_t w;
  assert_int_equal(carl_workload_init(&w, &c), CARL_ERR_INVALID);
  c = small_cfg(CARL_SCEN_ZIPF);
  c.clusters = 0;
  assert_int_equal(carl_workload_init(&w, &c), CARL_ERR_INVALID);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sources),   cmocka_unit_test(test_popularity), cmocka_unit_test(test_determinism),
      cmocka_unit_test(test_sequences), cmocka_unit_test(test_teacher),    cmocka_unit_test(test_rotating),
      cmocka_unit_test(test_burst),     cmocka_unit_test(test_features),   cmocka_unit_test(test_kl_grad),
      cmocka_unit_test(test_gate_blas), cmocka_unit_test(test_gate_learns), cmocka_unit_test(test_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
