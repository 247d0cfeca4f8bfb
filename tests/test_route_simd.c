/* The AVX-512 variant of the routing kernels against the portable one, which is the reference:
 * every configuration is routed through the public registry twice, once with carl__kern_simd = 0
 * (portable variant) and once with carl__kern_simd = -1 (AVX-512 where the CPU has it and the
 * shapes fit), by two routers created with the same options, and the results must agree:
 *   experts, dropped, capacity, status and error message: exactly;
 *   weights: |a - b| <= (12 + k/2 + E/16) eps max(|a|, |b|) + 1e-12 (see WEIGHT_TOL);
 *   losses, loss_total, the statistics psum and zsum the kernel leaves: 1e-5 relative.
 * Configurations: topk (softmax, losses on and off, renorm on and off, sigmoid), lossfree, bip and
 * sinkhorn (biased selection, several route + update steps), grouplimited (contiguous groups, several
 * G, M, k, and shapes outside the AVX-512 rule), the carl router on a multi-node topology
 * (per-device bias rows, node-limited groups, node bonus), logits with many ties, non-finite
 * logits, E not a multiple of 16 (bitwise: the portable path both times), T = 1..3, and
 * capacity_factor = 1. T = 1003 = 3 * 256 + 235 gives several 256-token statistics blocks, the
 * 4-token blocks and a 3-token tail (235 = 58 * 4 + 3).
 * The outside reference: carl_kern_score_row against softmax / sigmoid evaluated in double here,
 * for both variants, and the selection rule (TopK of the exact scores, ties to the lower index) on
 * hand-computed rows whose fp32 scores round to equal values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <float.h>
#include <stdio.h>

#include "carl/topo.h"
#include "kern/variant.h"
#include "route_testutil.h"

#define TBIG 1003
/* 519 = 2 * 256 + 7: three statistics blocks, the last with one 4-token block and a 3-token tail */
#define TMID 519
#define TNF TMID

/* Two gate weights of the two variants. Each is within a few ulp of the exact value, but not the
 * same few ulp, so the bound is the sum of the two variants' error bounds (eps = FLT_EPSILON; a
 * float sum of positive terms accumulated d adds deep is off by at most d eps/2 relative):
 *   exp (the AVX-512 one uses fused multiply-adds): about 2 ulp each of exp of the same float
 *     argument, plus a divide and a multiply each: 6 eps for the two;
 *   the renormalisation over the k gates: one sum is k - 1 adds deep, the other a 16-lane tree
 *     (4): (k + 3)/2 eps;
 *   the softmax denominator over E terms: E/16 + 4 and E/32 + 5 adds deep: <= (3E/64 + 4.5) eps;
 *   in all at most (12 + k/2 + E/16) eps. 1e-12 absolute covers weights that underflow to 0.
 * Measured: the portable renormalisation of k = 16 gates alone is up to 3.9 eps off the exact
 * value (its sequential sum), the AVX-512 one 0.4 eps on the same token. */
#define WEIGHT_TOL(a, b, k, E) ((12 + (k) / 2.0 + (E) / 16.0) * FLT_EPSILON * fmax(fabs(a), fabs(b)) + 1e-12)
/* Losses and statistics: sums over T tokens of per-token values that differ by a few ulp. */
#define REL_TOL 1e-5

static int have512; /* the CPU runs the AVX-512 variant */
static double worst_ulp; /* largest weight difference seen, in units of eps * max(|a|, |b|) */
static char worst_what[320];

static void set_simd(int v) { carl__kern_simd = v; }

/* Buffers of the running test, freed by its teardown, also when an assertion fails. */
static void *owned[256];
static int nowned;
static void *keep(void *p) {
  assert_non_null(p);
  assert_true(nowned < 256);
  owned[nowned++] = p;
  return p;
}
static int release_all(void **st) {
  (void)st;
  while (nowned > 0) free(owned[--nowned]);
  set_simd(-1);
  return 0;
}

/* ---- one route and its comparison --------------------------------------------------------------- */
typedef struct {
  carl_status rc;
  char msg[256];
  int32_t *ex; /* [T, k] */
  float *w;    /* [T, k] */
  carl_route_out_t out;
  int have_psum, have_zsum;
  double psum[1024];
  double zsum;
} res_t;

static void res_init(res_t *o, int64_t T, int k) {
  memset(o, 0, sizeof *o);
  o->ex = malloc(sizeof(int32_t) * (size_t)(T * k));
  o->w = malloc(sizeof(float) * (size_t)(T * k));
}
static void res_free(res_t *o) {
  free(o->ex);
  free(o->w);
}

static void route_with(carl_router_t *r, const carl_route_in_t *in, int simd, res_t *o, int64_t T, int k) {
  for (int64_t i = 0; i < T * k; i++) { /* poison: every slot must be written */
    o->ex[i] = -7;
    o->w[i] = NAN;
  }
  memset(&o->out, 0, sizeof o->out);
  o->out.experts = o->ex;
  o->out.weights = o->w;
  set_simd(simd);
  o->rc = carl_router_route(r, in, &o->out);
  set_simd(-1);
  snprintf(o->msg, sizeof o->msg, "%s", o->rc == CARL_OK ? "" : carl_errmsg());
  o->have_psum = r->have_psum;
  o->have_zsum = r->have_zsum;
  if (r->have_psum && in->E <= 1024)
    for (int e = 0; e < in->E; e++) o->psum[e] = r->psum[e];
  o->zsum = r->have_zsum ? r->zsum : 0;
}

static int near_rel(double a, double b, double tol) { return fabs(a - b) <= tol * fmax(fabs(a), fabs(b)) + 1e-12; }

static void print_token(const char *who, const res_t *o, int64_t t, int k) {
  char line[2048];
  int n = snprintf(line, sizeof line, "  %s token %lld:", who, (long long)t);
  for (int j = 0; j < k && n < (int)sizeof line - 40; j++)
    n += snprintf(line + n, sizeof line - (size_t)n, " %d:%.9g", o->ex[t * k + j], (double)o->w[t * k + j]);
  print_error("%s\n", line);
}

/* a: portable (reference), b: AVX-512. bitwise: the weights and losses must be identical too.
 * Returns 1 when they agree; else prints the first difference and returns 0 (the caller frees its
 * buffers, then fails). */
static int same_result(const char *what, int64_t T, int E, int k, const res_t *a, const res_t *b, int bitwise) {
  if (a->rc != b->rc || strcmp(a->msg, b->msg) != 0) {
    print_error("%s: status %d '%s' (portable) vs %d '%s' (avx512)\n", what, a->rc, a->msg, b->rc, b->msg);
    return 0;
  }
  if (a->rc != CARL_OK) return 1;
  for (int64_t t = 0; t < T; t++)
    for (int j = 0; j < k; j++) {
      const int64_t i = t * k + j;
      const double wa = a->w[i], wb = b->w[i];
      int ok = a->ex[i] == b->ex[i] && (bitwise ? memcmp(&a->w[i], &b->w[i], sizeof(float)) == 0
                                                : fabs(wa - wb) <= WEIGHT_TOL(wa, wb, k, E));
      if (ok && fmax(fabs(wa), fabs(wb)) > 0) {
        double u = fabs(wa - wb) / (FLT_EPSILON * fmax(fabs(wa), fabs(wb)));
        if (u > worst_ulp) {
          worst_ulp = u;
          snprintf(worst_what, sizeof worst_what, "%s, token %lld slot %d: %.9g vs %.9g", what, (long long)t, j, wa,
                   wb);
        }
      }
      if (!ok) {
        print_error("%s: token %lld slot %d differs (T=%lld E=%d k=%d)\n", what, (long long)t, j, (long long)T, E, k);
        print_token("portable", a, t, k);
        print_token("avx512  ", b, t, k);
        return 0;
      }
    }
  if (a->out.dropped != b->out.dropped || a->out.capacity != b->out.capacity) {
    print_error("%s: dropped %lld / capacity %lld (portable) vs %lld / %lld (avx512)\n", what,
                (long long)a->out.dropped, (long long)a->out.capacity, (long long)b->out.dropped,
                (long long)b->out.capacity);
    return 0;
  }
  if (a->out.nloss != b->out.nloss) {
    print_error("%s: %d losses vs %d\n", what, a->out.nloss, b->out.nloss);
    return 0;
  }
  for (int i = 0; i < a->out.nloss; i++) {
    if (strcmp(a->out.loss[i].name, b->out.loss[i].name)) {
      print_error("%s: loss %d is %s vs %s\n", what, i, a->out.loss[i].name, b->out.loss[i].name);
      return 0;
    }
    const double x = a->out.loss[i].value, y = b->out.loss[i].value;
    if (bitwise ? x != y : !near_rel(x, y, REL_TOL)) {
      print_error("%s: loss %s %.17g (portable) vs %.17g (avx512)\n", what, a->out.loss[i].name, x, y);
      return 0;
    }
  }
  if (bitwise ? a->out.loss_total != b->out.loss_total : !near_rel(a->out.loss_total, b->out.loss_total, REL_TOL)) {
    print_error("%s: loss_total %.17g vs %.17g\n", what, a->out.loss_total, b->out.loss_total);
    return 0;
  }
  if (a->have_psum != b->have_psum || a->have_zsum != b->have_zsum) {
    print_error("%s: statistics left %d %d vs %d %d\n", what, a->have_psum, a->have_zsum, b->have_psum, b->have_zsum);
    return 0;
  }
  if (a->have_psum)
    for (int e = 0; e < E; e++)
      if (bitwise ? a->psum[e] != b->psum[e] : !near_rel(a->psum[e], b->psum[e], REL_TOL)) {
        print_error("%s: psum[%d] %.17g vs %.17g\n", what, e, a->psum[e], b->psum[e]);
        return 0;
      }
  if (a->have_zsum && (bitwise ? a->zsum != b->zsum : !near_rel(a->zsum, b->zsum, REL_TOL))) {
    print_error("%s: zsum %.17g vs %.17g\n", what, a->zsum, b->zsum);
    return 0;
  }
  return 1;
}

/* Route `steps` steps (logits z [steps, T, E]) by two routers `name` with options `opts`, the first
 * on the portable variant and the second on the AVX-512 one; compare every step, then let each
 * router update its state (lossfree bias, bip duals, carl coefficients) from its own output. */
typedef struct {
  const carl_topo_t *topo;
  const int32_t *src; /* [T] or NULL */
  int steps;
  int bitwise;
} run_opt_t;

static void compare_router(const char *name, const char *opts, int64_t T, int E, const float *z, run_opt_t ro) {
  carl_router_t *ra = NULL, *rb = NULL;
  if (tu_create(name, opts, &ra) != CARL_OK || tu_create(name, opts, &rb) != CARL_OK) {
    print_error("%s '%s': %s\n", name, opts, carl_errmsg());
    carl_router_free(ra);
    fail();
  }
  const int k = (int)carl_router_get(ra, "k");
  char what[256];
  res_t a, b;
  res_init(&a, T, k);
  res_init(&b, T, k);
  int ok = a.ex && a.w && b.ex && b.w;
  const int steps = ro.steps > 0 ? ro.steps : 1;
  for (int s = 0; s < steps && ok; s++) {
    carl_route_in_t in = {.T = T, .E = E, .logits = z + (size_t)s * (size_t)T * (size_t)E, .src = ro.src,
                          .topo = ro.topo, .step = s, .seed = 11};
    route_with(ra, &in, 0, &a, T, k);
    route_with(rb, &in, -1, &b, T, k);
    snprintf(what, sizeof what, "%s '%s' E=%d T=%lld step %d", name, opts, E, (long long)T, s);
    if (a.rc != CARL_OK && b.rc == a.rc && !strcmp(a.msg, b.msg)) {
      print_error("%s: both variants fail: %s\n", what, a.msg);
      ok = 0;
    }
    ok = ok && same_result(what, T, E, k, &a, &b, ro.bitwise);
    if (ok && s + 1 < steps) {
      set_simd(0);
      ok = carl_router_update(ra, &in, &a.out) == CARL_OK;
      set_simd(-1);
      ok = ok && carl_router_update(rb, &in, &b.out) == CARL_OK;
      if (!ok) print_error("%s: update: %s\n", what, carl_errmsg());
    }
  }
  res_free(&a);
  res_free(&b);
  carl_router_free(ra);
  carl_router_free(rb);
  assert_true(ok);
}

/* ---- data ------------------------------------------------------------------------------------ */
/* Gaussian logits, sigma 1.5, with a per-expert offset (a skewed load as routers see it); steps
 * consecutive [T, E] blocks from consecutive RNG indices. */
static float *logits_gauss(int steps, int64_t T, int E, uint64_t seed) {
  float *z = keep(malloc(sizeof(float) * (size_t)steps * (size_t)T * (size_t)E));
  double *off = malloc(sizeof(double) * (size_t)E);
  assert_non_null(off);
  for (int e = 0; e < E; e++) off[e] = 0.8 * carl_rng_normal(seed + 1000, CARL_STREAM_DATA, (uint64_t)e);
  tu_logits(z, (int64_t)steps * T, E, off, 1.5, seed);
  free(off);
  return z;
}

/* Logits quantised to multiples of 0.25 in [-lim, lim]: many equal values per row; every 7th token
 * is all zeros (E-way tie). */
static float *logits_ties(int steps, int64_t T, int E, double lim, uint64_t seed) {
  float *z = logits_gauss(steps, T, E, seed);
  for (int64_t t = 0; t < (int64_t)steps * T; t++)
    for (int e = 0; e < E; e++) {
      double v = t % 7 == 3 ? 0.0 : 0.25 * round(4.0 * z[t * E + e] / 1.5 * lim / 2.0);
      z[t * E + e] = (float)fmin(lim, fmax(-lim, v));
    }
  return z;
}

static void note_variant(void **st) {
  (void)st;
  set_simd(-1);
  have512 = carl__kern_avx512_on();
  if (!have512)
    print_message("note: this CPU has no AVX-512 variant; both runs take the portable path, so the comparisons "
                  "below hold trivially\n");
  set_simd(0);
  assert_int_equal(carl__kern_avx512_on(), 0); /* the hook turns it off */
  set_simd(-1);
}

/* ---- the dispatch rule --------------------------------------------------------------------- */
/* carl__kern_select_avx512_fits against the rule documented in kern/variant.h (what tells the
 * configurations below which variant they exercise). */
static int fits(int E, int k, double jitter, int G, int eqsize, int contig, int pg) {
  carl_kern_select_t sl = {.E = E, .k = k, .jitter = jitter, .G = G, .per_group = pg};
  carl__kern_selctx_t x = {.sl = &sl, .E = E, .k = k, .G = G, .grouped = G > 0, .eqsize = eqsize, .contig = contig,
                           .jitter = jitter};
  return carl__kern_select_avx512_fits(&x);
}

static void test_dispatch_rule(void **st) {
  (void)st;
  const int on = carl__kern_avx512_on();
  assert_int_equal(fits(64, 2, 0, 0, 0, 0, 1), on);
  assert_int_equal(fits(1024, 16, 0, 0, 0, 0, 1), on);
  assert_int_equal(fits(16, 16, 0, 0, 0, 0, 1), on);
  assert_int_equal(fits(40, 2, 0, 0, 0, 0, 1), 0);   /* E % 16 != 0 */
  assert_int_equal(fits(1040, 2, 0, 0, 0, 0, 1), 0); /* E > 1024 */
  assert_int_equal(fits(64, 17, 0, 0, 0, 0, 1), 0);  /* k > 16 */
  assert_int_equal(fits(64, 2, 0.1, 0, 0, 0, 1), 0); /* jitter */
  assert_int_equal(fits(256, 4, 0, 8, 32, 1, 2), on);
  assert_int_equal(fits(256, 4, 0, 16, 16, 1, 2), on);
  assert_int_equal(fits(48, 2, 0, 3, 16, 1, 1), on);
  assert_int_equal(fits(256, 8, 0, 8, 32, 1, 4), 0);  /* per_group > 2 */
  assert_int_equal(fits(128, 4, 0, 16, 8, 1, 2), 0);  /* groups of 8 experts */
  assert_int_equal(fits(512, 4, 0, 32, 16, 1, 2), 0); /* more than 16 groups */
  assert_int_equal(fits(256, 4, 0, 8, 32, 0, 2), 0);  /* groups not contiguous */
  set_simd(0);
  assert_int_equal(fits(64, 2, 0, 0, 0, 0, 1), 0);
  set_simd(-1);
}

/* ---- 1-3: topk ------------------------------------------------------------------------------- */
static const int Es[] = {16, 48, 64, 256, 1024};
#define NE (int)(sizeof Es / sizeof Es[0])

/* topk with its defaults (aux 1e-2, z-loss 1e-3: the statistics path), k in {1, 2, 8, 16}. */
static void test_topk_defaults(void **st) {
  (void)st;
  const int ks[] = {1, 2, 8, 16};
  for (int ie = 0; ie < NE; ie++) {
    float *z = logits_gauss(1, TBIG, Es[ie], 100 + (uint64_t)ie);
    for (int ik = 0; ik < 4; ik++) {
      if (ks[ik] > Es[ie]) continue;
      char o[64];
      snprintf(o, sizeof o, "k=%d", ks[ik]);
      compare_router("topk", o, TBIG, Es[ie], z, (run_opt_t){0});
    }
  }
}

/* No statistics (aux = z_loss = 0): renorm 1 is the fast path that never forms the softmax. */
static void test_topk_nostats(void **st) {
  (void)st;
  const int ks[] = {1, 2, 8, 16};
  for (int ie = 0; ie < NE; ie++) {
    float *z = logits_gauss(1, TBIG, Es[ie], 200 + (uint64_t)ie);
    for (int ik = 0; ik < 4; ik++)
      for (int rn = 0; rn <= 1; rn++) {
        if (ks[ik] > Es[ie]) continue;
        char o[64];
        snprintf(o, sizeof o, "k=%d aux=0 z_loss=0 renorm=%d", ks[ik], rn);
        compare_router("topk", o, TBIG, Es[ie], z, (run_opt_t){0});
      }
  }
}

/* Sigmoid scores, with and without the z-loss (the logsumexp is then still formed), with and
 * without the aux statistics, renorm 0 and 1. */
static void test_topk_sigmoid(void **st) {
  (void)st;
  const char *opts[] = {"score=1", "score=1 z_loss=0", "score=1 z_loss=0 aux=0", "score=1 renorm=0 aux=0",
                        "score=1 renorm=0 z_loss=0"};
  const int Eset[] = {16, 64, 256, 1024};
  const int ks[] = {2, 8, 16};
  for (int ie = 0; ie < 4; ie++) {
    float *z = logits_gauss(1, TBIG, Eset[ie], 300 + (uint64_t)ie);
    for (int ik = 0; ik < 3; ik++)
      for (int io = 0; io < 5; io++) {
        if (ks[ik] > Eset[ie] || (ks[ik] == 16) != (Eset[ie] == 1024)) continue; /* k = 16 with E = 1024 only */
        char o[96];
        snprintf(o, sizeof o, "k=%d %s", ks[ik], opts[io]);
        compare_router("topk", o, TBIG, Eset[ie], z, (run_opt_t){0});
      }
  }
}

/* capacity_factor = 1: the per-slot priorities of the kernel decide the drops. */
static void test_topk_capacity(void **st) {
  (void)st;
  const struct {
    int E;
    const char *o;
  } c[] = {{16, "k=1 capacity_factor=1"},
           {64, "k=2 capacity_factor=1"},
           {64, "k=2 capacity_factor=1 aux=0 z_loss=0"},
           {64, "k=2 capacity_factor=1 renorm=0 aux=0 z_loss=0"},
           {256, "k=8 capacity_factor=1"},
           {256, "k=8 capacity_factor=1 score=1 z_loss=0"},
           {1024, "k=16 capacity_factor=1 aux=0"}};
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    float *z = logits_gauss(1, TBIG, c[i].E, 400 + i);
    compare_router("topk", c[i].o, TBIG, c[i].E, z, (run_opt_t){0});
  }
}

/* T = 1, 2, 3: fewer tokens than one 4-token block. */
static void test_few_tokens(void **st) {
  (void)st;
  for (int64_t T = 1; T <= 3; T++) {
    float *z = logits_gauss(1, T, 1024, 500 + (uint64_t)T);
    compare_router("topk", "k=16", T, 1024, z, (run_opt_t){0});
    compare_router("topk", "k=2 aux=0 z_loss=0", T, 1024, z, (run_opt_t){0});
    compare_router("topk", "k=2 capacity_factor=1", T, 1024, z, (run_opt_t){0});
    z = logits_gauss(1, T, 256, 510 + (uint64_t)T);
    compare_router("grouplimited", "groups=8 M=2 k=4", T, 256, z, (run_opt_t){0});
    compare_router("lossfree", "k=8", T, 256, z, (run_opt_t){0});
  }
}

/* ---- 4: biased selection ------------------------------------------------------------------- */
/* lossfree (sigmoid + bias b, updated after every step), bip (duals q) and sinkhorn (selection on
 * z + log d1): 3 steps each, compared at every step; from the second step on the lossfree and bip
 * biases are not zero. The bip duals and the Sinkhorn scalings are computed from scores
 * (carl_route_scores, which runs the AVX-512 score row too), so those biases may differ in the last
 * bits between the runs.
 * Not asserted: any selection on scores plus a bias (these routers, carl's cost term) can differ
 * between the variants where two selection values are within an ulp, since the scores differ by
 * an ulp: e.g. sigmoid(2.58398485f) is 0x1.dc11dep-1 on the portable variant and 0x1.dc11dcp-1
 * (the correctly rounded value) on the AVX-512 one, so with bias 0.0485858843f on expert 3
 * (z3 = 2.00420618f) the two tie on the portable variant and expert 1 wins, expert 3 on the other.
 * The random data here holds no such near-tie. */
static void test_biased(void **st) {
  (void)st;
  const int steps = 3;
  const struct {
    const char *r, *o;
    int E;
  } c[] = {{"lossfree", "k=2", 64},
           {"lossfree", "k=8", 256},
           {"lossfree", "k=16 u=0.01", 1024},
           {"lossfree", "k=8 score=0 z_loss=1e-3 aux=1e-2", 256},
           {"lossfree", "k=8 capacity_factor=1", 256},
           {"lossfree", "k=4 renorm=0", 48},
           {"bip", "k=2", 64},
           {"sinkhorn", "k=2", 64},
           {"sinkhorn", "k=8", 256},
           {"bip", "k=8 score=1 capacity_factor=1", 256}};
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    float *z = logits_gauss(steps, TMID, c[i].E, 600 + i);
    compare_router(c[i].r, c[i].o, TMID, c[i].E, z, (run_opt_t){.steps = steps});
  }
}

/* ---- 5: grouplimited ----------------------------------------------------------------------- */
/* groups = G contiguous blocks of E/G experts (a multiple of 16), M in {1, 2, G - 1}, k = M or 2M
 * (per_group 1 or 2), k <= 16. */
static void test_grouplimited(void **st) {
  (void)st;
  float *z256 = logits_gauss(1, TBIG, 256, 700);
  float *z48 = logits_gauss(1, TBIG, 48, 701);
  const int Gs[] = {2, 3, 4, 8, 16};
  for (int ig = 0; ig < 5; ig++) {
    const int G = Gs[ig], E = G == 3 ? 48 : 256;
    const float *z = G == 3 ? z48 : z256;
    const int Ms[] = {1, 2, G - 1};
    for (int im = 0; im < 3; im++) {
      const int M = Ms[im];
      if (M >= G || (im == 2 && (M == 1 || M == 2))) continue;
      for (int pg = 1; pg <= 2; pg++) {
        const int k = pg * M;
        if (k > 16) continue;
        char o[96];
        snprintf(o, sizeof o, "groups=%d M=%d k=%d", G, M, k);
        compare_router("grouplimited", o, TBIG, E, z, (run_opt_t){0});
      }
    }
  }
  /* losses, sigmoid, no statistics, capacity; k = 5, M = 2: per_group = 2 */
  const char *more[] = {"groups=8 M=2 k=4 aux=1e-2",
                        "groups=8 M=2 k=4 score=1",
                        "groups=4 M=2 k=4 z_loss=0 aux=0",
                        "groups=4 M=2 k=4 z_loss=0 aux=0 renorm=0",
                        "groups=16 M=3 k=6 capacity_factor=1",
                        "groups=4 M=2 k=5"};
  for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
    compare_router("grouplimited", more[i], TBIG, 256, z256, (run_opt_t){0});
}

/* Shapes outside the AVX-512 rule (per_group > 2, groups of 8 experts, more than 16 groups): the
 * portable path runs both times. */
static void test_grouplimited_fallback(void **st) {
  (void)st;
  float *z256 = logits_gauss(1, TMID, 256, 710);
  float *z128 = logits_gauss(1, TMID, 128, 711);
  float *z512 = logits_gauss(1, TMID, 512, 712);
  compare_router("grouplimited", "groups=8 M=2 k=8", TMID, 256, z256, (run_opt_t){0}); /* per_group 4 */
  compare_router("grouplimited", "groups=4 M=1 k=3", TMID, 256, z256, (run_opt_t){0}); /* per_group 3 */
  compare_router("grouplimited", "groups=16 M=2 k=4", TMID, 128, z128, (run_opt_t){0}); /* 8 experts a group */
  compare_router("grouplimited", "groups=32 M=2 k=4", TMID, 512, z512, (run_opt_t){0}); /* 32 groups */
  compare_router("grouplimited", "groups=8 M=2 k=4 jitter=0.1", TMID, 256, z256, (run_opt_t){0});
}

/* ---- 6: carl on a topology ------------------------------------------------------------------- */
/* 8 nodes x 4 devices, E = 256 (contiguous placement: 8 experts a device, 32 a node): the
 * selection bias -lambda_c c^(src, e) has one row per source device, hier = 1 keeps the M best
 * nodes (groups of 32 contiguous experts), lambda_loc adds a bonus to the token's own node. Also
 * 2 nodes x 8 devices, E = 64. Two steps each (the adaptive coefficients move). warm = 1: the
 * Sinkhorn warm start (bias rows plus log d1, flat selection). */
static void test_carl(void **st) {
  (void)st;
  carl_topo_t t84, t28;
  assert_int_equal(carl_topo_make(&t84, 8, 4, 160, 3, 50, 10), CARL_OK);
  assert_int_equal(carl_topo_make(&t28, 2, 8, 160, 3, 50, 10), CARL_OK);
  int32_t *src = keep(malloc(sizeof(int32_t) * TMID));
  for (int t = 0; t < TMID; t++) src[t] = (t * 7 + t / 5) % 32;
  float *z = logits_gauss(2, TMID, 256, 800);
  const char *o84[] = {"warm=0 M=4 k=8",
                       "warm=0 M=2 k=2",
                       "warm=0 M=4 k=8 lambda_loc=0.05",
                       "warm=0 M=1 k=2 lambda_loc=0.02 lambda_c=0.5",
                       "warm=0 M=4 k=8 capacity_factor=1",
                       "warm=0 M=4 k=8 score=1 z_loss=0",
                       "warm=0 M=4 k=4 alpha_E0=0.01 alpha_G0=0.01",
                       "warm=0 hier=0 k=8",
                       "warm=0 hier=0 k=16 capacity_factor=1",
                       "warm=0 M=2 k=8", /* per_group 4: portable both times */
                       "warm=1 M=4 k=8"};
  for (size_t i = 0; i < sizeof o84 / sizeof o84[0]; i++)
    compare_router("carl", o84[i], TMID, 256, z, (run_opt_t){.topo = &t84, .src = src, .steps = 2});
  for (int t = 0; t < TMID; t++) src[t] = (t * 3) % 16;
  z = logits_gauss(2, TMID, 64, 801);
  const run_opt_t r28 = {.topo = &t28, .src = src, .steps = 2};
  compare_router("carl", "warm=0 M=1 k=2", TMID, 64, z, r28);
  compare_router("carl", "warm=0 M=1 k=2 lambda_loc=0.1", TMID, 64, z, r28);
  compare_router("carl", "warm=0 M=1 k=4 lambda_loc=0.1", TMID, 64, z, (run_opt_t){.topo = &t28, .steps = 2});
}

/* ---- 7: ties ---------------------------------------------------------------------------------- */
/* Logits quantised to multiples of 0.25: in [-1, 1] (9 values: more than 16 candidates reach the
 * threshold, the insertion fallback of the AVX-512 top-k) and in [-4, 4] (33 values: equal values
 * inside the 16-candidate ranking); every 7th token is all zeros. Equal logits give equal scores
 * in either variant, so the tie rule (lower index first) must give the same experts exactly. */
static void test_ties(void **st) {
  (void)st;
  carl_topo_t t84;
  assert_int_equal(carl_topo_make(&t84, 8, 4, 160, 3, 50, 10), CARL_OK);
  const double lims[] = {1.0, 4.0};
  for (int il = 0; il < 2; il++) {
    for (int ie = 0; ie < 2; ie++) {
      const int E = ie == 0 ? 64 : 256;
      float *z = logits_ties(3, TMID, E, lims[il], 900 + (uint64_t)(10 * il + ie));
      compare_router("topk", "k=2", TMID, E, z, (run_opt_t){0});
      compare_router("topk", "k=8", TMID, E, z, (run_opt_t){0});
      compare_router("topk", "k=16 aux=0 z_loss=0", TMID, E, z, (run_opt_t){0});
      compare_router("topk", "k=8 score=1 renorm=0", TMID, E, z, (run_opt_t){0});
      compare_router("topk", "k=8 capacity_factor=1", TMID, E, z, (run_opt_t){0});
      compare_router("lossfree", "k=8", TMID, E, z, (run_opt_t){.steps = 3});
      if (E == 256) {
        compare_router("grouplimited", "groups=4 M=2 k=4", TMID, E, z, (run_opt_t){0});
        compare_router("grouplimited", "groups=16 M=1 k=2", TMID, E, z, (run_opt_t){0});
        compare_router("grouplimited", "groups=8 M=7 k=14 capacity_factor=1", TMID, E, z, (run_opt_t){0});
        /* node-limited with a node bonus of 0.25 and no cost term: equal node scores */
        compare_router("carl", "warm=0 comm=0 M=4 k=8 lambda_loc=0.25", TMID, E, z, (run_opt_t){.topo = &t84});
      }
    }
    float *z = logits_ties(1, TMID, 1024, lims[il], 920 + (uint64_t)il);
    compare_router("topk", "k=16", TMID, 1024, z, (run_opt_t){0});
    compare_router("topk", "k=16 aux=0 z_loss=0", TMID, 1024, z, (run_opt_t){0});
  }
}

/* ---- 8: E not a multiple of 16 --------------------------------------------------------------- */
/* The portable path both times: results identical bit for bit. */
static void test_e40_bitwise(void **st) {
  (void)st;
  float *z = logits_gauss(3, TBIG, 40, 1000);
  const run_opt_t bw = {.bitwise = 1};
  compare_router("topk", "k=2", TBIG, 40, z, bw);
  compare_router("topk", "k=8", TBIG, 40, z, bw);
  compare_router("topk", "k=2 aux=0 z_loss=0", TBIG, 40, z, bw);
  compare_router("topk", "k=8 score=1", TBIG, 40, z, bw);
  compare_router("topk", "k=2 capacity_factor=1", TBIG, 40, z, bw);
  compare_router("grouplimited", "groups=5 M=2 k=4", TBIG, 40, z, bw);
  compare_router("lossfree", "k=4", TBIG, 40, z, (run_opt_t){.bitwise = 1, .steps = 3});
}

/* ---- non-finite logits ------------------------------------------------------------------------ */
/* NaN / +inf / -inf in a few tokens: both variants fail with CARL_ERR_NUMERIC naming the first bad
 * token (and the same expert). T = 519: token 2 is inside the first 4-token block, 301 inside a
 * 4-token block of the second statistics block, 517 in the 3-token tail (516..518). */
static void test_nonfinite(void **st) {
  (void)st;
  const int Eset[] = {16, 64, 256, 1024, 40};
  const float bad[3] = {NAN, INFINITY, -INFINITY};
  for (int ie = 0; ie < 5; ie++) {
    const int E = Eset[ie];
    float *z = logits_gauss(1, TMID, E, 1100 + (uint64_t)ie);
    /* cases: which tokens are bad; the first is the one named */
    const int64_t cases[4][3] = {{2, 301, 517}, {301, 517, -1}, {517, -1, -1}, {0, 518, -1}};
    const char *routers[][2] = {{"topk", "k=2"},
                                {"topk", "k=8 aux=0 z_loss=0"},
                                {"topk", "k=2 score=1 capacity_factor=1"},
                                {"grouplimited", "groups=4 M=2 k=4"},
                                {"lossfree", "k=2"}};
    for (int ic = 0; ic < 4; ic++) {
      float saved[3] = {0, 0, 0};
      int pos[3] = {0, 0, 0};
      for (int j = 0; j < 3; j++) {
        if (cases[ic][j] < 0) continue;
        pos[j] = (int)((cases[ic][j] * 13 + 5 * j + ic) % E); /* another expert each time */
        saved[j] = z[cases[ic][j] * E + pos[j]];
        z[cases[ic][j] * E + pos[j]] = bad[(j + ic) % 3];
      }
      char want[64];
      snprintf(want, sizeof want, "token %lld, expert %d is ", (long long)cases[ic][0], pos[0]);
      for (size_t ir = 0; ir < sizeof routers / sizeof routers[0]; ir++) {
        if (E % 4 && !strcmp(routers[ir][0], "grouplimited")) continue;
        carl_router_t *ra, *rb;
        assert_int_equal(tu_create(routers[ir][0], routers[ir][1], &ra), CARL_OK);
        assert_int_equal(tu_create(routers[ir][0], routers[ir][1], &rb), CARL_OK);
        const int k = (int)carl_router_get(ra, "k");
        res_t a, b;
        res_init(&a, TNF, k);
        res_init(&b, TNF, k);
        int ok = a.ex && a.w && b.ex && b.w;
        carl_route_in_t in = {.T = TNF, .E = E, .logits = z};
        if (ok) {
          route_with(ra, &in, 0, &a, TNF, k);
          route_with(rb, &in, -1, &b, TNF, k);
        }
        char what[160];
        snprintf(what, sizeof what, "non-finite case %d: %s '%s' E=%d", ic, routers[ir][0], routers[ir][1], E);
        if (ok && (a.rc != CARL_ERR_NUMERIC || !strstr(a.msg, want))) {
          print_error("%s: portable gives %d '%s', want CARL_ERR_NUMERIC '%s'\n", what, a.rc, a.msg, want);
          ok = 0;
        }
        ok = ok && same_result(what, TNF, E, k, &a, &b, 0);
        res_free(&a);
        res_free(&b);
        carl_router_free(ra);
        carl_router_free(rb);
        assert_true(ok);
      }
      for (int j = 2; j >= 0; j--)
        if (cases[ic][j] >= 0) z[cases[ic][j] * E + pos[j]] = saved[j];
    }
  }
}

/* Rows holding +-FLT_MAX in several lanes (tokens 1, 6 and 517): finite, so they must route,
 * although sums over them overflow. The other scores of such a row saturate (exp clamped at -87),
 * so they also meet the case of test_saturated_* below; the AVX-512 exp takes its clamped form
 * there (the row's range exceeds 87), in blocks of tokens and alone. */
static void test_huge_finite(void **st) {
  (void)st;
  const int Eset[] = {64, 256, 1024, 40, 48, 16};
  for (int ie = 0; ie < 6; ie++) {
    const int E = Eset[ie];
    float *z = logits_gauss(1, TMID, E, 1150 + (uint64_t)ie);
    const int64_t huge[3] = {1, 6, 517};
    for (int j = 0; j < 3; j++)
      for (int e = j; e < E; e += 5) z[huge[j] * E + e] = e % 2 ? FLT_MAX : -FLT_MAX;
    compare_router("topk", "k=2 score=1 aux=0 z_loss=0 renorm=0", TMID, E, z, (run_opt_t){0});
    compare_router("topk", "k=2", TMID, E, z, (run_opt_t){0});
    compare_router("lossfree", "k=2", TMID, E, z, (run_opt_t){0});            /* sigmoid + bias, one pass */
    compare_router("grouplimited", "groups=4 M=2 k=4", TMID, E, z, (run_opt_t){0}); /* selection on s */
  }
}

/* ---- saturated scores ------------------------------------------------------------------------ */
/* Distinct logits can give equal fp32 scores: sigmoid(z) rounds to 1.0f for z >= 17, and softmax
 * scores of logits more than 87 below the maximum all get exp(-87) from the clamped exp. Plain
 * top-k (no bias, no groups) ranks the logits in both variants (TopK(s) = TopK(z) for the exact,
 * increasing s), so rounding makes no ties; equal logits tie, and the lower index wins.
 * (Before that rule the portable variant ranked the fp32 scores wherever E % 32 != 0 or E < 64,
 * and these cases differed: sigmoid {0, 5} vs {5, 9}, softmax {3, 0} vs {3, 11}.) */
static void test_saturated_sigmoid(void **st) {
  (void)st;
  float z[16] = {0};
  z[0] = 20, z[5] = 30, z[9] = 25;
  compare_router("topk", "k=2 score=1 aux=0 z_loss=0", 1, 16, z, (run_opt_t){0});
}

static void test_saturated_softmax(void **st) {
  (void)st;
  float z[16] = {0};
  z[3] = 100, z[11] = 1;
  compare_router("topk", "k=2", 1, 16, z, (run_opt_t){0});
}

/* The rule on hand-computed rows, E = 16, 48, 64 (three shapes of the portable top-k), both
 * variants, k = 2:
 *   sigmoid, z = 0 but z[0] = 20, z[5] = 30, z[9] = 25: s(30) > s(25) > s(20) exactly, so {5, 9};
 *     both scores round to 1.0f (1 + e^-25 < 1 + eps/2), so the renormalised gates are 1/2, 1/2;
 *   softmax, z = 0 but z[3] = 100, z[11] = 1: s[11] = e^-99 / (1 + ...) > s[0] = e^-100 / (...),
 *     so {3, 11}; the gates are 1 and a value below 1e-30 (e^-99 ~ 1e-43; the float kernel
 *     clamps exp at -87, e^-87 ~ 1.6e-38);
 *   softmax, z = 0 but z[2] = z[7] = z[12] = 5: three equal logits, the lower indices {2, 7},
 *     gates 1/2, 1/2. */
static void test_saturated_rule(void **st) {
  (void)st;
  int nbad = 0;
  for (int E = 16; E <= 64; E += 16) {
    if (E == 32) continue;
    for (int simd = 0; simd >= -1; simd--)
      for (int c = 0; c < 3; c++) {
        float z[64] = {0};
        if (c == 0) z[0] = 20, z[5] = 30, z[9] = 25;
        if (c == 1) z[3] = 100, z[11] = 1;
        if (c == 2) z[2] = z[7] = z[12] = 5;
        const int32_t want[3][2] = {{5, 9}, {3, 11}, {2, 7}};
        const double w0[3] = {0.5, 1, 0.5}, w1[3] = {0.5, 0, 0.5};
        carl_router_t *r;
        assert_int_equal(tu_create("topk", c == 0 ? "k=2 score=1 aux=0 z_loss=0" : "k=2", &r), CARL_OK);
        res_t o;
        res_init(&o, 1, 2);
        carl_route_in_t in = {.T = 1, .E = E, .logits = z};
        route_with(r, &in, simd, &o, 1, 2);
        const int ok = o.rc == CARL_OK && o.ex[0] == want[c][0] && o.ex[1] == want[c][1] &&
                       fabs(o.w[0] - w0[c]) <= 1e-7 && fabs(o.w[1] - w1[c]) <= (c == 1 ? 1e-30 : 1e-7);
        if (!ok)
          print_error("case %d E=%d %s: experts {%d, %d} weights {%g, %g}; want {%d, %d}, {%g, %g}\n", c, E,
                      simd ? "avx512" : "portable", o.ex[0], o.ex[1], (double)o.w[0], (double)o.w[1], want[c][0],
                      want[c][1], w0[c], w1[c]);
        nbad += !ok;
        res_free(&o);
        carl_router_free(r);
      }
  }
  assert_int_equal(nbad, 0);
}

/* ---- the outside reference: carl_kern_score_row --------------------------------------------- */
/* s = softmax(z) or sigmoid(z) and the returned logsumexp against the same functions in double.
 * Error budget of the float evaluation (eps = FLT_EPSILON), relative to the value:
 *   sigmoid 1 / (1 + exp(-z)): exp to a few ulp, one add, one divide: 4 eps;
 *   softmax exp(z - m) / sum: exp 4 eps as above, plus the rounding of the float argument z - m
 *     (half an ulp of |z - m|, i.e. eps/2 |z - m| relative after exp), plus the float sum of E
 *     positive terms accumulated in parallel lanes, at most (E/16 + 4) adds deep: (E/16 + 4) eps/2;
 *   logsumexp m + log(sum): the sum's relative error, plus eps |lse| and eps for the log. */
static void check_score_rows(int E, int simd, double *worst_sm, double *worst_sg) {
  float *z = logits_gauss(1, 40, E, 1200 + (uint64_t)E);
  float *s = keep(malloc(sizeof(float) * (size_t)E));
  double *ref = keep(malloc(sizeof(double) * (size_t)E));
  const double eps = FLT_EPSILON, depth = E / 16.0 + 4;
  for (int t = 0; t < 40; t++) {
    float *zt = z + (size_t)t * E;
    if (t % 10 == 9)
      for (int e = 0; e < E; e++) zt[e] *= 8; /* wide rows: exp of arguments down to -87, tiny scores */
    for (int score = 0; score <= 1; score++) {
      set_simd(simd);
      const float lse = carl_kern_score_row(zt, E, score, s);
      set_simd(-1);
      tu_scores(zt, E, score, ref);
      double m = zt[0], sum = 0;
      for (int e = 1; e < E; e++) m = zt[e] > m ? zt[e] : m;
      for (int e = 0; e < E; e++) sum += exp((double)zt[e] - m);
      const double lref = m + log(sum);
      for (int e = 0; e < E; e++) {
        const double tol = score == 1 ? 4 * eps : (4 + 0.5 * fabs(zt[e] - m) + 0.5 * depth) * eps;
        const double err = fabs(s[e] - ref[e]) / ref[e];
        if (ref[e] < 1e-30) continue; /* below the float normal range: nothing relative to check */
        if (!(err <= tol)) {
          print_error("score_row E=%d score=%d simd=%d row %d expert %d: %.9g vs %.17g (z = %.9g, max %.9g)\n", E,
                      score, simd, t, e, (double)s[e], ref[e], (double)zt[e], m);
          fail();
        }
        const double u = err / tol; /* the share of the bound used */
        if (score == 0 && u > *worst_sm) *worst_sm = u;
        if (score == 1 && u > *worst_sg) *worst_sg = u;
      }
      const double ltol = (0.5 * depth + 4) * eps + eps * fabs(lref);
      if (!(fabs(lse - lref) <= ltol)) {
        print_error("score_row E=%d score=%d simd=%d row %d: lse %.9g vs %.17g\n", E, score, simd, t, (double)lse,
                    lref);
        fail();
      }
    }
  }
  /* a non-finite entry gives NaN */
  z[3] = NAN;
  set_simd(simd);
  assert_true(isnan(carl_kern_score_row(z, E, 0, s)));
  z[3] = INFINITY;
  assert_true(isnan(carl_kern_score_row(z, E, 1, s)));
  z[3] = -INFINITY;
  assert_true(isnan(carl_kern_score_row(z, E, 0, s)));
  set_simd(-1);
}

static void test_score_row(void **st) {
  (void)st;
  const int Eset[] = {16, 48, 64, 256, 1024, 40};
  for (int simd = 0; simd >= -1; simd--) {
    double wsm = 0, wsg = 0;
    for (int i = 0; i < 6; i++) check_score_rows(Eset[i], simd, &wsm, &wsg);
    print_message("score_row (%s): largest error / bound: softmax %.2f, sigmoid %.2f\n",
                  simd ? "avx512 where available" : "portable", wsm, wsg);
  }
}

static void test_report(void **st) {
  (void)st;
  print_message("largest weight difference between the variants: %.2f eps relative%s\n  (%s)\n", worst_ulp,
                have512 ? "" : " (no AVX-512: both portable)", worst_what);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(note_variant, release_all),
      cmocka_unit_test_teardown(test_dispatch_rule, release_all),
      cmocka_unit_test_teardown(test_score_row, release_all),
      cmocka_unit_test_teardown(test_topk_defaults, release_all),
      cmocka_unit_test_teardown(test_topk_nostats, release_all),
      cmocka_unit_test_teardown(test_topk_sigmoid, release_all),
      cmocka_unit_test_teardown(test_topk_capacity, release_all),
      cmocka_unit_test_teardown(test_few_tokens, release_all),
      cmocka_unit_test_teardown(test_biased, release_all),
      cmocka_unit_test_teardown(test_grouplimited, release_all),
      cmocka_unit_test_teardown(test_grouplimited_fallback, release_all),
      cmocka_unit_test_teardown(test_carl, release_all),
      cmocka_unit_test_teardown(test_ties, release_all),
      cmocka_unit_test_teardown(test_e40_bitwise, release_all),
      cmocka_unit_test_teardown(test_nonfinite, release_all),
      cmocka_unit_test_teardown(test_huge_finite, release_all),
      cmocka_unit_test_teardown(test_saturated_sigmoid, release_all),
      cmocka_unit_test_teardown(test_saturated_softmax, release_all),
      cmocka_unit_test_teardown(test_saturated_rule, release_all),
      cmocka_unit_test_teardown(test_report, release_all),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
