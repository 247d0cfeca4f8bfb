/* The GPU routing kernel against the CPU reference. Every configuration routes fresh random logits
 * (a new seed each run, printed so that a failure can be replayed with CARL_TEST_SEED=<seed>)
 * through carl_cuda_route and through carl_router_route on the CPU's portable executor (the
 * reference the GPU kernel reproduces operation for operation), with two routers made with the
 * same options, and requires:
 *   experts: the same expert in every slot (the same selection, in the same slot order);
 *   weights: within the error bound of the GPU's score function: exactly the CPU's scores where the
 *     selection reads them (biased or group-limited selection), so the weights differ only by the
 *     renormalisation's rounding; __expf (2 + 1.17 |x| ulp, CUDA Programming Guide, table of
 *     intrinsic functions) where the selection is on the logits. Bound per weight:
 *     (12 + 1.2 (|z_e - max z| + |z_e|) + k/2 + E/16) eps max(|a|, |b|) + 1e-12 (the sum terms as in
 *     test_route_simd.c's WEIGHT_TOL);
 *   loads: exactly the counts of the CPU's experts; hop counts: exactly carl_plan_build's;
 *   losses and loss_total: 1e-5 relative (float sums of the same per-token values in another
 *     order, T <= 5000 tokens).
 * Configurations: topk (softmax with aux and z losses, renorm off, sigmoid, E = 16 .. 512), switch,
 * lossfree with a random bias (sigmoid + bias), the DeepSeek-V3 policy (lossfree with 8 groups, 4
 * kept), grouplimited (groups from the option and from a multi-node topology), carl after its warm
 * start (per-device cost bias, node-limited with a node bonus, and flat) on an 8 x 8 topology with
 * random token sources. Also: several route + update steps of lossfree and carl, a router without
 * a GPU kernel (it runs on the CPU, with a note), NaN and infinite logits (the CPU's error message),
 * sources out of range, a missing device and a failed allocation (clear errors), and the gate
 * backward against carl_route_gate_backward.
 * Without CUDA in the build or without a device the GPU cases are skipped, visibly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "carl/balance.h"
#include "carl/cuda.h"
#include "carl/plan.h"
#include "kern/variant.h"
#include "route/router_impl.h"
#include "route_testutil.h"

static carl_cuda_t *G;
static uint64_t SEED;

static int have_gpu(void) {
  if (!carl_cuda_built()) {
    print_message("[  SKIPPED ] this build has no CUDA path: GPU routing tests skipped\n");
    return 0;
  }
  if (!G) {
    print_message("[  SKIPPED ] no CUDA device: GPU routing tests skipped\n");
    return 0;
  }
  return 1;
}

/* splitmix64 -> normal by Box-Muller: the test's own generator, seeded per run */
static uint64_t sm_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double sm_unif(uint64_t *s) { return ((sm_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static float sm_normal(uint64_t *s) { return (float)(sqrt(-2.0 * log(sm_unif(s))) * cos(6.283185307179586 * sm_unif(s))); }

static void *dev_copy(const void *h, size_t bytes) {
  void *d = NULL;
  assert_int_equal(carl_cuda_malloc(G, bytes, &d), CARL_OK);
  assert_int_equal(carl_cuda_upload(G, d, h, bytes), CARL_OK);
  return d;
}

typedef struct {
  const char *router, *opts;
  int E, k;
  int64_t T;
  int nodes, dpn;  /* topology (0: none) */
  int rand_src;    /* random token sources */
  int rand_bias;   /* lossfree: random bias loaded into both routers */
  int steps;       /* route + update steps */
  int expect_cpu;  /* the router runs on the CPU */
} cfg_t;

/* zgap: z_e - max z (the softmax argument); z: z_e (the sigmoid argument) */
static double weight_tol(double a, double b, float zgap, float z, int k, int E) {
  return (12 + 1.2 * (fabs(zgap) + fabs(z)) + k / 2.0 + E / 16.0) * FLT_EPSILON * fmax(fabs(a), fabs(b)) + 1e-12;
}

static void run_cfg(const cfg_t *c) {
  if (!have_gpu()) {
    skip();
    return;
  }
  const int64_t T = c->T;
  const int E = c->E, k = c->k;
  uint64_t s = SEED ^ (uint64_t)E * 1315423911u ^ (uint64_t)T;
  carl_topo_t topo;
  const carl_topo_t *tp = NULL;
  if (c->nodes) {
    assert_int_equal(carl_topo_make(&topo, c->nodes, c->dpn, 160, 3, 50, 10), CARL_OK);
    tp = &topo;
  }
  const int D = tp ? tp->devices : 1;
  float *z = malloc(sizeof(float) * (size_t)T * E);
  int32_t *src = malloc(sizeof(int32_t) * (size_t)T);
  assert_non_null(z);
  assert_non_null(src);
  for (int64_t i = 0; i < T * E; i++) z[i] = 2.0f * sm_normal(&s);
  for (int64_t t = 0; t < T; t++) src[t] = (int32_t)(sm_next(&s) % (uint64_t)D);
  carl_router_t *rc, *rg;
  assert_int_equal(tu_create(c->router, c->opts, &rc), CARL_OK);
  assert_int_equal(tu_create(c->router, c->opts, &rg), CARL_OK);
  if (c->rand_bias) {
    double *b = malloc(sizeof(double) * (size_t)E);
    for (int e = 0; e < E; e++) b[e] = 0.05 * sm_normal(&s);
    char path[256];
    snprintf(path, sizeof path, "/tmp/carl_test_cuda_bias_%d.bin", (int)getpid());
    assert_int_equal(carl_route_state_save(path, c->router, CARL_STATE_F64, E, b), CARL_OK);
    assert_int_equal(carl_router_load(rc, path), CARL_OK);
    assert_int_equal(carl_router_load(rg, path), CARL_OK);
    remove(path);
    free(b);
  }
  float *dz = dev_copy(z, sizeof(float) * (size_t)T * E);
  int32_t *dsrc = c->rand_src ? dev_copy(src, sizeof(int32_t) * (size_t)T) : NULL;
  int32_t *dex;
  float *dw;
  assert_int_equal(carl_cuda_malloc(G, sizeof(int32_t) * (size_t)T * k, (void **)&dex), CARL_OK);
  assert_int_equal(carl_cuda_malloc(G, sizeof(float) * (size_t)T * k, (void **)&dw), CARL_OK);
  int32_t *ex_c = malloc(sizeof(int32_t) * (size_t)T * k), *ex_g = malloc(sizeof(int32_t) * (size_t)T * k);
  float *w_c = malloc(sizeof(float) * (size_t)T * k), *w_g = malloc(sizeof(float) * (size_t)T * k);
  double *load_c = malloc(sizeof(double) * (size_t)E), *load_g = malloc(sizeof(double) * (size_t)E);
  int64_t *hop_g = malloc(sizeof(int64_t) * (size_t)D * D);
  for (int step = 0; step < (c->steps > 0 ? c->steps : 1); step++) {
    carl_route_in_t in_c = {.T = T, .E = E, .logits = z, .src = c->rand_src ? src : NULL, .topo = tp, .step = step};
    carl_route_in_t in_g = in_c;
    in_g.logits = dz;
    in_g.src = dsrc;
    carl_route_out_t oc = {.experts = ex_c, .weights = w_c};
    carl__kern_simd = 0;
    carl_status st_c = carl_router_route(rc, &in_c, &oc);
    carl__kern_simd = -1;
    assert_int_equal(carl_cuda_memset(G, dex, 0xEE, sizeof(int32_t) * (size_t)T * k), CARL_OK); /* poison */
    carl_cuda_route_t og = {.out = {.experts = dex, .weights = dw}, .load = load_g, .hop = hop_g};
    carl_status st_g = carl_cuda_route(G, rg, &in_g, &og);
    if (st_c != CARL_OK || st_g != CARL_OK) print_error("%s %s: cpu %d, gpu %d: %s\n", c->router, c->opts, st_c, st_g, carl_errmsg());
    assert_int_equal(st_c, CARL_OK);
    assert_int_equal(st_g, CARL_OK);
    assert_int_equal(og.on_cpu, c->expect_cpu);
    if (og.on_cpu) print_message("  %s (%s): ran on the CPU: %s\n", c->router, c->opts, og.note);
    assert_int_equal(carl_cuda_download(G, ex_g, dex, sizeof(int32_t) * (size_t)T * k), CARL_OK);
    assert_int_equal(carl_cuda_download(G, w_g, dw, sizeof(float) * (size_t)T * k), CARL_OK);
    int64_t bad = 0;
    for (int64_t t = 0; t < T; t++) {
      float mx = z[t * E];
      for (int e = 1; e < E; e++) mx = z[t * E + e] > mx ? z[t * E + e] : mx;
      for (int j = 0; j < k; j++) {
        const int64_t i = t * k + j;
        const int e = ex_c[i];
        const int ok = ex_c[i] == ex_g[i] && fabs((double)w_c[i] - w_g[i]) <= weight_tol(w_c[i], w_g[i], e >= 0 ? z[t * E + e] - mx : 0, e >= 0 ? z[t * E + e] : 0, k, E);
        if (!ok && bad++ < 4)
          print_error("%s (%s) step %d token %lld slot %d: cpu %d:%.9g, gpu %d:%.9g\n", c->router, c->opts, step,
                      (long long)t, j, ex_c[i], (double)w_c[i], ex_g[i], (double)w_g[i]);
      }
    }
    if (bad) print_error("seed %llu: %lld slots differ\n", (unsigned long long)SEED, (long long)bad);
    assert_int_equal(bad, 0);
    carl_load_experts(ex_c, T, k, E, load_c);
    for (int e = 0; e < E; e++) assert_true(load_c[e] == load_g[e]);
    /* hop counts of the flat plan */
    carl_placement_t pl;
    assert_int_equal(carl_placement_contiguous(&pl, E, D), CARL_OK);
    if (tp) {
      carl_plan_t plan = {0};
      assert_int_equal(carl_plan_build(tp, &pl, ex_c, in_c.src, T, k, CARL_PLAN_FLAT, -1, CARL_PLAN_COUNTS, &plan), CARL_OK);
      for (int i = 0; i < D * D; i++)
        if (plan.hop[i] != hop_g[i]) print_error("hop %d -> %d: plan %lld, gpu %lld\n", i / D, i % D, (long long)plan.hop[i], (long long)hop_g[i]);
      for (int i = 0; i < D * D; i++) assert_true(plan.hop[i] == hop_g[i]);
      carl_plan_free(&plan);
    } else { /* one device: every token with a kept slot sends one (self) copy */
      int64_t n = 0;
      for (int64_t t = 0; t < T; t++) {
        int any = 0;
        for (int j = 0; j < k; j++) any |= ex_c[t * k + j] >= 0;
        n += any;
      }
      assert_true(hop_g[0] == n);
    }
    carl_placement_free(&pl);
    /* losses */
    if (oc.nloss != og.out.nloss) print_error("%d losses on the CPU, %d on the GPU\n", oc.nloss, og.out.nloss);
    assert_int_equal(oc.nloss, og.out.nloss);
    for (int i = 0; i < oc.nloss; i++) {
      assert_string_equal(oc.loss[i].name, og.out.loss[i].name);
      if (fabs(oc.loss[i].value - og.out.loss[i].value) > 1e-5 * fabs(oc.loss[i].value) + 1e-12)
        print_error("loss %s: cpu %.12g gpu %.12g\n", oc.loss[i].name, oc.loss[i].value, og.out.loss[i].value);
      assert_true(fabs(oc.loss[i].value - og.out.loss[i].value) <= 1e-5 * fabs(oc.loss[i].value) + 1e-12);
    }
    assert_true(fabs(oc.loss_total - og.out.loss_total) <= 1e-5 * fabs(oc.loss_total) + 1e-12);
    /* updates: the CPU from its experts, the GPU from its loads */
    if (c->steps > 0) {
      assert_int_equal(carl_router_update(rc, &in_c, &oc), CARL_OK);
      assert_int_equal(carl_cuda_route_update(G, rg, &in_g, &og), CARL_OK);
    }
  }
  carl_cuda_mfree(G, dz);
  carl_cuda_mfree(G, dsrc);
  carl_cuda_mfree(G, dex);
  carl_cuda_mfree(G, dw);
  free(z), free(src), free(ex_c), free(ex_g), free(w_c), free(w_g), free(load_c), free(load_g), free(hop_g);
  carl_router_free(rc);
  carl_router_free(rg);
}

#define CFG(name, ...)                     \
  static void name(void **st) {            \
    (void)st;                              \
    const cfg_t c = {__VA_ARGS__};         \
    run_cfg(&c);                           \
  }

CFG(topk_256, "topk", "k=8", 256, 8, 3001, 0, 0, 0, 0, 0, 0)
CFG(topk_64_raw, "topk", "k=6 renorm=0 aux=0 z_loss=0", 64, 6, 2047, 0, 0, 0, 0, 0, 0)
CFG(topk_sigmoid, "topk", "k=4 score=1", 32, 4, 1999, 0, 0, 0, 0, 0, 0)
CFG(topk_16, "topk", "k=2", 16, 2, 1500, 0, 0, 0, 0, 0, 0)
CFG(topk_32, "topk", "k=3", 32, 3, 1500, 0, 0, 0, 0, 0, 0)
CFG(topk_512, "topk", "k=16", 512, 16, 1200, 0, 0, 0, 0, 0, 0)
CFG(switch_128, "switch", "", 128, 1, 2500, 0, 0, 0, 0, 0, 0)
CFG(lossfree_bias, "lossfree", "k=8", 256, 8, 3001, 0, 0, 0, 1, 0, 0)
CFG(deepseek_v3, "lossfree", "k=8 groups=8 M=4", 256, 8, 3001, 0, 0, 0, 1, 0, 0)
CFG(deepseek_v3_steps, "lossfree", "k=8 groups=8 M=4 u=0.01", 256, 8, 1024, 0, 0, 0, 0, 4, 0)
CFG(grouplimited_opt, "grouplimited", "k=8 groups=8 M=4", 256, 8, 2222, 0, 0, 0, 0, 0, 0)
CFG(grouplimited_topo, "grouplimited", "k=4 level=1 M=2 score=1", 128, 4, 2000, 4, 2, 1, 0, 0, 0)
CFG(carl_nodes, "carl", "k=8 warm=0 M=4 lambda_loc=0.05 alpha_E0=0.01 alpha_G0=0.02", 256, 8, 3001, 8, 8, 1, 0, 0, 0)
CFG(carl_flat, "carl", "k=8 warm=0 hier=0 alpha_E0=0.01", 256, 8, 3001, 8, 8, 1, 0, 0, 0)
CFG(carl_steps, "carl", "k=6 warm=0 M=2", 128, 6, 1500, 4, 4, 1, 0, 3, 0)
CFG(sinkhorn_on_cpu, "sinkhorn", "k=2", 64, 2, 700, 0, 0, 0, 0, 0, 1)
CFG(carl_warm_on_cpu, "carl", "k=4 W=5", 64, 4, 700, 2, 4, 1, 0, 2, 1)
CFG(capacity_on_cpu, "topk", "k=2 capacity_factor=1", 64, 2, 900, 0, 0, 0, 0, 0, 1)

/* non-finite logits and bad sources: the CPU's errors */
static void bad_inputs(void **st) {
  (void)st;
  if (!have_gpu()) {
    skip();
    return;
  }
  const int E = 64;
  const int64_t T = 300;
  uint64_t s = SEED + 7;
  float *z = malloc(sizeof(float) * T * E);
  for (int64_t i = 0; i < T * E; i++) z[i] = sm_normal(&s);
  int32_t ex[300 * 4];
  float w[300 * 4];
  int32_t *dex;
  float *dw;
  assert_int_equal(carl_cuda_malloc(G, sizeof ex, (void **)&dex), CARL_OK);
  assert_int_equal(carl_cuda_malloc(G, sizeof w, (void **)&dw), CARL_OK);
  const char *routers[] = {"topk", "lossfree", "grouplimited"};
  const char *opts[] = {"k=4", "k=4", "k=4 groups=4 M=2"};
  for (int v = 0; v < 2; v++) {
    z[211 * E + 17] = v == 0 ? NAN : INFINITY;
    z[250 * E + 3] = NAN;
    float *dz = dev_copy(z, sizeof(float) * T * E);
    for (int ri = 0; ri < 3; ri++) {
      carl_router_t *rc, *rg;
      assert_int_equal(tu_create(routers[ri], opts[ri], &rc), CARL_OK);
      assert_int_equal(tu_create(routers[ri], opts[ri], &rg), CARL_OK);
      carl_route_in_t in = {.T = T, .E = E, .logits = z};
      carl_route_out_t oc = {.experts = ex, .weights = w};
      carl_status a = carl_router_route(rc, &in, &oc);
      char msg[512];
      snprintf(msg, sizeof msg, "%s", carl_errmsg());
      in.logits = dz;
      carl_cuda_route_t og = {.out = {.experts = dex, .weights = dw}};
      carl_status b = carl_cuda_route(G, rg, &in, &og);
      print_message("  %s: CPU '%s', GPU '%s'\n", routers[ri], msg, carl_errmsg());
      assert_int_equal(a, CARL_ERR_NUMERIC);
      assert_int_equal(b, CARL_ERR_NUMERIC);
      assert_string_equal(msg, carl_errmsg());
      carl_router_free(rc);
      carl_router_free(rg);
    }
    carl_cuda_mfree(G, dz);
    z[211 * E + 17] = 0.5f;
    z[250 * E + 3] = 0.25f;
  }
  /* a source device outside the topology */
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 2, 160, 3, 50, 10), CARL_OK);
  int32_t src[300];
  for (int t = 0; t < T; t++) src[t] = t % 4;
  src[123] = 9;
  int32_t *dsrc = dev_copy(src, sizeof src);
  float *dz = dev_copy(z, sizeof(float) * T * E);
  carl_router_t *rc, *rg;
  assert_int_equal(tu_create("carl", "k=4 warm=0", &rc), CARL_OK);
  assert_int_equal(tu_create("carl", "k=4 warm=0", &rg), CARL_OK);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = src, .topo = &topo};
  carl_route_out_t oc = {.experts = ex, .weights = w};
  assert_int_equal(carl_router_route(rc, &in, &oc), CARL_ERR_INVALID);
  char msg[512];
  snprintf(msg, sizeof msg, "%s", carl_errmsg());
  in.logits = dz;
  in.src = dsrc;
  carl_cuda_route_t og = {.out = {.experts = dex, .weights = dw}};
  assert_int_equal(carl_cuda_route(G, rg, &in, &og), CARL_ERR_INVALID);
  print_message("  bad source: CPU '%s', GPU '%s'\n", msg, carl_errmsg());
  assert_string_equal(msg, carl_errmsg());
  carl_router_free(rc);
  carl_router_free(rg);
  carl_cuda_mfree(G, dz);
  carl_cuda_mfree(G, dsrc);
  carl_cuda_mfree(G, dex);
  carl_cuda_mfree(G, dw);
  free(z);
}

/* no device, a device out of range, an allocation larger than the device */
static void device_errors(void **st) {
  (void)st;
  carl_cuda_t *g = NULL;
  if (!carl_cuda_built()) {
    assert_int_equal(carl_cuda_create(0, &g), CARL_ERR_UNSUPPORTED);
    assert_non_null(strstr(carl_errmsg(), "no GPU path"));
    print_message("  without CUDA: '%s'\n", carl_errmsg());
    return;
  }
  if (!G) {
    assert_int_equal(carl_cuda_create(0, &g), CARL_ERR_UNSUPPORTED);
    assert_non_null(strstr(carl_errmsg(), "no CUDA device"));
    print_message("  no device: '%s'\n", carl_errmsg());
    return;
  }
  assert_int_equal(carl_cuda_create(999, &g), CARL_ERR_UNSUPPORTED);
  assert_null(g);
  assert_non_null(strstr(carl_errmsg(), "device 999 does not exist"));
  print_message("  device 999: '%s'\n", carl_errmsg());
  void *p = NULL;
  assert_int_equal(carl_cuda_malloc(G, (size_t)1 << 50, &p), CARL_ERR_NOMEM);
  assert_null(p);
  assert_non_null(strstr(carl_errmsg(), "out of device memory: asked for 1125899906842624 bytes"));
  print_message("  1 PiB: '%s'\n", carl_errmsg());
  /* the context still works after the failure */
  assert_int_equal(carl_cuda_malloc(G, 1024, &p), CARL_OK);
  carl_cuda_mfree(G, p);
}

/* the gate backward against the CPU's */
static void gate_backward(void **st) {
  (void)st;
  if (!have_gpu()) {
    skip();
    return;
  }
  const int E = 128, k = 6;
  const int64_t T = 1111;
  uint64_t s = SEED + 11;
  for (int score = 0; score < 2; score++)
    for (int renorm = 0; renorm < 2; renorm++) {
      float *z = malloc(sizeof(float) * T * E), *dwt = malloc(sizeof(float) * T * k);
      float *ref = malloc(sizeof(float) * T * E), *got = malloc(sizeof(float) * T * E);
      int32_t *ex = malloc(sizeof(int32_t) * T * k);
      for (int64_t i = 0; i < T * E; i++) z[i] = 1.5f * sm_normal(&s), ref[i] = 0.1f * sm_normal(&s);
      memcpy(got, ref, sizeof(float) * T * E);
      for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
          int e;
          int dup;
          do { /* distinct experts, one slot dropped now and then */
            e = (int)(sm_next(&s) % E);
            dup = 0;
            for (int q = 0; q < j; q++) dup |= ex[t * k + q] == e;
          } while (dup);
          ex[t * k + j] = (t % 7 == 3 && j == 2) ? -1 : e;
          dwt[t * k + j] = sm_normal(&s);
        }
      assert_int_equal(carl_route_gate_backward(z, T, E, k, score, renorm, ex, dwt, ref), CARL_OK);
      float *dz = dev_copy(z, sizeof(float) * T * E), *ddw = dev_copy(dwt, sizeof(float) * T * k);
      float *dg = dev_copy(got, sizeof(float) * T * E);
      int32_t *dex = dev_copy(ex, sizeof(int32_t) * T * k);
      assert_int_equal(carl_cuda_gate_backward(G, dz, T, E, k, score, renorm, dex, ddw, dg), CARL_OK);
      assert_int_equal(carl_cuda_download(G, got, dg, sizeof(float) * T * E), CARL_OK);
      double num = 0, den = 0;
      for (int64_t i = 0; i < T * E; i++) {
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += (double)ref[i] * ref[i];
      }
      const double rel = sqrt(num / den);
      print_message("  gate backward score %d renorm %d: relative error %.3g\n", score, renorm, rel);
      assert_true(rel < 1e-6); /* float32 scores (a few ulp) in both; 1e-6 is 8 eps */
      carl_cuda_mfree(G, dz), carl_cuda_mfree(G, ddw), carl_cuda_mfree(G, dg), carl_cuda_mfree(G, dex);
      free(z), free(dwt), free(ref), free(got), free(ex);
    }
}

int main(void) {
  const char *env = getenv("CARL_TEST_SEED");
  SEED = env ? strtoull(env, NULL, 10) : ((uint64_t)time(NULL) * 2654435761u) ^ (uint64_t)getpid();
  printf("test_cuda_route: seed %llu (replay with CARL_TEST_SEED=%llu)\n", (unsigned long long)SEED, (unsigned long long)SEED);
  int n = 0;
  if (carl_cuda_built() && carl_cuda_device_count(&n) == CARL_OK && n > 0) {
    if (carl_cuda_create(0, &G) != CARL_OK) {
      fprintf(stderr, "test_cuda_route: %s\n", carl_errmsg());
      return 1;
    }
    printf("test_cuda_route: %s\n", carl_cuda_describe(G));
  } else {
    printf("test_cuda_route: %s: the GPU cases are skipped\n", carl_cuda_built() ? "no CUDA device" : "no CUDA in this build");
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(device_errors),    cmocka_unit_test(topk_256),          cmocka_unit_test(topk_64_raw),
      cmocka_unit_test(topk_sigmoid),     cmocka_unit_test(topk_16),     cmocka_unit_test(topk_32),           cmocka_unit_test(topk_512),
      cmocka_unit_test(switch_128),       cmocka_unit_test(lossfree_bias),     cmocka_unit_test(deepseek_v3),
      cmocka_unit_test(deepseek_v3_steps), cmocka_unit_test(grouplimited_opt), cmocka_unit_test(grouplimited_topo),
      cmocka_unit_test(carl_nodes),       cmocka_unit_test(carl_flat),         cmocka_unit_test(carl_steps),
      cmocka_unit_test(sinkhorn_on_cpu),  cmocka_unit_test(carl_warm_on_cpu),  cmocka_unit_test(capacity_on_cpu),
      cmocka_unit_test(bad_inputs),       cmocka_unit_test(gate_backward),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  carl_cuda_free(G);
  return rc;
}
