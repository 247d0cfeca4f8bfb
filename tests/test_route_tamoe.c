/* tamoe router: the topology-aware dispatch-frequency loss and its gradient by hand on 2 nodes x 1
 * device, the uniform case (one node: the per-source Switch loss), the gradient against central
 * differences (softmax and sigmoid), the selection is top-k, bad options. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "carl/topo.h"
#include "route_testutil.h"

static carl_topo_t topo(int nodes, int per) {
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, nodes, per, 160, 3, 50, 10), CARL_OK);
  return t;
}

static double loss_named(const carl_route_out_t *out, const char *name) {
  for (int i = 0; i < out->nloss; i++)
    if (!strcmp(out->loss[i].name, name)) return out->loss[i].value;
  return NAN;
}

/* E = 2, k = 1, 2 nodes x 1 device (160 / 50 GB/s), expert e on device e (contiguous), ta = 1.
 * tau from device 0: self = intra = 50/160 = 0.3125, remote 1 -> w(0, .) = 2 [0.3125, 1] / 1.3125
 * = [0.476190, 1.523810]; device 1 mirrored. p = softmax([1, 0]) = [0.731059, 0.268941].
 * Local: t0 (device 0) z [1, 0] -> expert 0, t1 (device 1) z [0, 1] -> expert 1. Each source has
 *   f = 1 on its local expert: L = 2 (0.5 * 0.476190 * 0.731059 + 0.5 * 0.476190 * 0.731059) = 0.696246
 *   (the Switch loss of the same routing: 2 (0.5 * 0.5 + 0.5 * 0.5) = 1).
 *   dL/dp[t0] = 2 * [0.476190, 0] / 2; dz = p (g - p.g): [0.093625, -0.093625].
 * Remote: both tokens z [1, 0] -> expert 0; source 1's weight on it is 1.523810:
 *   L = 2 (0.5 * 0.476190 + 0.5 * 1.523810) 0.731059 = 1.462117; dz[t1] = [0.299599, -0.299599]. */
static void test_hand(void **st) {
  (void)st;
  carl_topo_t tp = topo(2, 1);
  int32_t src[2] = {0, 1};
  for (int remote = 0; remote < 2; remote++) {
    float z[4] = {1, 0, 0, 1};
    if (remote) z[2] = 1, z[3] = 0;
    carl_router_t *r;
    assert_int_equal(tu_create("tamoe", "k=1 ta=1 z_loss=0", &r), CARL_OK);
    tu_out_t o;
    tu_out_init(&o, 2, 2, 1, 1);
    carl_route_in_t in = {.T = 2, .E = 2, .logits = z, .src = src, .topo = &tp};
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
    assert_int_equal(o.experts[0], 0);
    assert_int_equal(o.experts[1], remote ? 0 : 1);
    assert_float_equal(loss_named(&o.out, "ta"), remote ? 1.462117 : 0.696246, 1e-5);
    assert_float_equal(o.dlogits[0], 0.093625, 1e-5);
    assert_float_equal(o.dlogits[1], -0.093625, 1e-5);
    assert_float_equal(o.dlogits[2], remote ? 0.299599 : -0.093625, 1e-5);
    assert_float_equal(o.dlogits[3], remote ? -0.299599 : 0.093625, 1e-5);
    tu_out_free(&o);
    carl_router_free(r);
  }
}

/* One node of 2 devices: self and intra copies cost the same, w = 1, and L is the Switch loss per
 * source device: t0 on device 0 z [1, 0] -> 0, t1 on device 1 z [1, 0] -> 0:
 * L = 2 (0.5 * 1 * 0.731059 + 0.5 * 1 * 0.731059) = 1.462117. */
static void test_uniform(void **st) {
  (void)st;
  carl_topo_t tp = topo(1, 2);
  int32_t src[2] = {0, 1};
  float z[4] = {1, 0, 1, 0};
  carl_router_t *r;
  assert_int_equal(tu_create("tamoe", "k=1 ta=1 z_loss=0", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 2, 1, 0);
  carl_route_in_t in = {.T = 2, .E = 2, .logits = z, .src = src, .topo = &tp};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_float_equal(loss_named(&o.out, "ta"), 2 * 0.7310585786, 1e-6);
  tu_out_free(&o);
  carl_router_free(r);
}

/* dlogits against central differences of the "ta" loss (the selection does not change within eps:
 * checked), 2 x 2 devices, E = 8, k = 2, softmax and sigmoid. */
static void test_grad_fd(void **st) {
  (void)st;
  carl_topo_t tp = topo(2, 2);
  enum { T = 12, E = 8, K = 2 };
  float z[T * E];
  int32_t src[T];
  uint64_t x = 12345;
  for (int i = 0; i < T * E; i++) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    z[i] = (float)((x >> 40) % 1000) / 250.0f - 2.0f;
  }
  for (int t = 0; t < T; t++) src[t] = t % 4;
  for (int score = 0; score < 2; score++) {
    char opts[64];
    snprintf(opts, sizeof opts, "k=2 ta=0.5 z_loss=0 score=%d", score);
    carl_router_t *r;
    assert_int_equal(tu_create("tamoe", opts, &r), CARL_OK);
    tu_out_t o, p, m;
    tu_out_init(&o, T, E, K, 1);
    tu_out_init(&p, T, E, K, 0);
    tu_out_init(&m, T, E, K, 0);
    carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = src, .topo = &tp};
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
    const float eps = 1e-2f;
    for (int i = 0; i < T * E; i++) {
      float z0 = z[i];
      z[i] = z0 + eps;
      assert_int_equal(carl_router_route(r, &in, &p.out), CARL_OK);
      z[i] = z0 - eps;
      assert_int_equal(carl_router_route(r, &in, &m.out), CARL_OK);
      z[i] = z0;
      if (memcmp(p.experts, o.experts, sizeof(int32_t) * T * K) || memcmp(m.experts, o.experts, sizeof(int32_t) * T * K))
        continue;
      double fd = (loss_named(&p.out, "ta") - loss_named(&m.out, "ta")) / (2 * eps);
      assert_float_equal(o.dlogits[i], fd, 1e-4);
    }
    tu_out_free(&o), tu_out_free(&p), tu_out_free(&m);
    carl_router_free(r);
  }
}

static void test_bad(void **st) {
  (void)st;
  carl_router_t *r;
  assert_int_equal(tu_create("tamoe", "ta=-1", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "ta"));
  carl_topo_t tp = topo(2, 1);
  int32_t src[2] = {0, 5};
  float z[4] = {1, 0, 0, 1};
  assert_int_equal(tu_create("tamoe", "k=1", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 2, 1, 1);
  carl_route_in_t in = {.T = 2, .E = 2, .logits = z, .src = src, .topo = &tp};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "token 1 is on device 5"));
  tu_out_free(&o);
  carl_router_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hand),
      cmocka_unit_test(test_uniform),
      cmocka_unit_test(test_grad_fd),
      cmocka_unit_test(test_bad),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
