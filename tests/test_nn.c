/* Kernels of carl/nn.h: every backward against central finite differences of its forward,
 * plus hand-computed cases (AdamW step, schedule, attention at position 0, RMSNorm of a constant). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/nn.h"

static void fill(float *x, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = 0; i < n; i++) x[i] = scale * carl_rng_normal(seed, CARL_STREAM_DATA, (uint64_t)i);
}

/* Loss used by every check: L = sum_i out[i] * R[i] (R random), so dL/dout = R. */
static double dot(const float *a, const float *b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

typedef double (*loss_fn)(void *ctx);

/* Compare analytic gradient g of loss f w.r.t. x[0..n) with central differences at step h.
 * Error measure: |fd - g| <= atol + rtol * max(|fd|, |g|) per element. */
static void fd_check(const char *what, loss_fn f, void *ctx, float *x, const float *g, int64_t n, float h,
                     double atol, double rtol) {
  int64_t stride = n > 64 ? n / 64 : 1; /* at most ~64 probed elements */
  for (int64_t i = 0; i < n; i += stride) {
    float x0 = x[i];
    x[i] = x0 + h;
    double lp = f(ctx);
    x[i] = x0 - h;
    double lm = f(ctx);
    x[i] = x0;
    double fd = (lp - lm) / ((double)(x0 + h) - (double)(x0 - h)); /* the step actually taken in fp32 */
    double err = fabs(fd - g[i]), tol = atol + rtol * fmax(fabs(fd), fabs(g[i]));
    if (err > tol) fail_msg("%s[%ld]: analytic %.6g, finite difference %.6g", what, (long)i, g[i], fd);
  }
}

/* ---- linear -------------------------------------------------------------------------------- */
typedef struct {
  float *x, *W, *y, *R;
  int N, I, O;
} lin_ctx;
static double lin_loss(void *p) {
  lin_ctx *c = p;
  carl_linear_fwd(c->y, c->x, c->W, c->N, c->I, c->O);
  return dot(c->y, c->R, (int64_t)c->N * c->O);
}
static void test_linear(void **s) {
  (void)s;
  lin_ctx c = {.N = 5, .I = 7, .O = 3};
  c.x = malloc(sizeof(float) * 35); c.W = malloc(sizeof(float) * 21);
  c.y = malloc(sizeof(float) * 15); c.R = malloc(sizeof(float) * 15);
  float *dx = malloc(sizeof(float) * 35), *dW = calloc(21, sizeof(float));
  fill(c.x, 35, 1, 1); fill(c.W, 21, 2, 1); fill(c.R, 15, 3, 1);
  /* y[0][0] = sum_i x[0][i] W[0][i], written out */
  lin_loss(&c);
  double y00 = 0;
  for (int i = 0; i < 7; i++) y00 += (double)c.x[i] * c.W[i];
  assert_true(fabs(c.y[0] - y00) < 1e-5);
  carl_linear_bwd(dx, dW, c.R, c.x, c.W, c.N, c.I, c.O, 0);
  fd_check("linear dx", lin_loss, &c, c.x, dx, 35, 1e-2f, 1e-3, 1e-3);
  fd_check("linear dW", lin_loss, &c, c.W, dW, 21, 1e-2f, 1e-3, 1e-3);
  /* dW accumulates: a second call doubles it */
  float dW0 = dW[4];
  carl_linear_bwd(NULL, dW, c.R, c.x, c.W, c.N, c.I, c.O, 0);
  assert_true(fabs(dW[4] - 2 * dW0) < 1e-5 * (1 + fabs(dW0)));
  free(c.x); free(c.W); free(c.y); free(c.R); free(dx); free(dW);
}

/* ---- RMSNorm ------------------------------------------------------------------------------- */
typedef struct {
  float *x, *w, *y, *rstd, *R;
  int N, d;
} rms_ctx;
static double rms_loss(void *p) {
  rms_ctx *c = p;
  carl_rmsnorm_fwd(c->y, c->rstd, c->x, c->w, c->N, c->d, 1e-5f);
  return dot(c->y, c->R, (int64_t)c->N * c->d);
}
static void test_rmsnorm(void **s) {
  (void)s;
  enum { N = 4, d = 37 };
  float x[N * d], w[d], y[N * d], rstd[N], R[N * d], dx[N * d], dw[d] = {0};
  fill(x, N * d, 4, 1); fill(w, d, 5, 1); fill(R, N * d, 6, 1);
  rms_ctx c = {x, w, y, rstd, R, N, d};
  rms_loss(&c);
  carl_rmsnorm_bwd(dx, dw, R, x, w, rstd, N, d, 0);
  fd_check("rmsnorm dx", rms_loss, &c, x, dx, N * d, 1e-2f, 2e-3, 5e-3);
  fd_check("rmsnorm dw", rms_loss, &c, w, dw, d, 1e-2f, 2e-3, 5e-3);
  /* a constant row c: mean(x^2) = c^2, so y = w * c / sqrt(c^2 + eps) ~= w * sign(c) */
  for (int j = 0; j < d; j++) x[j] = -3.0f;
  carl_rmsnorm_fwd(y, rstd, x, w, 1, d, 1e-5f);
  for (int j = 0; j < d; j++) assert_true(fabs(y[j] + w[j]) < 1e-5 * (1 + fabs(w[j])));
}

/* ---- attention ----------------------------------------------------------------------------- */
typedef struct {
  float *qkv, *out, *att, *R;
  int B, S, d, H;
} att_ctx;
static double att_loss(void *p) {
  att_ctx *c = p;
  carl_attention_fwd(c->out, c->att, c->qkv, c->B, c->S, c->d, c->H);
  return dot(c->out, c->R, (int64_t)c->B * c->S * c->d);
}
static void test_attention(void **s) {
  (void)s;
  enum { B = 2, S = 5, d = 8, H = 2 };
  float qkv[B * S * 3 * d], out[B * S * d], att[B * H * S * S], R[B * S * d], dqkv[B * S * 3 * d], scr[B * H * S * S];
  fill(qkv, B * S * 3 * d, 7, 1); fill(R, B * S * d, 8, 1);
  att_ctx c = {qkv, out, att, R, B, S, d, H};
  att_loss(&c);
  /* position 0 attends only to itself: out[b,0] = v[b,0] */
  for (int b = 0; b < B; b++)
    for (int j = 0; j < d; j++) assert_true(fabs(out[b * S * d + j] - qkv[b * S * 3 * d + 2 * d + j]) < 1e-6);
  /* position 1, head 0, by hand: p = softmax(q1.k0/sqrt(hd), q1.k1/sqrt(hd)); out = p0 v0 + p1 v1 */
  {
    const float *q1 = qkv + 3 * d, *k0 = qkv + d, *k1 = qkv + 3 * d + d, *v0 = qkv + 2 * d, *v1 = qkv + 3 * d + 2 * d;
    double s0 = 0, s1 = 0;
    for (int j = 0; j < d / H; j++) { s0 += q1[j] * k0[j]; s1 += q1[j] * k1[j]; }
    s0 /= sqrt(d / H); s1 /= sqrt(d / H);
    double p0 = exp(s0) / (exp(s0) + exp(s1)), p1 = 1 - p0;
    for (int j = 0; j < d / H; j++) assert_true(fabs(out[d + j] - (p0 * v0[j] + p1 * v1[j])) < 1e-5);
  }
  /* causality: changing the last token's k and v leaves earlier outputs unchanged */
  float before = out[(S - 2) * d + 3];
  qkv[(S - 1) * 3 * d + d + 1] += 5.0f;
  qkv[(S - 1) * 3 * d + 2 * d + 3] += 5.0f;
  att_loss(&c);
  assert_true(out[(S - 2) * d + 3] == before);
  carl_attention_bwd(dqkv, scr, R, qkv, att, B, S, d, H);
  fd_check("attention dqkv", att_loss, &c, qkv, dqkv, B * S * 3 * d, 1e-2f, 2e-3, 5e-3);
  /* every element of dqkv, not only a sample, for one batch: step through all */
  for (int i = 0; i < S * 3 * d; i += 7) {
    float x0 = qkv[i];
    qkv[i] = x0 + 1e-2f; double lp = att_loss(&c);
    qkv[i] = x0 - 1e-2f; double lm = att_loss(&c);
    qkv[i] = x0;
    double fd = (lp - lm) / 2e-2;
    assert_true(fabs(fd - dqkv[i]) < 2e-3 + 5e-3 * fabs(fd));
  }
}

/* ---- SwiGLU -------------------------------------------------------------------------------- */
typedef struct {
  float *h, *a, *R;
  int N, f;
} sw_ctx;
static double sw_loss(void *p) {
  sw_ctx *c = p;
  carl_swiglu_fwd(c->a, c->h, c->N, c->f);
  return dot(c->a, c->R, (int64_t)c->N * c->f);
}
static void test_swiglu(void **s) {
  (void)s;
  enum { N = 3, f = 11 };
  float h[N * 2 * f], a[N * f], R[N * f], dh[N * 2 * f];
  fill(h, N * 2 * f, 9, 2); fill(R, N * f, 10, 1);
  sw_ctx c = {h, a, R, N, f};
  sw_loss(&c);
  /* silu(1) * 2 = 2 / (1 + e^-1) = 1.4621172 */
  float hh[2] = {1.0f, 2.0f}, aa;
  carl_swiglu_fwd(&aa, hh, 1, 1);
  assert_true(fabs(aa - 1.4621172f) < 1e-6);
  carl_swiglu_bwd(dh, R, h, N, f);
  fd_check("swiglu dh", sw_loss, &c, h, dh, N * 2 * f, 1e-2f, 1e-3, 5e-3);
}

/* ---- cross-entropy ------------------------------------------------------------------------- */
typedef struct {
  float *z, *lse;
  int32_t *t;
  int N, V;
} xe_ctx;
static double xe_loss(void *p) {
  xe_ctx *c = p;
  int64_t n;
  return carl_xent_fwd(c->lse, c->z, c->t, c->N, c->V, &n);
}
static void test_xent(void **s) {
  (void)s;
  enum { N = 4, V = 9 };
  float z[N * V], lse[N], dz[N * V];
  int32_t t[N] = {3, -1, 0, 8};
  fill(z, N * V, 11, 2);
  xe_ctx c = {z, lse, t, N, V};
  int64_t n;
  double L = carl_xent_fwd(lse, z, t, N, V, &n);
  assert_int_equal(n, 3);
  /* by hand: mean over rows 0, 2, 3 of log(sum exp z) - z[target] */
  double ref = 0;
  for (int i = 0; i < N; i++) {
    if (t[i] < 0) continue;
    double se = 0;
    for (int j = 0; j < V; j++) se += exp(z[i * V + j]);
    ref += log(se) - z[i * V + t[i]];
  }
  assert_true(fabs(L - ref / 3) < 1e-5);
  carl_xent_bwd(dz, z, lse, t, N, V, 1.0f / 3);
  for (int j = 0; j < V; j++) assert_true(dz[V + j] == 0.0f); /* ignored row */
  fd_check("xent dlogits", xe_loss, &c, z, dz, N * V, 1e-2f, 1e-4, 5e-3);
  /* uniform logits: loss = log V */
  for (int i = 0; i < N * V; i++) z[i] = 0.5f;
  assert_true(fabs(carl_xent_fwd(lse, z, t, N, V, &n) - log(V)) < 1e-6);
}

/* ---- embeddings ---------------------------------------------------------------------------- */
static void test_embed(void **s) {
  (void)s;
  enum { B = 2, S = 3, d = 20, V = 5 };
  float te[V * d], pe[S * d], x[B * S * d], R[B * S * d], dte[V * d] = {0}, dpe[S * d] = {0};
  int32_t tok[B * S] = {1, 4, 1, 0, 1, 2};
  fill(te, V * d, 12, 1); fill(pe, S * d, 13, 1); fill(R, B * S * d, 14, 1);
  carl_embed_fwd(x, tok, te, pe, B, S, d);
  assert_true(x[4 * d + 5] == te[1 * d + 5] + pe[1 * d + 5]);
  carl_embed_bwd(dte, dpe, R, tok, B, S, d);
  /* token 1 appears at flat positions 0, 2, 4; position 1 at flat 1, 4 */
  for (int j = 0; j < d; j++) {
    assert_true(fabs(dte[1 * d + j] - (R[0 * d + j] + R[2 * d + j] + R[4 * d + j])) < 1e-6);
    assert_true(fabs(dpe[1 * d + j] - (R[1 * d + j] + R[4 * d + j])) < 1e-6);
    assert_true(dte[3 * d + j] == 0.0f);
  }
}

/* ---- optimiser, schedule, reductions ------------------------------------------------------- */
static void test_adamw(void **s) {
  (void)s;
  carl_adamw_cfg_t c = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
  float p[2] = {1.0f, 1.0f}, g[2] = {0.5f, 0.5f}, m[2] = {0, 0}, v[2] = {0, 0};
  /* t = 1: m = 0.05, v = 0.0125; mhat = 0.5, vhat = 0.25; step = mhat / sqrt(vhat) = 1.
   * decay: p = 1 - 0.1 * (1 + 0.1 * 1) = 0.89; no decay: p = 1 - 0.1 = 0.9 */
  carl_adamw_update(p, g, m, v, 1, &c, 0.1f, 1, 1);
  carl_adamw_update(p + 1, g + 1, m + 1, v + 1, 1, &c, 0.1f, 1, 0);
  assert_true(fabs(m[0] - 0.05f) < 1e-7 && fabs(v[0] - 0.0125f) < 1e-7);
  assert_true(fabs(p[0] - 0.89f) < 1e-6);
  assert_true(fabs(p[1] - 0.9f) < 1e-6);
  /* t = 2 with g = -0.5: m = 0.045 - 0.05 = -0.005 -> mhat = -0.005/0.19; v = 0.011875 + 0.0125 =
   * 0.024375 -> vhat = 0.024375 / 0.0975 = 0.25; step = -0.0263158 / 0.5 = -0.0526316.
   * p = 0.9 - 0.1 * (-0.0526316) = 0.9052632 (no decay) */
  g[1] = -0.5f;
  carl_adamw_update(p + 1, g + 1, m + 1, v + 1, 1, &c, 0.1f, 2, 0);
  assert_true(fabs(p[1] - 0.9052632f) < 1e-6);
}

static void test_schedule(void **s) {
  (void)s;
  /* warm-up 10 to lr 1: step 0 -> 0.1, step 9 -> 1; cosine to 0.1 at 110: halfway (60) -> 0.55 */
  assert_true(fabs(carl_lr_cosine(0, 10, 110, 1.0f, 0.1f) - 0.1f) < 1e-6);
  assert_true(fabs(carl_lr_cosine(9, 10, 110, 1.0f, 0.1f) - 1.0f) < 1e-6);
  assert_true(fabs(carl_lr_cosine(10, 10, 110, 1.0f, 0.1f) - 1.0f) < 1e-6);
  assert_true(fabs(carl_lr_cosine(60, 10, 110, 1.0f, 0.1f) - 0.55f) < 1e-6);
  assert_true(fabs(carl_lr_cosine(110, 10, 110, 1.0f, 0.1f) - 0.1f) < 1e-6);
  assert_true(fabs(carl_lr_cosine(500, 10, 110, 1.0f, 0.1f) - 0.1f) < 1e-6);
}

static void test_reductions(void **s) {
  (void)s;
  /* sum of i^2 for i < n is n(n-1)(2n-1)/6; n = 100000 (above CARL_OMP_MIN_WORK, so the parallel
   * path runs): every term and partial sum is an integer below 2^53, exact in double */
  int64_t n = 100000;
  assert_true(n >= CARL_OMP_MIN_WORK);
  float *x = malloc(sizeof(float) * n);
  for (int64_t i = 0; i < n; i++) x[i] = (float)i;
  assert_true(carl_sumsq(x, n) == (double)n * (n - 1) * (2 * n - 1) / 6);
  /* same bits with 1 and 2 threads */
  fill(x, n, 15, 1);
  omp_set_num_threads(1);
  double a = carl_sumsq(x, n);
  float c1[7] = {0};
  carl_colsum_add(c1, x, n / 7, 7);
  omp_set_num_threads(2);
  double b = carl_sumsq(x, n);
  float c2[7] = {0};
  carl_colsum_add(c2, x, n / 7, 7);
  assert_true(a == b);
  assert_memory_equal(c1, c2, sizeof c1);
  double r = 0;
  for (int64_t i = 0; i < n / 7; i++) r += x[i * 7 + 3];
  assert_true(fabs(c1[3] - r) < 1e-3);
  free(x);
}


/* ---- tiled sgemm against a naive triple loop; batch == one call per product; thread counts --- */
static void test_sgemm_tiles(void **s) {
  (void)s;
  /* M, N above the 256 tile so several (uneven) tiles run; every transpose combination, beta 0/1 */
  enum { M = 300, N = 270, K = 128 }; /* M N K above the parallel threshold of carl_sgemm */
  float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N), *C = malloc(sizeof(float) * M * N),
        *C0 = malloc(sizeof(float) * M * N), *C1 = malloc(sizeof(float) * M * N);
  fill(A, M * K, 30, 1); fill(B, K * N, 31, 1); fill(C0, M * N, 32, 1);
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int beta = 0; beta < 2; beta++) {
        /* A stored [M, K] (ta = 0) or [K, M] (ta = 1); B stored [K, N] or [N, K] */
        int lda = ta ? M : K, ldb = tb ? K : N;
        memcpy(C, C0, sizeof(float) * M * N);
        omp_set_num_threads(2);
        carl_sgemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, (float)beta, C, N);
        memcpy(C1, C0, sizeof(float) * M * N);
        omp_set_num_threads(1);
        carl_sgemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, (float)beta, C1, N);
        omp_set_num_threads(2);
        assert_memory_equal(C, C1, sizeof(float) * M * N); /* same bits for 1 and 2 threads */
        for (int i = 0; i < M; i += 7)
          for (int j = 0; j < N; j += 5) {
            double ref = beta ? C0[i * N + j] : 0.0;
            for (int k = 0; k < K; k++)
              ref += 0.5 * (ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
            if (fabs(C[i * N + j] - ref) > 1e-4 * (1 + fabs(ref)))
              fail_msg("ta %d tb %d beta %d C[%d][%d]: %g, naive %g", ta, tb, beta, i, j, C[i * N + j], ref);
          }
      }
  /* a batch of two products writing disjoint halves of C equals two separate calls */
  carl_gemm_t g[2] = {{0, 0, 150, N, K, 1.0f, A, K, B, N, 0.0f, C, N},
                      {0, 0, 150, N, K, 1.0f, A + 150 * K, K, B, N, 0.0f, C + 150 * N, N}};
  carl_sgemm_batch(2, g);
  carl_sgemm(0, 0, 150, N, K, 1.0f, A, K, B, N, 0.0f, C1, N);
  carl_sgemm(0, 0, 150, N, K, 1.0f, A + 150 * K, K, B, N, 0.0f, C1 + 150 * N, N);
  assert_memory_equal(C, C1, sizeof(float) * M * N);
  free(A); free(B); free(C); free(C0); free(C1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_linear),   cmocka_unit_test(test_rmsnorm), cmocka_unit_test(test_attention),
      cmocka_unit_test(test_swiglu),   cmocka_unit_test(test_xent),    cmocka_unit_test(test_embed),
      cmocka_unit_test(test_adamw),    cmocka_unit_test(test_schedule), cmocka_unit_test(test_reductions), cmocka_unit_test(test_sgemm_tiles),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
