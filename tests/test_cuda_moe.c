/* The GPU MoE path against its CPU references, on fresh random inputs every run (the seed is
 * printed; CARL_TEST_SEED=<seed> replays it):
 *   the cuda executor against the local executor (src/exec/local.c): dispatch, combine (flat and
 *     hierarchical plans, forwarded copies folded into their parents) and migrate give the same
 *     bits (same float sums in the same order);
 *   SwiGLU forward and backward on bf16 rows against carl_swiglu_fwd / carl_swiglu_bwd on the same
 *     values: each output within one bf16 rounding (2^-8 relative, twice the half-ulp bound 2^-9,
 *     for the float32 differences of __expf) of the CPU's float32 value;
 *   the MoE expert layer (permute, grouped GEMM, SwiGLU, gated combine, and the backward) of one
 *     device against a float32 CPU computation of the same function from the same bf16 values
 *     (carl_sgemm, carl_swiglu_*), with both GEMM modes (per-expert cublasGemmEx and
 *     cublasGemmGroupedBatchedEx): relative L2 error of y, dx, dW13, dW2 and d(gates) under 1e-2,
 *     the bf16 range of METHOD.md (the GPU rounds H, A, Y, dY, dA, dH and the outputs to bf16, each a
 *     2^-9 relative error); on one device (D = 1) and on device 1 of a 2 x 2 topology.
 * The layer is also compared with PyTorch on the GPU machine (tests/gpu/moe_torch.py).
 * Without CUDA or without a device every case is skipped, visibly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "carl/cuda.h"
#include "carl/nn.h"
#include "carl/place.h"
#include "carl/plan.h"
#include "cuda/moe_internal.h"

static carl_cuda_t *G;
static uint64_t SEED;

static int have_gpu(void) {
  if (!G) {
    print_message("[  SKIPPED ] %s: GPU MoE tests skipped\n", carl_cuda_built() ? "no CUDA device" : "no CUDA in this build");
    return 0;
  }
  return 1;
}

static uint64_t sm_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double sm_unif(uint64_t *s) { return ((sm_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static float sm_normal(uint64_t *s) { return (float)(sqrt(-2.0 * log(sm_unif(s))) * cos(6.283185307179586 * sm_unif(s))); }

/* bf16 by round to nearest even, and back */
static uint16_t to_bf(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float from_bf(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float x;
  memcpy(&x, &u, 4);
  return x;
}

static void *dev_copy(const void *h, size_t bytes) {
  void *d = NULL;
  assert_int_equal(carl_cuda_malloc(G, bytes, &d), CARL_OK);
  assert_int_equal(carl_cuda_upload(G, d, h, bytes), CARL_OK);
  return d;
}

static void random_experts(uint64_t *s, int32_t *ex, int64_t T, int k, int E, int drop) {
  for (int64_t t = 0; t < T; t++)
    for (int j = 0; j < k; j++) {
      int e, dup;
      do {
        e = (int)(sm_next(s) % (uint64_t)E);
        dup = 0;
        for (int q = 0; q < j; q++) dup |= ex[t * k + q] == e;
      } while (dup);
      ex[t * k + j] = drop && sm_next(s) % 11 == 0 ? -1 : e;
    }
}

/* ---- the cuda executor against the local one ------------------------------------------------ */
static void executor(void **st) {
  (void)st;
  if (!have_gpu()) {
    skip();
    return;
  }
  uint64_t s = SEED + 1;
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 2, 160, 3, 50, 10), CARL_OK);
  const int E = 8, k = 3, d = 40, D = 4;
  const int64_t T = 777;
  int32_t *ex = malloc(sizeof(int32_t) * T * k), *src = malloc(sizeof(int32_t) * T);
  random_experts(&s, ex, T, k, E, 1);
  for (int64_t t = 0; t < T; t++) src[t] = (int32_t)(sm_next(&s) % D);
  carl_placement_t pl;
  assert_int_equal(carl_placement_contiguous(&pl, E, D), CARL_OK);
  carl_exec_t *lx, *gx;
  assert_int_equal(carl_exec_local_create(&lx), CARL_OK);
  assert_int_equal(carl_exec_cuda_create(G, &gx), CARL_OK);
  assert_string_equal(carl_exec_name(gx), "cuda");
  for (int mode = 0; mode < 2; mode++) {
    carl_plan_t p = {0};
    assert_int_equal(carl_plan_build(&topo, &pl, ex, src, T, k, mode ? CARL_PLAN_HIER : CARL_PLAN_FLAT, -1, CARL_PLAN_ROWS, &p), CARL_OK);
    const int64_t nc = p.n_send + p.n_fwd;
    if (mode) assert_true(p.n_fwd > 0);
    float *x = malloc(sizeof(float) * T * d), *xc = malloc(sizeof(float) * nc * d), *xg = malloc(sizeof(float) * nc * d);
    float *y = malloc(sizeof(float) * T * d), *yg = malloc(sizeof(float) * T * d), *yc = malloc(sizeof(float) * nc * d);
    for (int64_t i = 0; i < T * d; i++) x[i] = sm_normal(&s), y[i] = sm_normal(&s);
    for (int64_t i = 0; i < nc * d; i++) yc[i] = sm_normal(&s);
    float *dx = dev_copy(x, sizeof(float) * T * d), *dy = dev_copy(y, sizeof(float) * T * d);
    float *dyc = dev_copy(yc, sizeof(float) * nc * d), *dxc;
    assert_int_equal(carl_cuda_malloc(G, sizeof(float) * nc * d, (void **)&dxc), CARL_OK);
    assert_int_equal(carl_exec_dispatch(lx, &p, x, d, xc), CARL_OK);
    assert_int_equal(carl_exec_dispatch(gx, &p, dx, d, dxc), CARL_OK);
    assert_int_equal(carl_cuda_download(G, xg, dxc, sizeof(float) * nc * d), CARL_OK);
    assert_memory_equal(xc, xg, sizeof(float) * nc * d);
    assert_int_equal(carl_exec_combine(lx, &p, yc, d, y), CARL_OK);
    assert_int_equal(carl_exec_combine(gx, &p, dyc, d, dy), CARL_OK);
    assert_int_equal(carl_cuda_download(G, yg, dy, sizeof(float) * T * d), CARL_OK);
    assert_memory_equal(y, yg, sizeof(float) * T * d);
    print_message("  executor, %s plan: %lld + %lld copies, dispatch and combine bit-identical\n", mode ? "hierarchical" : "flat",
                  (long long)p.n_send, (long long)p.n_fwd);
    carl_cuda_mfree(G, dx), carl_cuda_mfree(G, dy), carl_cuda_mfree(G, dyc), carl_cuda_mfree(G, dxc);
    free(x), free(xc), free(xg), free(y), free(yg), free(yc);
    carl_plan_free(&p);
  }
  /* migrate: experts permuted over the slots */
  int32_t table[8] = {5, 2, 7, 0, 1, 6, 3, 4};
  carl_placement_t nw;
  assert_int_equal(carl_placement_from_table(&nw, E, D, 2, table), CARL_OK);
  carl_migration_t mig;
  assert_int_equal(carl_place_migrate(&topo, &pl, &nw, 0, 1000.0, &mig), CARL_OK);
  assert_true(mig.n_moves > 0);
  const int64_t numel = 33;
  float *w = malloc(sizeof(float) * D * 2 * numel), *wg = malloc(sizeof(float) * D * 2 * numel);
  for (int64_t i = 0; i < D * 2 * numel; i++) w[i] = sm_normal(&s);
  float *dw = dev_copy(w, sizeof(float) * D * 2 * numel);
  carl_exec_tensor_t th = {.base = w, .numel = numel}, tg = {.base = dw, .numel = numel};
  assert_int_equal(carl_exec_migrate(lx, &pl, &mig, &th, 1), CARL_OK);
  assert_int_equal(carl_exec_migrate(gx, &pl, &mig, &tg, 1), CARL_OK);
  assert_int_equal(carl_cuda_download(G, wg, dw, sizeof(float) * D * 2 * numel), CARL_OK);
  assert_memory_equal(w, wg, sizeof(float) * D * 2 * numel);
  assert_true(carl_exec_migrated_bytes(gx) == carl_exec_migrated_bytes(lx));
  carl_cuda_mfree(G, dw);
  free(w), free(wg);
  carl_migration_free(&mig);
  carl_placement_free(&nw);
  carl_placement_free(&pl);
  carl_exec_free(lx);
  carl_exec_free(gx);
  free(ex), free(src);
}

/* ---- the MoE layer ------------------------------------------------------------------------- */
static double rel_l2(const float *a, const float *ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    num += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
    den += (double)ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void bf_down(float *out, const uint16_t *h, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = from_bf(h[i]);
}

static void layer_case(int nodes, int dpn, int dev, int mode_hier, int gemm) {
  uint64_t s = SEED + 100 + (uint64_t)(nodes * 10 + dev) * 7 + (uint64_t)gemm;
  const int E = 8, k = 2, d = 256, f = 96;
  const int64_t T = 1000;
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, nodes, dpn, 160, 3, 50, 10), CARL_OK);
  const int D = topo.devices, S = E / D;
  int32_t *ex = malloc(sizeof(int32_t) * T * k), *src = malloc(sizeof(int32_t) * T);
  random_experts(&s, ex, T, k, E, 1);
  for (int64_t t = 0; t < T; t++) src[t] = (int32_t)(sm_next(&s) % (uint64_t)D);
  carl_placement_t pl;
  assert_int_equal(carl_placement_contiguous(&pl, E, D), CARL_OK);
  carl_plan_t p = {0};
  assert_int_equal(carl_plan_build(&topo, &pl, ex, src, T, k, mode_hier ? CARL_PLAN_HIER : CARL_PLAN_FLAT, -1, CARL_PLAN_ROWS, &p), CARL_OK);
  /* bf16 inputs, and their float32 values for the reference */
  const int64_t nx = T * d, n13 = (int64_t)S * 2 * f * d, n2 = (int64_t)S * d * f;
  uint16_t *hx = malloc(2 * nx), *h13 = malloc(2 * n13), *h2 = malloc(2 * n2), *hdy = malloc(2 * nx);
  float *x = malloc(4 * nx), *w13 = malloc(4 * n13), *w2 = malloc(4 * n2), *dy = malloc(4 * nx);
  float *gates = malloc(sizeof(float) * T * k);
  for (int64_t i = 0; i < nx; i++) hx[i] = to_bf(sm_normal(&s)), hdy[i] = to_bf(sm_normal(&s));
  for (int64_t i = 0; i < n13; i++) h13[i] = to_bf(sm_normal(&s) / sqrtf((float)d));
  for (int64_t i = 0; i < n2; i++) h2[i] = to_bf(sm_normal(&s) / sqrtf((float)f));
  for (int64_t i = 0; i < T * k; i++) gates[i] = ex[i] >= 0 ? (float)sm_unif(&s) : 0.0f;
  bf_down(x, hx, nx), bf_down(w13, h13, n13), bf_down(w2, h2, n2), bf_down(dy, hdy, nx);
  /* the reference: rows of device dev in plan order */
  const int64_t r0 = p.recv_off[(int64_t)dev * S], R = p.recv_off[(int64_t)dev * S + S] - r0;
  float *xp = calloc((size_t)R * d, 4), *H = calloc((size_t)R * 2 * f, 4), *A = calloc((size_t)R * f, 4);
  float *Y = calloc((size_t)R * d, 4), *dY = calloc((size_t)R * d, 4), *dA = calloc((size_t)R * f, 4);
  float *dH = calloc((size_t)R * 2 * f, 4), *dxp = calloc((size_t)R * d, 4);
  float *y = calloc((size_t)nx, 4), *dx = calloc((size_t)nx, 4), *dw13 = calloc((size_t)n13, 4), *dw2 = calloc((size_t)n2, 4);
  float *dg = calloc((size_t)T * k, 4);
  int32_t *rtok = malloc(sizeof(int32_t) * (size_t)(R > 0 ? R : 1));
  for (int64_t r = 0; r < R; r++) {
    int64_t c = p.row_copy[r0 + r];
    if (c >= p.n_send) c = p.fwd_parent[c - p.n_send];
    rtok[r] = p.send_tok[c];
    memcpy(xp + r * d, x + (int64_t)rtok[r] * d, 4 * (size_t)d);
  }
  for (int j = 0; j < S; j++) {
    const int64_t a = p.recv_off[(int64_t)dev * S + j] - r0, n = p.recv_off[(int64_t)dev * S + j + 1] - r0 - a;
    if (n == 0) continue;
    const float *W13 = w13 + (int64_t)j * 2 * f * d, *W2 = w2 + (int64_t)j * d * f;
    carl_sgemm(0, 1, n, 2 * f, d, 1, xp + a * d, d, W13, d, 0, H + a * 2 * f, 2 * f);
    carl_swiglu_fwd(A + a * f, H + a * 2 * f, n, f);
    carl_sgemm(0, 1, n, d, f, 1, A + a * f, f, W2, f, 0, Y + a * d, d);
  }
  for (int64_t r = 0; r < R; r++) {
    const int32_t t = rtok[r];
    const float gt = gates[p.row_slot[r0 + r]];
    double dot = 0;
    for (int c = 0; c < d; c++) {
      y[t * d + c] += gt * Y[r * d + c];
      dY[r * d + c] = gt * dy[t * d + c];
      dot += (double)dy[t * d + c] * Y[r * d + c];
    }
    dg[p.row_slot[r0 + r]] = (float)dot;
  }
  for (int j = 0; j < S; j++) {
    const int64_t a = p.recv_off[(int64_t)dev * S + j] - r0, n = p.recv_off[(int64_t)dev * S + j + 1] - r0 - a;
    if (n == 0) continue;
    const float *W13 = w13 + (int64_t)j * 2 * f * d, *W2 = w2 + (int64_t)j * d * f;
    carl_sgemm(0, 0, n, f, d, 1, dY + a * d, d, W2, f, 0, dA + a * f, f);
    carl_sgemm(1, 0, d, f, n, 1, dY + a * d, d, A + a * f, f, 0, dw2 + (int64_t)j * d * f, f);
    carl_swiglu_bwd(dH + a * 2 * f, dA + a * f, H + a * 2 * f, n, f);
    carl_sgemm(0, 0, n, d, 2 * f, 1, dH + a * 2 * f, 2 * f, W13, d, 0, dxp + a * d, d);
    carl_sgemm(1, 0, 2 * f, d, n, 1, dH + a * 2 * f, 2 * f, xp + a * d, d, 0, dw13 + (int64_t)j * 2 * f * d, d);
  }
  for (int64_t r = 0; r < R; r++)
    for (int c = 0; c < d; c++) dx[(int64_t)rtok[r] * d + c] += dxp[r * d + c];
  /* the GPU */
  uint16_t *gx = dev_copy(hx, 2 * nx), *g13 = dev_copy(h13, 2 * n13), *g2 = dev_copy(h2, 2 * n2), *gdy = dev_copy(hdy, 2 * nx);
  float *ggates = dev_copy(gates, sizeof(float) * T * k), *gdg;
  uint16_t *gy, *gdx, *gd13, *gd2;
  assert_int_equal(carl_cuda_malloc(G, 2 * nx, (void **)&gy), CARL_OK);
  assert_int_equal(carl_cuda_malloc(G, 2 * nx, (void **)&gdx), CARL_OK);
  assert_int_equal(carl_cuda_malloc(G, 2 * n13, (void **)&gd13), CARL_OK);
  assert_int_equal(carl_cuda_malloc(G, 2 * n2, (void **)&gd2), CARL_OK);
  assert_int_equal(carl_cuda_malloc(G, sizeof(float) * T * k, (void **)&gdg), CARL_OK);
  assert_int_equal(carl_cuda_memset(G, gy, 0xFF, 2 * nx), CARL_OK); /* poison: NaN bf16 */
  assert_int_equal(carl_cuda_memset(G, gdx, 0xFF, 2 * nx), CARL_OK);
  assert_int_equal(carl_cuda_memset(G, gd13, 0xFF, 2 * n13), CARL_OK);
  assert_int_equal(carl_cuda_memset(G, gd2, 0xFF, 2 * n2), CARL_OK);
  carl_cuda_moe_t L = {.d = d, .f = f, .S = S, .k = k, .gemm = gemm};
  carl_cuda_moe_w_t W = {g13, g2};
  carl_cuda_moe_act_t *act;
  assert_int_equal(carl_cuda_moe_act_create(G, &act), CARL_OK);
  assert_int_equal(carl_cuda_moe_plan(G, &L, act, &p, dev), CARL_OK);
  assert_int_equal(carl_cuda_moe_rows(act), R);
  carl_status st = carl_cuda_moe_forward(G, &L, &W, act, gx, ggates, gy);
  if (st != CARL_OK) print_error("forward: %s\n", carl_errmsg());
  assert_int_equal(st, CARL_OK);
  st = carl_cuda_moe_backward(G, &L, &W, act, ggates, gdy, gdx, gd13, gd2, gdg);
  if (st != CARL_OK) print_error("backward: %s\n", carl_errmsg());
  assert_int_equal(st, CARL_OK);
  assert_int_equal(carl_cuda_sync(G), CARL_OK);
  uint16_t *b = malloc(2 * (size_t)(n13 > nx ? n13 : nx));
  float *o = malloc(4 * (size_t)(n13 > nx ? n13 : nx)), *og = malloc(sizeof(float) * T * k);
  double e[5];
  assert_int_equal(carl_cuda_download(G, b, gy, 2 * nx), CARL_OK);
  bf_down(o, b, nx);
  e[0] = rel_l2(o, y, nx);
  assert_int_equal(carl_cuda_download(G, b, gdx, 2 * nx), CARL_OK);
  bf_down(o, b, nx);
  e[1] = rel_l2(o, dx, nx);
  assert_int_equal(carl_cuda_download(G, b, gd13, 2 * n13), CARL_OK);
  bf_down(o, b, n13);
  e[2] = rel_l2(o, dw13, n13);
  assert_int_equal(carl_cuda_download(G, b, gd2, 2 * n2), CARL_OK);
  bf_down(o, b, n2);
  e[3] = rel_l2(o, dw2, n2);
  assert_int_equal(carl_cuda_download(G, og, gdg, sizeof(float) * T * k), CARL_OK);
  e[4] = rel_l2(og, dg, T * k);
  print_message("  MoE layer, %dx%d devices, device %d, %s, gemm %s: %lld rows; relative L2 error y %.2e dx %.2e "
                "dW13 %.2e dW2 %.2e dgates %.2e\n",
                nodes, dpn, dev, mode_hier ? "hierarchical" : "flat", gemm ? "grouped" : "per expert", (long long)R, e[0],
                e[1], e[2], e[3], e[4]);
  for (int i = 0; i < 5; i++) assert_true(e[i] < 1e-2); /* NaN fails too */
  carl_cuda_moe_act_free(act);
  carl_cuda_mfree(G, gx), carl_cuda_mfree(G, g13), carl_cuda_mfree(G, g2), carl_cuda_mfree(G, gdy);
  carl_cuda_mfree(G, ggates), carl_cuda_mfree(G, gdg), carl_cuda_mfree(G, gy), carl_cuda_mfree(G, gdx);
  carl_cuda_mfree(G, gd13), carl_cuda_mfree(G, gd2);
  free(b), free(o), free(og);
  free(hx), free(h13), free(h2), free(hdy), free(x), free(w13), free(w2), free(dy), free(gates);
  free(xp), free(H), free(A), free(Y), free(dY), free(dA), free(dH), free(dxp), free(y), free(dx), free(dw13), free(dw2), free(dg);
  free(rtok), free(ex), free(src);
  carl_plan_free(&p);
  carl_placement_free(&pl);
}

static void moe_layer(void **st) {
  (void)st;
  if (!have_gpu()) {
    skip();
    return;
  }
  layer_case(1, 1, 0, 0, 0);
  layer_case(1, 1, 0, 0, 1);
  layer_case(2, 2, 1, 0, 0);
  layer_case(2, 2, 1, 1, 1);
}

/* SwiGLU against the CPU on the same values, and the bf16 conversions */
static void swiglu(void **st) {
  (void)st;
  if (!have_gpu()) {
    skip();
    return;
  }
  uint64_t s = SEED + 5;
  const int64_t R = 300;
  const int f = 72;
  uint16_t *hh = malloc(2 * R * 2 * f), *hda = malloc(2 * R * f), *ha = malloc(2 * R * f), *hdh = malloc(2 * R * 2 * f);
  float *h = malloc(4 * R * 2 * f), *da = malloc(4 * R * f), *a = malloc(4 * R * f), *dh = malloc(4 * R * 2 * f);
  for (int64_t i = 0; i < R * 2 * f; i++) hh[i] = to_bf(3.0f * sm_normal(&s)), h[i] = from_bf(hh[i]);
  for (int64_t i = 0; i < R * f; i++) hda[i] = to_bf(sm_normal(&s)), da[i] = from_bf(hda[i]);
  carl_swiglu_fwd(a, h, R, f);
  carl_swiglu_bwd(dh, da, h, R, f);
  uint16_t *gh = dev_copy(hh, 2 * R * 2 * f), *gda = dev_copy(hda, 2 * R * f), *ga, *gdh;
  assert_int_equal(carl_cuda_malloc(G, 2 * R * f, (void **)&ga), CARL_OK);
  assert_int_equal(carl_cuda_malloc(G, 2 * R * 2 * f, (void **)&gdh), CARL_OK);
  assert_int_equal(carl__cuda_swiglu_fwd(G, ga, gh, R, f), CARL_OK);
  assert_int_equal(carl__cuda_swiglu_bwd(G, gdh, gda, gh, R, f), CARL_OK);
  assert_int_equal(carl_cuda_download(G, ha, ga, 2 * R * f), CARL_OK);
  assert_int_equal(carl_cuda_download(G, hdh, gdh, 2 * R * 2 * f), CARL_OK);
  /* one bf16 rounding (2^-9) plus the float32 difference of the sigmoid (__expf: (2 + 1.17 |g|) ulp);
   * the factor 1 + g (1 - s) of the gate gradient cancels near g = -1.28, so its bound is absolute */
  int64_t bad = 0;
  for (int64_t r = 0; r < R; r++)
    for (int c = 0; c < f; c++) {
      const float g = h[r * 2 * f + c], u = h[r * 2 * f + f + c], d = da[r * f + c];
      const float ga_ = from_bf(ha[r * f + c]), gg = from_bf(hdh[r * 2 * f + c]), gu = from_bf(hdh[r * 2 * f + f + c]);
      const float ca = a[r * f + c], cg = dh[r * 2 * f + c], cu = dh[r * 2 * f + f + c];
      const double slack = 1e-6 * fabs(d * u) * (1 + fabs(g)) * (1 + fabs(g));
      bad += fabs(ga_ - ca) > ldexp(fabs(ca), -8) + 1e-6 * fabs(g * u) * (1 + fabs(g));
      bad += fabs(gu - cu) > ldexp(fabs(cu), -8) + 1e-6 * fabs(g * d) * (1 + fabs(g));
      bad += fabs(gg - cg) > ldexp(fabs(cg), -8) + slack;
    }
  print_message("  SwiGLU: %lld of %lld values outside one bf16 rounding of the CPU's\n", (long long)bad, (long long)(3 * R * f));
  assert_int_equal(bad, 0);
  carl_cuda_mfree(G, gh), carl_cuda_mfree(G, gda), carl_cuda_mfree(G, ga), carl_cuda_mfree(G, gdh);
  free(hh), free(hda), free(ha), free(hdh), free(h), free(da), free(a), free(dh);
  /* conversions: round to nearest even, as to_bf here */
  const int64_t n = 100000;
  float *x = malloc(4 * n), *back = malloc(4 * n);
  uint16_t *hb = malloc(2 * n);
  for (int64_t i = 0; i < n; i++) x[i] = 10.0f * sm_normal(&s);
  float *dx = dev_copy(x, 4 * n);
  uint16_t *db;
  assert_int_equal(carl_cuda_malloc(G, 2 * n, (void **)&db), CARL_OK);
  assert_int_equal(carl_cuda_to_bf16(G, db, dx, n), CARL_OK);
  assert_int_equal(carl_cuda_download(G, hb, db, 2 * n), CARL_OK);
  for (int64_t i = 0; i < n; i++) assert_int_equal(hb[i], to_bf(x[i]));
  assert_int_equal(carl_cuda_from_bf16(G, dx, db, n), CARL_OK);
  assert_int_equal(carl_cuda_download(G, back, dx, 4 * n), CARL_OK);
  for (int64_t i = 0; i < n; i++) assert_true(back[i] == from_bf(hb[i]));
  carl_cuda_mfree(G, dx);
  carl_cuda_mfree(G, db);
  free(x), free(back), free(hb);
}

int main(void) {
  const char *env = getenv("CARL_TEST_SEED");
  SEED = env ? strtoull(env, NULL, 10) : ((uint64_t)time(NULL) * 2654435761u) ^ (uint64_t)getpid();
  printf("test_cuda_moe: seed %llu (replay with CARL_TEST_SEED=%llu)\n", (unsigned long long)SEED, (unsigned long long)SEED);
  int n = 0;
  if (carl_cuda_built() && carl_cuda_device_count(&n) == CARL_OK && n > 0) {
    if (carl_cuda_create(0, &G) != CARL_OK) {
      fprintf(stderr, "test_cuda_moe: %s\n", carl_errmsg());
      return 1;
    }
    printf("test_cuda_moe: %s\n", carl_cuda_describe(G));
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(executor),
      cmocka_unit_test(swiglu),
      cmocka_unit_test(moe_layer),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  carl_cuda_free(G);
  return rc;
}
