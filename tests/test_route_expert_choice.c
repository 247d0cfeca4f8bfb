/* expert_choice: a hand case, exactly equal loads, a token chosen by more experts than k slots, and
 * the fill of every expert to C (or of every token to k) on random logits, checked against a
 * maximum flow computed here. */
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

/* Maximum flow of the token / expert network, by Edmonds-Karp on a dense capacity matrix (small
 * sizes only): source -> token (capacity k), token -> expert (1: an expert at most once per token),
 * expert -> sink (C). The most (token, expert) pairs any routing with these limits can hold. */
static int64_t ref_maxflow(int T, int E, int k, int C) {
  const int n = T + E + 2, src = T + E, snk = T + E + 1;
  int *cap = calloc((size_t)n * n, sizeof *cap), *prev = malloc((size_t)n * sizeof *prev), *q = malloc((size_t)n * sizeof *q);
  for (int t = 0; t < T; t++) {
    cap[src * n + t] = k;
    for (int e = 0; e < E; e++) cap[t * n + T + e] = 1;
  }
  for (int e = 0; e < E; e++) cap[(T + e) * n + snk] = C;
  int64_t flow = 0;
  for (;;) {
    for (int i = 0; i < n; i++) prev[i] = -1;
    prev[src] = src;
    int h = 0, tl = 0;
    q[tl++] = src;
    while (h < tl && prev[snk] < 0) {
      int u = q[h++];
      for (int v = 0; v < n; v++)
        if (prev[v] < 0 && cap[u * n + v] > 0) {
          prev[v] = u;
          q[tl++] = v;
        }
    }
    if (prev[snk] < 0) break;
    int b = 1 << 30;
    for (int v = snk; v != src; v = prev[v]) b = cap[prev[v] * n + v] < b ? cap[prev[v] * n + v] : b;
    for (int v = snk; v != src; v = prev[v]) {
      cap[prev[v] * n + v] -= b;
      cap[v * n + prev[v]] += b;
    }
    flow += b;
  }
  free(cap);
  free(prev);
  free(q);
  return flow;
}

/* Routes random logits (offsets off[e] = skew * e / (E - 1), sigma 1) and checks the output:
 * at most k distinct experts per token (kept slots first, -1 after), slots by descending s, gates
 * = s, every load <= C, and the number of kept pairs. want_load >= 0: every expert holds exactly
 * that many tokens; want_full: every token holds k experts. Returns the number of kept pairs. */
static int64_t check_fill(int64_t T, int E, int k, double cf, double skew, uint64_t seed, int64_t C, int64_t want_load,
                          int want_full) {
  double *off = malloc(sizeof(double) * E);
  for (int e = 0; e < E; e++) off[e] = E > 1 ? skew * e / (E - 1) : 0;
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, off, 1.0, seed);
  char opt[96];
  snprintf(opt, sizeof opt, "k=%d capacity_factor=%g", k, cf);
  carl_router_t *r;
  assert_int_equal(tu_create("expert_choice", opt, &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.out.capacity, C);
  int64_t *load = calloc((size_t)E, sizeof *load), kept = 0;
  double *s = malloc(sizeof(double) * E);
  for (int64_t t = 0; t < T; t++) {
    const int32_t *ex = o.experts + t * k;
    tu_scores(z + t * E, E, 0, s);
    int n = 0;
    while (n < k && ex[n] >= 0) n++;
    for (int j = n; j < k; j++) assert_int_equal(ex[j], -1); /* kept slots first */
    if (want_full) assert_int_equal(n, k);
    for (int j = 0; j < n; j++) {
      assert_true(ex[j] < E);
      for (int i = 0; i < j; i++) assert_int_not_equal(ex[i], ex[j]); /* distinct experts */
      if (j > 0) assert_true(s[ex[j - 1]] >= s[ex[j]]);
      assert_float_equal(o.weights[t * k + j], s[ex[j]], 1e-6);
      load[ex[j]]++;
    }
    kept += n;
  }
  for (int e = 0; e < E; e++) {
    assert_true(load[e] <= C);
    if (want_load >= 0) assert_int_equal(load[e], want_load);
  }
  assert_int_equal(o.out.dropped, T * k - kept);
  tu_out_free(&o);
  carl_router_free(r);
  free(load);
  free(s);
  free(off);
  free(z);
  return kept;
}

/* T k = C E (C = T k / E by hand): every expert exactly C, every token k distinct experts, at
 * several sizes and seeds, flat and skewed logits. T = 1000, E = 16, k = 2 (C = 125) is the case
 * where the greedy fill alone leaves an expert at 123. */
static void test_fill_exact_random(void **st) {
  (void)st;
  const struct {
    int T, E, k;
  } sz[] = {{1000, 16, 2}, {1024, 16, 2}, {300, 12, 3}, {64, 8, 4}, {10, 5, 2}, {1000, 16, 4}, {999, 9, 3}, {4096, 64, 8}, {40, 4, 4}};
  for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++)
    for (uint64_t seed = 1; seed <= 4; seed++)
      for (int sk = 0; sk < 2; sk++) {
        const int T = sz[i].T, E = sz[i].E, k = sz[i].k;
        assert_int_equal((T * k) % E, 0);
        const int64_t C = T * k / E;
        assert_int_equal(check_fill(T, E, k, 0, sk ? 3.0 : 0.0, seed, C, C, 1), (int64_t)T * k);
      }
}

/* Small cases, T k = C E or not: the kept pairs equal the maximum flow of the network computed by
 * ref_maxflow (nothing more can be kept, and the router keeps that much). C by hand:
 * ceil(cf T k / E). */
static void test_fill_is_maximum_small(void **st) {
  (void)st;
  const struct {
    int T, E, k;
    double cf;
    int C;
  } cs[] = {
      {10, 5, 2, 0, 4},      /* T k = C E = 20 */
      {64, 8, 4, 0, 32},     /* 256 = 256 */
      {30, 7, 3, 0, 13},     /* ceil(90 / 7) = 13: C E = 91 > 90 */
      {25, 6, 2, 0, 9},      /* ceil(50 / 6) = 9: 54 > 50 */
      {40, 8, 3, 0.5, 8},    /* ceil(0.5 * 120 / 8) = ceil(7.5) = 8: C E = 64 < 120 */
      {33, 5, 2, 1.5, 20},   /* ceil(1.5 * 66 / 5) = ceil(19.8) = 20: 100 > 66 */
      {12, 3, 3, 0, 12},     /* k = E: every token takes every expert */
  };
  for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
    for (uint64_t seed = 1; seed <= 5; seed++) {
      const int T = cs[i].T, E = cs[i].E, k = cs[i].k, C = cs[i].C;
      const int64_t mf = ref_maxflow(T, E, k, C);
      /* when the experts' side is the smaller (C E <= T k) every expert must be full, and when the
       * tokens' side is (T k <= C E) every token */
      const int64_t want_load = (int64_t)C * E <= (int64_t)T * k ? C : -1;
      const int want_full = (int64_t)T * k <= (int64_t)C * E;
      assert_int_equal(check_fill(T, E, k, cs[i].cf, seed % 2 ? 2.0 : 0.0, seed, C, want_load, want_full), mf);
    }
}

/* T k != C E on larger inputs: T = 1000, E = 16, k = 3 gives C = ceil(3000 / 16) = 188, C E = 3008
 * > T k: every token k experts; capacity_factor 0.5 with k = 2 gives C = ceil(62.5) = 63,
 * C E = 1008 < T k = 2000: every expert exactly 63, 992 pairs dropped. */
static void test_fill_not_exact(void **st) {
  (void)st;
  for (uint64_t seed = 1; seed <= 3; seed++) {
    assert_int_equal(check_fill(1000, 16, 3, 0, 1.0, seed, 188, -1, 1), 3000);
    assert_int_equal(check_fill(1000, 16, 2, 0.5, 1.0, seed, 63, 63, 0), 1008);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hand),
      cmocka_unit_test(test_overchosen_token),
      cmocka_unit_test(test_exact_balance),
      cmocka_unit_test(test_fill_exact_random),
      cmocka_unit_test(test_fill_is_maximum_small),
      cmocka_unit_test(test_fill_not_exact),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
