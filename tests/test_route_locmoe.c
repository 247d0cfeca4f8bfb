/* locmoe router: Theorem 1 bound against the published figures and closed forms, the locality
 * loss by hand and by finite differences, GrAP gating, the capacity floor, save/load, bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <unistd.h>

#include "carl/route_seed.h"
#include "carl/topo.h"
#include "route_testutil.h"

static double loss_named(const carl_route_out_t *o, const char *name) {
  for (int i = 0; i < o->nloss; i++)
    if (!strcmp(o->loss[i].name, name)) return o->loss[i].value;
  return NAN;
}

/* research/routers.md 2.4 (and research/locmoe_capacity_check.py, an independent Simpson
 * integration): d = 5120, delta = 0.03, E = 16 -> p_delta = 0.0318, ec_min = ceil(1.965) = 2;
 * delta = 1/sqrt(d - 3/2) -> p_delta = 0.317 (the paper's "about 0.3"). */
static void test_bound_published(void **st) {
  (void)st;
  assert_float_equal(carl_locmoe_p_delta(0.03, 5120), 0.0318, 5e-5);
  assert_int_equal(carl_locmoe_ec_min(0.03, 5120, 16), 2);
  assert_float_equal(carl_locmoe_p_delta(1 / sqrt(5120 - 1.5), 5120), 0.3173, 5e-5);
  /* the other rows of the check script: d=4096, delta=.05, n=8 -> 1/(n p) = 91.405 -> 92 */
  assert_int_equal(carl_locmoe_ec_min(0.05, 4096, 8), 92);
  assert_float_equal(carl_locmoe_p_delta(0.05, 2048), 0.0236, 5e-5);
}

/* p_delta = P(|cos| >= delta) for a uniform direction in R^d; the density of t = cos is
 * proportional to (1 - t^2)^((d-3)/2), which integrates in closed form for small d:
 *   d = 2: p = 1 - (2/pi) asin(delta);   d = 3: p = 1 - delta;
 *   d = 4: p = 1 - (2/pi)(delta sqrt(1 - delta^2) + asin(delta));
 *   d = 5: p = (2/3 - delta + delta^3/3) / (2/3) = 1 - 1.5 delta + 0.5 delta^3.
 * Incomplete beta: I_0.4(2, 3) = sum_{j=2..4} C(4,j) .4^j .6^(4-j) = .3456 + .1536 + .0256 = .5248. */
static void test_bound_closed_forms(void **st) {
  (void)st;
  const double ds[] = {0.001, 0.03, 0.3, 0.5, 0.77, 0.99};
  for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++) {
    double x = ds[i];
    assert_float_equal(carl_locmoe_p_delta(x, 2), 1 - 2 / M_PI * asin(x), 1e-12);
    assert_float_equal(carl_locmoe_p_delta(x, 3), 1 - x, 1e-12);
    assert_float_equal(carl_locmoe_p_delta(x, 4), 1 - 2 / M_PI * (x * sqrt(1 - x * x) + asin(x)), 1e-12);
    assert_float_equal(carl_locmoe_p_delta(x, 5), 1 - 1.5 * x + 0.5 * x * x * x, 1e-12);
  }
  assert_float_equal(carl_betai(2, 3, 0.4), 0.5248, 1e-13);
  assert_float_equal(carl_betai_upper(2, 3, 0.4), 0.4752, 1e-13);
  /* symmetry I_x(a, b) = 1 - I_{1-x}(b, a), on both sides of the switch point */
  assert_float_equal(carl_betai(0.5, 700, 0.01), 1 - carl_betai(700, 0.5, 0.99), 1e-12);
  assert_float_equal(carl_betai(3.5, 2.5, 0.9), 1 - carl_betai(2.5, 3.5, 0.1), 1e-12);
  /* d = 200, delta = 0.1 against a Simpson integration written here */
  int d = 200, n = 200000;
  double a = (d - 3) / 2.0, h = 1.0 / n, tot = 0, tail = 0;
  for (int i = 0; i <= n; i++) {
    double t = i * h, f = t < 1 ? exp(a * log1p(-t * t)) : 0, w = (i == 0 || i == n) ? 1 : (i % 2 ? 4 : 2);
    tot += w * f;
  }
  double lo = 0.1, h2 = (1 - lo) / n;
  for (int i = 0; i <= n; i++) {
    double t = lo + i * h2, f = t < 1 ? exp(a * log1p(-t * t)) : 0, w = (i == 0 || i == n) ? 1 : (i % 2 ? 4 : 2);
    tail += w * f;
  }
  tot *= h / 3;
  tail *= h2 / 3;
  assert_float_equal(carl_locmoe_p_delta(0.1, d), tail / tot, 1e-8);
  /* edges */
  assert_float_equal(carl_locmoe_p_delta(0, 5120), 1, 0);
  assert_float_equal(carl_locmoe_p_delta(-0.2, 5120), 1, 0);
  assert_float_equal(carl_locmoe_p_delta(1, 5120), 0, 0);
  assert_int_equal(carl_locmoe_ec_min(0, 5120, 16), 1);      /* ceil(1/16) */
  assert_int_equal(carl_locmoe_ec_min(1, 5120, 16), INT64_MAX / 4);
  assert_int_equal(carl_locmoe_ec_min(0.03, 1, 16), -1);
  assert_true(isnan(carl_locmoe_p_delta(0.1, 1)));
  assert_true(isnan(carl_betai(-1, 2, 0.5)));
}

/* Locality loss by hand: E = 4, 2 nodes, experts {0,1} on node 0 and {2,3} on node 1, eps = 0.01.
 * One token per node, both with uniform scores s = .25:
 *   D_l(node 0) = [.495, .495, .005, .005]; KL = 2 * .25 ln(.25/.495) + 2 * .25 ln(.25/.005)
 *   = .5 (-0.6830968) + .5 (3.9120230) = 1.6144631; node 1 is the mirror image, so the mean is the
 *   same; L = mu * 1.6144631. */
static void test_locality_hand(void **st) {
  (void)st;
  float s[8] = {.25f, .25f, .25f, .25f, .25f, .25f, .25f, .25f};
  int32_t node[2] = {0, 1};
  uint8_t local[8] = {1, 1, 0, 0, 0, 0, 1, 1};
  double v;
  assert_int_equal(carl_locality_loss(2, 4, s, node, 2, local, 0.01, 0.01, &v, NULL), CARL_OK);
  double kl = 0.5 * log(0.25 / 0.495) + 0.5 * log(0.25 / 0.005);
  assert_float_equal(kl, 1.6144631, 1e-6);
  assert_float_equal(v, 0.01 * kl, 1e-12);
  /* a node that holds every expert: D_l uniform, KL of a uniform D_c is 0 */
  uint8_t all[4] = {1, 1, 1, 1};
  int32_t n0[1] = {0};
  assert_int_equal(carl_locality_loss(1, 4, s, n0, 1, all, 0.01, 1, &v, NULL), CARL_OK);
  assert_float_equal(v, 0, 1e-15);
  /* bad knobs */
  assert_int_equal(carl_locality_loss(2, 4, s, node, 2, local, 0, 0.01, &v, NULL), CARL_ERR_INVALID);
  assert_int_equal(carl_locality_loss(2, 4, s, node, 2, local, 0.01, -1, &v, NULL), CARL_ERR_INVALID);
}

/* Gradient of the locality loss w.r.t. the logits against central differences (s = softmax in
 * double, written here). */
static void test_locality_fd(void **st) {
  (void)st;
  enum { T = 9, E = 6, N = 3 };
  float z[T * E], s[T * E], g[T * E];
  tu_logits(z, T, E, NULL, 1.0, 7);
  int32_t node[T];
  for (int t = 0; t < T; t++) node[t] = t % N;
  uint8_t local[N * E] = {0};
  for (int e = 0; e < E; e++) local[(e / 2) * E + e] = 1;
  local[2 * E + 0] = 1; /* expert 0 also has a replica on node 2 */
  double sd[E];
  for (int t = 0; t < T; t++) {
    tu_scores(z + t * E, E, 0, sd);
    for (int e = 0; e < E; e++) s[t * E + e] = (float)sd[e];
  }
  memset(g, 0, sizeof g);
  double v;
  const double mu = 1.0;
  assert_int_equal(carl_locality_loss(T, E, s, node, N, local, 0.05, mu, &v, g), CARL_OK);
  double gmax = 0;
  for (int i = 0; i < T * E; i++) gmax = fmax(gmax, fabs(g[i]));
  assert_true(gmax > 1e-3);
  for (int i = 0; i < T * E; i++) {
    double lv[2];
    for (int sgn = 0; sgn < 2; sgn++) {
      float zz[T * E], ss[T * E];
      memcpy(zz, z, sizeof zz);
      zz[i] += sgn ? -1e-2f : 1e-2f;
      for (int t = 0; t < T; t++) {
        tu_scores(zz + t * E, E, 0, sd);
        for (int e = 0; e < E; e++) ss[t * E + e] = (float)sd[e];
      }
      assert_int_equal(carl_locality_loss(T, E, ss, node, N, local, 0.05, mu, &lv[sgn], NULL), CARL_OK);
    }
    double h = (double)(z[i] + 1e-2f) - (double)(z[i] - 1e-2f);
    double fd = (lv[0] - lv[1]) / h;
    assert_float_equal(g[i], fd, 1e-3 * gmax + 1e-6);
  }
}

static carl_topo_t topo2(int nodes, int per) {
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, nodes, per, 160, 3, 50, 10), CARL_OK);
  return t;
}

/* Learned gate, top-1, weight = softmax value (not renormalised). T = 2, E = 4, 2 nodes x 1 device:
 *   t0 on device 0, z = [0, ln 3, 0, 0]: s = [1/6, 1/2, 1/6, 1/6] -> expert 1, weight .5
 *   t1 on device 1, z = [0, 0, 0, ln 2]: s = [.2, .2, .2, .4]     -> expert 3, weight .4
 * L_aux = 0.01 * 4 * sum f P, f = [0, .5, 0, .5], P = [(1/6+.2)/2, (1/2+.2)/2, (1/6+.2)/2, (1/6+.4)/2]
 *       = 0.04 * (.5 * .35 + .5 * 0.2833333) = 0.04 * 0.3166667 = 0.0126667.
 * L_loc = .01 * mean(KL(s0 || [.495,.495,.005,.005]), KL(s1 || [.005,.005,.495,.495])). */
static void test_locmoe_hand(void **st) {
  (void)st;
  float z[8] = {0, logf(3), 0, 0, 0, 0, 0, logf(2)};
  int32_t src[2] = {0, 1};
  carl_topo_t tp = topo2(2, 1);
  carl_router_t *r;
  assert_int_equal(tu_create("locmoe", "", &r), CARL_OK);
  assert_int_equal((int)carl_router_get(r, "k"), 1);
  tu_out_t o;
  tu_out_init(&o, 2, 4, 1, 1);
  carl_route_in_t in = {.T = 2, .E = 4, .logits = z, .src = src, .topo = &tp};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 1);
  assert_int_equal(o.experts[1], 3);
  assert_float_equal(o.weights[0], 0.5, 1e-6);
  assert_float_equal(o.weights[1], 0.4, 1e-6);
  assert_float_equal(loss_named(&o.out, "aux"), 0.04 * (0.5 * 0.35 + 0.5 * (1.0 / 6 + 0.4) / 2), 1e-7);
  double s0[4] = {1.0 / 6, 0.5, 1.0 / 6, 1.0 / 6}, s1[4] = {.2, .2, .2, .4};
  double l0[4] = {.495, .495, .005, .005}, l1[4] = {.005, .005, .495, .495}, kl0 = 0, kl1 = 0;
  for (int e = 0; e < 4; e++) {
    kl0 += s0[e] * log(s0[e] / l0[e]);
    kl1 += s1[e] * log(s1[e] / l1[e]);
  }
  assert_float_equal(loss_named(&o.out, "loc"), 0.01 * (kl0 + kl1) / 2, 1e-7);
  assert_true(isnan(loss_named(&o.out, "z"))); /* LocMoE has no z-loss by default */
  tu_out_free(&o);
  carl_router_free(r);
}

/* d(total loss)/d(logits) of the router (L_aux through P, L_loc) against central differences of
 * loss_total, the top-1 choices held fixed (checked). */
static void test_locmoe_loss_grad_fd(void **st) {
  (void)st;
  enum { T = 12, E = 4 };
  float z[T * E];
  tu_logits(z, T, E, NULL, 1.0, 11);
  carl_topo_t tp = topo2(2, 2);
  carl_router_t *r;
  assert_int_equal(tu_create("locmoe", "l_aux=0.5 mu=0.7 z_loss=0.01", &r), CARL_OK);
  tu_out_t o, p;
  tu_out_init(&o, T, E, 1, 1);
  tu_out_init(&p, T, E, 1, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .topo = &tp};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  double gmax = 0;
  for (int i = 0; i < T * E; i++) gmax = fmax(gmax, fabs(o.dlogits[i]));
  assert_true(gmax > 1e-3);
  for (int i = 0; i < T * E; i++) {
    double lv[2];
    float keep = z[i];
    for (int sgn = 0; sgn < 2; sgn++) {
      z[i] = keep + (sgn ? -1e-2f : 1e-2f);
      assert_int_equal(carl_router_route(r, &in, &p.out), CARL_OK);
      assert_memory_equal(p.experts, o.experts, sizeof(int32_t) * T);
      lv[sgn] = p.out.loss_total;
    }
    z[i] = keep;
    double fd = (lv[0] - lv[1]) / ((double)(keep + 1e-2f) - (double)(keep - 1e-2f));
    assert_float_equal(o.dlogits[i], fd, 2e-3 * gmax + 1e-6);
  }
  tu_out_free(&o);
  tu_out_free(&p);
  carl_router_free(r);
}

/* GrAP: d = 4, E = 2, blocks of 2. x0 = [1, 3, 2, 2]: block means [2, 2] -> tie -> expert 0, weight
 * softmax([2, 2])_0 = .5. x1 = [-1, -1, .5, .5]: relu([-1, .5]) = [0, .5] -> expert 1, weight
 * 1 / (1 + e^-.5) = .6224593. The logits pointer is not used (NULL). */
static void test_grap(void **st) {
  (void)st;
  float x[8] = {1, 3, 2, 2, -1, -1, .5f, .5f};
  carl_router_t *r;
  assert_int_equal(tu_create("locmoe", "gate=1", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 2, 1, 1);
  carl_route_in_t in = {.T = 2, .E = 2, .x = x, .d = 4};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 0);
  assert_int_equal(o.experts[1], 1);
  assert_float_equal(o.weights[0], 0.5, 1e-7);
  assert_float_equal(o.weights[1], 1 / (1 + exp(-0.5)), 1e-6);
  /* backward through the gate: w1 = s1(z) with z = [0, .5]: dw/dz1 = s(1-s) = .2350037 */
  float dw[2] = {0, 1}, dz[4] = {0};
  assert_int_equal(carl_router_backward(r, &in, &o.out, dw, dz), CARL_OK);
  double sg = 1 / (1 + exp(-0.5));
  assert_float_equal(dz[3], sg * (1 - sg), 1e-6);
  assert_float_equal(dz[2], -sg * (1 - sg), 1e-6);
  /* the logits themselves: [2, 2] and [0, .5] */
  float zg[4];
  assert_int_equal(carl_locmoe_grap_logits(2, 4, 2, x, zg), CARL_OK);
  float wantz[4] = {2, 2, 0, .5f};
  assert_memory_equal(zg, wantz, sizeof wantz);
  assert_int_equal(carl_locmoe_grap_logits(2, 4, 3, x, zg), CARL_ERR_INVALID);
  /* E must divide d */
  carl_route_in_t bad = {.T = 2, .E = 3, .x = x, .d = 4};
  tu_out_t b;
  tu_out_init(&b, 2, 3, 1, 0);
  assert_int_equal(carl_router_route(r, &bad, &b.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "multiple of E=3"));
  carl_route_in_t nox = {.T = 2, .E = 2, .d = 4};
  assert_int_equal(carl_router_route(r, &nox, &b.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "x"));
  tu_out_free(&b);
  tu_out_free(&o);
  carl_router_free(r);
  /* the common z-loss acts on caller logits: refused with GrAP */
  assert_int_equal(tu_create("locmoe", "gate=1 z_loss=0.001", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "z_loss"));
}

/* Capacity floor, GrAP, E = 2, d = 4 (blocks of w = 2): cos(x, w_e) = block sum / (|x| sqrt(w)).
 *   [1,1,0,0] -> e0, cos 2/(sqrt2 sqrt2) = 1;   [1,0,1,0] -> tie -> e0, cos 1/2 = .5;
 *   [2,2,0,0] -> e0, cos 1;                     [0,0,1,1] -> e1, cos 1.
 * delta = .5, d = 4: p = 1 - (2/pi)(.5 sqrt(.75) + asin .5) = 1 - (2/pi)(.4330127 + .5235988)
 *   = .3910022; ec_min = ceil(1 / (2 * .3910022)) = ceil(1.2788) = 2.
 * cf = .25: ceil(.25 * 4 / 2) = 1 < 2 -> capacity 2; expert 0 has 3 tokens -> 1 dropped (the lowest
 * softmax value: token 1, s = .5 against e^1/(e^1+1) = .73 and e^2/(e^2+1) = .88).
 * A second batch whose every cos is 1 (delta = 1, p = 0) would need the whole batch; with cap_fixed
 * the first step's bound (2) is kept, also across save/load. */
static void test_min_capacity(void **st) {
  (void)st;
  float x[16] = {1, 1, 0, 0, 1, 0, 1, 0, 2, 2, 0, 0, 0, 0, 1, 1};
  float x2[16] = {1, 1, 0, 0, 3, 3, 0, 0, 2, 2, 0, 0, 0, 0, 1, 1};
  carl_route_in_t in = {.T = 4, .E = 2, .x = x, .d = 4}, in2 = {.T = 4, .E = 2, .x = x2, .d = 4};
  carl_router_t *r, *r0, *rv, *rl;
  assert_int_equal(tu_create("locmoe", "gate=1 capacity_factor=0.25", &r), CARL_OK);
  assert_int_equal(tu_create("locmoe", "gate=1 capacity_factor=0.25 min_cap=0", &r0), CARL_OK);
  assert_int_equal(tu_create("locmoe", "gate=1 capacity_factor=0.25 cap_fixed=0", &rv), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 4, 2, 1, 0);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.out.capacity, 2);
  assert_int_equal(o.out.dropped, 1);
  int32_t want[4] = {0, -1, 0, 1};
  assert_memory_equal(o.experts, want, sizeof want);
  assert_int_equal(carl_router_route(r0, &in, &o.out), CARL_OK);
  assert_int_equal(o.out.capacity, 1);
  assert_int_equal(o.out.dropped, 2);
  /* cap_fixed: the first step's bound stays; cap_fixed = 0 follows the batch (here: all T) */
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(r, &in2, &o.out), CARL_OK);
  assert_int_equal(o.out.capacity, 2);
  assert_int_equal(carl_router_route(rv, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_update(rv, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(rv, &in2, &o.out), CARL_OK);
  assert_int_equal(o.out.capacity, 4);
  /* save / load */
  char path[] = "/tmp/carl_locmoe_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(carl_router_save(r, path), CARL_OK);
  assert_int_equal(tu_create("locmoe", "gate=1 capacity_factor=0.25", &rl), CARL_OK);
  assert_int_equal(carl_router_load(rl, path), CARL_OK);
  assert_int_equal(carl_router_route(rl, &in2, &o.out), CARL_OK);
  assert_int_equal(o.out.capacity, 2);
  /* a state of another router is refused */
  carl_router_t *rc;
  assert_int_equal(tu_create("carl", "", &rc), CARL_OK);
  assert_int_equal(carl_router_load(rc, path), CARL_ERR_STATE);
  carl_router_free(rc);
  unlink(path);
  /* a fixed delta with the learned gate: delta = .03, d = 5120, E = 16 -> ec_min = 2 (T = 16,
   * cf = .01 -> ceil(.01) = 1) */
  carl_router_t *rd;
  assert_int_equal(tu_create("locmoe", "capacity_factor=0.01 delta=0.03", &rd), CARL_OK);
  float z[16 * 16];
  tu_logits(z, 16, 16, NULL, 1.0, 5);
  carl_route_in_t ind = {.T = 16, .E = 16, .logits = z, .d = 5120};
  tu_out_t od;
  tu_out_init(&od, 16, 16, 1, 0);
  assert_int_equal(carl_router_route(rd, &ind, &od.out), CARL_OK);
  assert_int_equal(od.out.capacity, 2);
  tu_out_free(&od);
  carl_router_free(rd);
  tu_out_free(&o);
  carl_router_free(r);
  carl_router_free(r0);
  carl_router_free(rv);
  carl_router_free(rl);
}

static void test_errors(void **st) {
  (void)st;
  carl_router_t *r;
  assert_int_equal(tu_create("locmoe", "k=2", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "k"));
  assert_int_equal(tu_create("locmoe", "loc_eps=1", &r), CARL_ERR_INVALID);
  assert_int_equal(tu_create("locmoe", "mu=-1", &r), CARL_ERR_INVALID);
  assert_int_equal(tu_create("locmoe", "gate=2", &r), CARL_ERR_INVALID);
  assert_int_equal(tu_create("locmoe", "", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 2, 1, 0);
  carl_route_in_t in = {.T = 2, .E = 2}; /* learned gate without logits */
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "logits"));
  float z[4] = {0, NAN, 1, 2};
  in.logits = z;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_NUMERIC);
  tu_out_free(&o);
  carl_router_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bound_published), cmocka_unit_test(test_bound_closed_forms),
      cmocka_unit_test(test_locality_hand),   cmocka_unit_test(test_locality_fd),
      cmocka_unit_test(test_locmoe_hand),     cmocka_unit_test(test_locmoe_loss_grad_fd),
      cmocka_unit_test(test_grap),            cmocka_unit_test(test_min_capacity),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
