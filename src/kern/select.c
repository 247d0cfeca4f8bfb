/* The portable reference of the routing kernels (kern.h): score rows, top-k with the tie rule and
 * the fused selection of one token, on eight-wide vectors of the GCC/clang vector extension. The
 * AVX-512 variant (select_avx512.c) takes the same decisions. */
/* Comparisons in these kernels never need to trap: without this GCC keeps the clamps and maxima of
 * the exp and top-k loops as branches and does not vectorise them. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi" /* 32-byte vectors pass only between static inline helpers */
#endif
#include <float.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kern/kern.h"
#include "kern/variant.h"

/* ---- scores ----------------------------------------------------------------------------------- */
/* Eight-wide vectors through the GCC/clang vector extension (AVX2 in the avx2 clones, two SSE2
 * halves otherwise, scalar code where there is no SIMD): the same arithmetic as carl_kern_expf lane by
 * lane, without fused multiply-adds, so every clone gives identical results. */
typedef float carl__v8 __attribute__((vector_size(32)));
typedef int32_t carl__v8i __attribute__((vector_size(32)));
/* The avx2 clones are a GCC build's: clang (14 and later) compiles each static inline helper once, for
 * the default target, and refuses a 32-byte vector passed between that and an avx2 clone ("AVX vector
 * ... changes the ABI"), so a clang build takes the portable code in one version. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CARL_NO_CLONES) && \
    !defined(__SANITIZE_ADDRESS__)
#define CARL__CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CARL__CLONES
#endif

static inline carl__v8 carl__ld(const float *p) {
  carl__v8 v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void carl__st(float *p, carl__v8 v) { memcpy(p, &v, sizeof v); }
static inline carl__v8 carl__sel(carl__v8i m, carl__v8 a, carl__v8 b) { /* m ? a : b */
  return (carl__v8)(((carl__v8i)a & m) | ((carl__v8i)b & ~m));
}
static inline carl__v8 carl__splat(float x) { return (carl__v8){x, x, x, x, x, x, x, x}; }

static inline carl__v8 carl__exp8(carl__v8 x) {
  const carl__v8 lo = carl__splat(-87.0f), hi = carl__splat(88.0f);
  x = carl__sel(x < lo, lo, x);
  x = carl__sel(x > hi, hi, x);
  const carl__v8 magic = carl__splat(12582912.0f);
  carl__v8 n = (x * carl__splat(1.44269504088896341f) + magic) - magic;
  carl__v8 r = x - n * carl__splat(0.693359375f);
  r = r - n * carl__splat(-2.12194440e-4f);
  carl__v8 p = carl__splat(1.9875691500e-4f);
  p = p * r + carl__splat(1.3981999507e-3f);
  p = p * r + carl__splat(8.3334519073e-3f);
  p = p * r + carl__splat(4.1665795894e-2f);
  p = p * r + carl__splat(1.6666665459e-1f);
  p = p * r + carl__splat(5.0000001201e-1f);
  p = p * r * r + r + carl__splat(1.0f);
  carl__v8i ni = __builtin_convertvector(n, carl__v8i);
  carl__v8i bits = (ni + 127) << 23;
  return p * (carl__v8)bits;
}

/* cols: when not NULL and E is a multiple of 32, receives the maxima of the 32 columns of z
 * viewed as [E/32, 32] (the bound of the fast top-k). */
static inline __attribute__((always_inline)) float carl__row_max(const float *z, int E, carl__v8 *cols) {
  int e = 0;
  carl__v8 ma = carl__splat(-FLT_MAX), mb = ma, ba = carl__splat(0), bb = ba;
  if (cols && E % 32 == 0) {
    carl__v8 c0 = ma, c1 = ma, c2 = ma, c3 = ma;
    for (; e + 32 <= E; e += 32) {
      carl__v8 x0 = carl__ld(z + e), x1 = carl__ld(z + e + 8), x2 = carl__ld(z + e + 16), x3 = carl__ld(z + e + 24);
      c0 = carl__sel(x0 > c0, x0, c0);
      c1 = carl__sel(x1 > c1, x1, c1);
      c2 = carl__sel(x2 > c2, x2, c2);
      c3 = carl__sel(x3 > c3, x3, c3);
      const carl__v8 zero = carl__splat(0.0f); /* x * 0 is NaN iff x is NaN or infinite */
      ba += x0 * zero + x1 * zero;
      bb += x2 * zero + x3 * zero;
    }
    cols[0] = c0;
    cols[1] = c1;
    cols[2] = c2;
    cols[3] = c3;
    ma = carl__sel(c1 > c0, c1, c0);
    mb = carl__sel(c3 > c2, c3, c2);
  }
  for (; e + 16 <= E; e += 16) {
    carl__v8 x = carl__ld(z + e), y = carl__ld(z + e + 8);
    ma = carl__sel(x > ma, x, ma);
    mb = carl__sel(y > mb, y, mb);
    ba += x * carl__splat(0.0f); /* NaN iff some value is NaN or infinite */
    bb += y * carl__splat(0.0f);
  }
  float mx = -FLT_MAX, bad = 0;
  for (int j = 0; j < 8; j++) {
    mx = ma[j] > mx ? ma[j] : mx;
    mx = mb[j] > mx ? mb[j] : mx;
    bad += ba[j] + bb[j];
  }
  for (int i = e; i < E; i++) {
    mx = z[i] > mx ? z[i] : mx;
    bad += z[i] * 0.0f;
  }
  return bad != bad ? NAN : mx;
}

static inline __attribute__((always_inline)) float carl__score_row(const float *z, int E, int score, float *s, int need_lse,
                                                                   carl__v8 *cols) {
  int e;
  const float mx = carl__row_max(z, E, cols);
  if (isnan(mx)) return NAN;
  if (score == CARL_SCORE_SIGMOID && !need_lse) {
    const carl__v8 one = carl__splat(1.0f);
    for (e = 0; e + 8 <= E; e += 8) carl__st(s + e, one / (one + carl__exp8(-carl__ld(z + e))));
    for (int i = e; i < E; i++) s[i] = 1.0f / (1.0f + carl_kern_expf(-z[i]));
    return 0.0f;
  }
  /* s = exp(z - max) (softmax numerators); their sum gives logsumexp */
  carl__v8 sa = carl__splat(0), sb = sa, vm = carl__splat(mx);
  for (e = 0; e + 16 <= E; e += 16) {
    carl__v8 x = carl__exp8(carl__ld(z + e) - vm), y = carl__exp8(carl__ld(z + e + 8) - vm);
    carl__st(s + e, x);
    carl__st(s + e + 8, y);
    sa += x;
    sb += y;
  }
  carl__v8 sv = sa + sb;
  float sum = ((sv[0] + sv[1]) + (sv[2] + sv[3])) + ((sv[4] + sv[5]) + (sv[6] + sv[7]));
  for (int i = e; i < E; i++) {
    float x = carl_kern_expf(z[i] - mx);
    s[i] = x;
    sum += x;
  }
  float lse = mx + logf(sum);
  if (score == CARL_SCORE_SIGMOID) {
    const carl__v8 one = carl__splat(1.0f);
    for (e = 0; e + 8 <= E; e += 8) carl__st(s + e, one / (one + carl__exp8(-carl__ld(z + e))));
    for (int i = e; i < E; i++) s[i] = 1.0f / (1.0f + carl_kern_expf(-z[i]));
  } else {
    const carl__v8 inv = carl__splat(1.0f / sum);
    for (e = 0; e + 8 <= E; e += 8) carl__st(s + e, carl__ld(s + e) * inv);
    for (int i = e; i < E; i++) s[i] *= inv[0];
  }
  return lse;
}

CARL__CLONES static float carl__score_row_portable(const float *z, int E, int score, float *s) {
  return carl__score_row(z, E, score, s, 1, NULL);
}

float carl_kern_score_row(const float *z, int E, int score, float *s) {
  if (carl__kern_avx512_row_fits(E) && carl__kern_avx512_on()) return carl__kern_score_row_avx512(z, E, score, s);
  return carl__score_row_portable(z, E, score, s);
}

/* Block partial sums of p (p = s, or s / sum(s) for sigmoid) and lse^2 for the losses. */
static inline __attribute__((always_inline)) void carl__stats_row(const float *s, int E, int score, float lse, float *pp,
                                                                  double *zs) {
  *zs += (double)lse * (double)lse;
  if (!pp) return;
  int e = 0;
  if (score == CARL_SCORE_SIGMOID) {
    carl__v8 av = carl__splat(0.0f);
    for (; e + 8 <= E; e += 8) av += carl__ld(s + e);
    float a = ((av[0] + av[1]) + (av[2] + av[3])) + ((av[4] + av[5]) + (av[6] + av[7]));
    for (int i = e; i < E; i++) a += s[i];
    const carl__v8 inv = carl__splat(1.0f / a);
    for (e = 0; e + 8 <= E; e += 8) carl__st(pp + e, carl__ld(pp + e) + carl__ld(s + e) * inv);
    for (; e < E; e++) pp[e] += s[e] * inv[0];
  } else {
    for (; e + 8 <= E; e += 8) carl__st(pp + e, carl__ld(pp + e) + carl__ld(s + e));
    for (; e < E; e++) pp[e] += s[e];
  }
}

/* The sums over the nb blocks, in block order: psum [E] from part [nb, E] (both NULL: only the
 * logsumexp statistic was gathered), *zsum (may be NULL) from zpart [nb]. */
static void carl__stats_finish(const float *part, const double *zpart, int64_t nb, int E, double *psum, double *zsum) {
  for (int e = 0; part && e < E; e++) psum[e] = 0;
  double z = 0;
  for (int64_t b = 0; b < nb; b++) {
    for (int e = 0; part && e < E; e++) psum[e] += part[b * E + e];
    z += zpart[b];
  }
  if (zsum) *zsum = z;
}

carl_status carl_kern_bad_token(const float *logits, int E, int64_t t) {
  const float *z = logits + t * E;
  int e = 0;
  while (e < E && isfinite(z[e])) e++;
  return carl_fail(CARL_ERR_NUMERIC, "logits: token %lld, expert %d is %s (finite values required)", (long long)t,
                   e < E ? e : 0, e < E && isnan(z[e]) ? "NaN" : "infinite");
}

carl_status carl_kern_scores(const float *logits, int64_t T, int E, int score, float *s, double *psum, double *zsum) {
  if (!logits || !s) return carl_fail(CARL_ERR_INVALID, "logits: NULL");
  const int64_t nb = (T + CARL_KERN_BLOCK - 1) / CARL_KERN_BLOCK;
  const int stats = psum != NULL;
  float *part = stats ? calloc((size_t)nb * (size_t)E, sizeof *part) : NULL;
  double *zpart = stats ? calloc((size_t)nb, sizeof *zpart) : NULL;
  if (stats && (!part || !zpart)) {
    free(part);
    free(zpart);
    return carl_fail(CARL_ERR_NOMEM, "scores: out of memory");
  }
  int64_t bad = INT64_MAX;
#pragma omp parallel for if((int64_t)T * E >= CARL_OMP_MIN_WORK) schedule(static) reduction(min : bad)
  for (int64_t b = 0; b < nb; b++) {
    int64_t t1 = (b + 1) * CARL_KERN_BLOCK < T ? (b + 1) * CARL_KERN_BLOCK : T;
    for (int64_t t = b * CARL_KERN_BLOCK; t < t1; t++) {
      float lse = carl_kern_score_row(logits + t * E, E, score, s + t * E);
      if (isnan(lse)) {
        if (t < bad) bad = t;
        continue;
      }
      if (stats) carl__stats_row(s + t * E, E, score, lse, part + b * E, &zpart[b]);
    }
  }
  if (bad != INT64_MAX) {
    free(part);
    free(zpart);
    return carl_kern_bad_token(logits, E, bad);
  }
  if (stats) carl__stats_finish(part, zpart, nb, E, psum, zsum);
  free(part);
  free(zpart);
  return CARL_OK;
}

/* ---- top-k ----------------------------------------------------------------------------------- */
/* Insert v[i] into the sorted buffer (descending; equal values keep the earlier index first). */
static inline void carl__topk_push(float x, int32_t i, int k, int *m, int32_t *idx, float *val) {
  int p;
  if (*m == k) {
    if (!(x > val[k - 1])) return;
    p = k - 1;
  } else {
    p = (*m)++;
  }
  while (p > 0 && val[p - 1] < x) {
    val[p] = val[p - 1];
    idx[p] = idx[p - 1];
    p--;
  }
  val[p] = x;
  idx[p] = i;
}

/* The shapes carl__topk_cols takes. */
static inline int carl__topk_cols_fit(int n, int k) { return n % 32 == 0 && n >= 64 && k <= 32; }

/* The k largest of v (n a multiple of 32, n >= 64, k <= 32) given the column maxima c0..c3 of v
 * viewed as [n/32, 32]. The k-th largest column maximum is a lower bound thr of the k-th largest
 * value (k columns each hold a value >= it), so only columns whose maximum reaches thr, and in
 * them only values >= thr, can be among the k largest. */
static inline __attribute__((always_inline)) void carl__topk_cols(const float *v, int n, int k, carl__v8 c0, carl__v8 c1,
                                                                  carl__v8 c2, carl__v8 c3, int32_t *idx, float *val) {
  int m = 0;
  const int R = n / 32;
  float cm[32];
  carl__st(cm, c0);
  carl__st(cm + 8, c1);
  carl__st(cm + 16, c2);
  carl__st(cm + 24, c3);
  /* k-th largest column maximum without branches: rank = number of strictly larger maxima;
   * thr = the smallest maximum of rank <= k - 1 */
  carl__v8i r0 = {0}, r1 = {0}, r2 = {0}, r3 = {0};
  for (int c = 0; c < 32; c++) {
    carl__v8 b = carl__splat(cm[c]);
    r0 += b > c0; /* -1 per larger maximum */
    r1 += b > c1;
    r2 += b > c2;
    r3 += b > c3;
  }
  const carl__v8i lim = {1 - k, 1 - k, 1 - k, 1 - k, 1 - k, 1 - k, 1 - k, 1 - k};
  const carl__v8 inf = carl__splat(INFINITY);
  carl__v8 t0 = carl__sel(r0 >= lim, c0, inf), t1 = carl__sel(r1 >= lim, c1, inf);
  carl__v8 t2 = carl__sel(r2 >= lim, c2, inf), t3 = carl__sel(r3 >= lim, c3, inf);
  t0 = carl__sel(t1 < t0, t1, t0);
  t2 = carl__sel(t3 < t2, t3, t2);
  t0 = carl__sel(t2 < t0, t2, t0);
  float tv0 = t0[0];
  for (int j = 1; j < 8; j++) tv0 = t0[j] < tv0 ? t0[j] : tv0;
  const float thr = tv0;
  /* candidate columns as a bit mask, then their values >= thr compacted without branches */
  const carl__v8 th = carl__splat(thr);
  carl__v8i q0 = c0 >= th, q1 = c1 >= th, q2 = c2 >= th, q3 = c3 >= th;
  uint32_t bits = 0;
  for (int j = 0; j < 8; j++)
    bits |= ((uint32_t)q0[j] & 1u) << j | ((uint32_t)q1[j] & 1u) << (j + 8) | ((uint32_t)q2[j] & 1u) << (j + 16) |
            ((uint32_t)q3[j] & 1u) << (j + 24);
  int32_t cand[256 + 8];
  int nc = 0;
  while (bits) {
    int c = __builtin_ctz(bits);
    bits &= bits - 1;
    for (int r = 0; r < R && nc < 256; r++) {
      int32_t i = r * 32 + c;
      cand[nc] = i;
      nc += v[i] >= thr;
    }
    if (nc >= 256) break;
  }
  if (nc >= 256) { /* many equal values: take every value >= thr in index order */
    nc = 0;
    for (int i = 0; i < n; i++)
      if (v[i] >= thr) carl_kern_topk_push(v[i], i, k, &m, idx, val);
  } else if (nc <= 32) {
    /* rank of each candidate = number of candidates ahead of it (larger value, or equal value
     * and lower index); the k first ranks are the answer. Branch-free. */
    float cvv[32 + 8];
    int32_t civ[32 + 8], oi[33];
    float ov[33];
    for (int j = 0; j < nc; j++) {
      cvv[j] = v[cand[j]];
      civ[j] = cand[j];
    }
    for (int j = nc; j < ((nc + 7) & ~7); j++) {
      cvv[j] = -INFINITY;
      civ[j] = INT32_MAX;
    }
    const int nv = (nc + 7) / 8;
    for (int i = 0; i < nc; i++) {
      const carl__v8 vi = carl__splat(cvv[i]);
      const carl__v8i ii = {civ[i], civ[i], civ[i], civ[i], civ[i], civ[i], civ[i], civ[i]};
      carl__v8i acc = {0};
      for (int q = 0; q < nv; q++) {
        carl__v8 cv = carl__ld(cvv + 8 * q);
        carl__v8i ci;
        memcpy(&ci, civ + 8 * q, sizeof ci);
        acc += (cv > vi) | ((cv == vi) & (ci < ii));
      }
      int rank = 0;
      for (int j = 0; j < 8; j++) rank -= acc[j];
      rank = rank < k ? rank : k; /* slot k collects the rest */
      oi[rank] = civ[i];
      ov[rank] = cvv[i];
    }
    m = nc < k ? nc : k;
    for (int j = 0; j < m; j++) {
      idx[j] = oi[j];
      val[j] = ov[j];
    }
  } else {
    for (int j = 0; j < nc; j++) carl_kern_topk_push(v[cand[j]], cand[j], k, &m, idx, val);
  }
  for (; m < k; m++) {
    idx[m] = -1;
    val[m] = -INFINITY;
  }
}

CARL__CLONES void carl_kern_topk_row(const float *v, int n, int k, int32_t *idx, float *val) {
  if (carl__topk_cols_fit(n, k)) {
    carl__v8 c0 = carl__ld(v), c1 = carl__ld(v + 8), c2 = carl__ld(v + 16), c3 = carl__ld(v + 24);
    for (int r = 1; r < n / 32; r++) {
      const float *q = v + r * 32;
      carl__v8 x0 = carl__ld(q), x1 = carl__ld(q + 8), x2 = carl__ld(q + 16), x3 = carl__ld(q + 24);
      c0 = carl__sel(x0 > c0, x0, c0);
      c1 = carl__sel(x1 > c1, x1, c1);
      c2 = carl__sel(x2 > c2, x2, c2);
      c3 = carl__sel(x3 > c3, x3, c3);
    }
    carl__topk_cols(v, n, k, c0, c1, c2, c3, idx, val);
    return;
  }
  int m = 0;
  int i = 0;
  for (; i < n && m < k; i++) carl__topk_push(v[i], i, k, &m, idx, val);
  /* blocks of 16: skip a block none of whose values beats the current k-th value */
  for (; i + 16 <= n; i += 16) {
    carl__v8 th = carl__splat(val[k - 1]);
    carl__v8i any = (carl__ld(v + i) > th) | (carl__ld(v + i + 8) > th);
    int hit = 0;
    for (int j = 0; j < 8; j++) hit |= any[j];
    if (!hit) continue;
    for (int j = 0; j < 16; j++) carl__topk_push(v[i + j], i + j, k, &m, idx, val);
  }
  for (; i < n; i++) carl__topk_push(v[i], i, k, &m, idx, val);
  for (; m < k; m++) {
    idx[m] = -1;
    val[m] = -INFINITY;
  }
}

void carl_kern_topk_row_masked(const float *v, const uint8_t *mask, int n, int k, int32_t *idx, float *val) {
  int m = 0;
  for (int i = 0; i < n; i++)
    if (mask[i]) carl__topk_push(v[i], i, k, &m, idx, val);
  for (; m < k; m++) {
    idx[m] = -1;
    val[m] = -INFINITY;
  }
}

/* ---- the fused selection: one token (portable reference) ------------------------------------ */
/* Route token t; returns 1 when its logits are not finite. */
CARL__CLONES static int carl__select_token(const carl__kern_selctx_t *x, carl__kern_selbuf_t *bf, int64_t t, float *pp, double *zs) {
  const carl_kern_select_t *sl = x->sl;
  const int E = x->E, k = x->k, G = x->G, pg = sl->per_group;
  const float *z = x->logits + t * E;
  int32_t *ex = x->experts + t * k;
  float *w = x->weights + t * k;
  float *s = bf->s;
  carl__v8 cols[4] = {{0}};
  const int fast = !x->need_sel && !x->grouped && carl__topk_cols_fit(E, k);
  if (fast && !zs && !x->prio && x->renorm && x->score == CARL_SCORE_SOFTMAX) {
    /* nothing needs the full softmax: renormalised gates over S are exp(z_j - z_max) / sum over S */
    const float mx = carl__row_max(z, E, cols);
    if (isnan(mx)) {
      for (int j = 0; j < k; j++) {
        ex[j] = -1;
        w[j] = 0;
      }
      return 1;
    }
    carl__topk_cols(z, E, k, cols[0], cols[1], cols[2], cols[3], ex, bf->valp);
    float a = 0;
    for (int j = 0; j < k; j++) {
      w[j] = ex[j] >= 0 ? carl_kern_expf(z[ex[j]] - mx) : 0.0f;
      a += w[j];
    }
    const float inv = 1.0f / a;
    for (int j = 0; j < k; j++) w[j] *= inv;
    return 0;
  }
  float lse = carl__score_row(z, E, x->score, s, x->need_lse, fast ? cols : NULL);
  if (isnan(lse)) {
    for (int j = 0; j < k; j++) {
      ex[j] = -1;
      w[j] = 0;
    }
    return 1;
  }
  const float *v = s;
  if (x->need_sel) {
    const float *base = sl->on_logits ? z : s;
    float *sel = bf->sel;
    if (sl->bias) {
      const float *bb = sl->bias + (size_t)(sl->bias_row ? sl->bias_row[t] : 0) * E;
      for (int e = 0; e < E; e++) sel[e] = base[e] + bb[e];
    } else {
      memcpy(sel, base, (size_t)E * sizeof *sel);
    }
    if (x->jitter > 0)
      for (int e = 0; e < E; e++)
        sel[e] += (float)x->jitter * carl_rng_normal(x->seed, CARL_STREAM_JITTER, (x->jbase + (uint64_t)t) * (uint64_t)E + (uint64_t)e);
    v = sel;
  }
  if (x->grouped) {
    const float *gb = sl->group_bonus ? sl->group_bonus + (size_t)(sl->bonus_row ? sl->bonus_row[t] : 0) * G : NULL;
    const int32_t *goff = x->goff, *gmem = x->gmem;
    float *gs = bf->gs;
    if (x->contig && pg <= 2) {
      /* per lane running top-2 over the group's 8-wide chunks, then the 16 lane values */
      const int n = x->eqsize;
      for (int g = 0; g < G; g++) {
        const float *vg = v + (size_t)g * n;
        carl__v8 a = carl__splat(-INFINITY), b = a;
        for (int i = 0; i < n; i += 8) {
          carl__v8 y = carl__ld(vg + i);
          carl__v8 mn = carl__sel(y < a, y, a);
          b = carl__sel(mn > b, mn, b);
          a = carl__sel(y > a, y, a);
        }
        float a1 = -INFINITY, b1 = -INFINITY;
        for (int j = 0; j < 8; j++) {
          float y = a[j], mn = y < a1 ? y : a1;
          b1 = mn > b1 ? mn : b1;
          a1 = y > a1 ? y : a1;
          y = b[j];
          mn = y < a1 ? y : a1;
          b1 = mn > b1 ? mn : b1;
          a1 = y > a1 ? y : a1;
        }
        gs[g] = pg == 2 && n >= 2 ? a1 + b1 : a1;
      }
    } else if (x->eqsize > 0 && pg <= 2) {
      /* running top-2 of every group, all groups side by side (independent chains) */
      float *g2 = bf->g2;
      for (int g = 0; g < G; g++) gs[g] = g2[g] = -INFINITY;
      for (int i = 0; i < x->eqsize; i++)
        for (int g = 0; g < G; g++) {
          float y = v[gmem[goff[g] + i]], a = gs[g];
          float mn = y < a ? y : a;
          g2[g] = mn > g2[g] ? mn : g2[g];
          gs[g] = y > a ? y : a;
        }
      if (pg == 2 && x->eqsize >= 2)
        for (int g = 0; g < G; g++) gs[g] += g2[g];
    } else {
      for (int g = 0; g < G; g++) {
        int m = 0, n = goff[g + 1] - goff[g];
        int q = pg < n ? pg : n;
        float a = 0;
        if (q > 0) {
          for (int i = 0; i < n; i++) carl__topk_push(v[gmem[goff[g] + i]], i, q, &m, bf->pidx, bf->gval);
          for (int i = 0; i < q; i++) a += bf->gval[i];
        } else {
          a = -INFINITY;
        }
        gs[g] = a;
      }
    }
    if (gb)
      for (int g = 0; g < G; g++) gs[g] += gb[g];
    carl_kern_topk_row(gs, G, sl->M, bf->gidx, bf->gval);
    /* top-k over the kept groups: the others masked to -inf */
    float *sel2 = bf->sel2;
    uint8_t *mask = bf->mask;
    for (int e = 0; e < E; e++) sel2[e] = -INFINITY;
    memset(mask, 0, (size_t)E);
    for (int i = 0; i < sl->M; i++)
      if (bf->gidx[i] >= 0)
        for (int j = goff[bf->gidx[i]]; j < goff[bf->gidx[i] + 1]; j++) {
          sel2[gmem[j]] = v[gmem[j]];
          mask[gmem[j]] = 1;
        }
    carl_kern_topk_row(sel2, E, k, ex, bf->valp);
    for (int j = 0; j < k; j++)
      if (ex[j] >= 0 && !mask[ex[j]]) {
        ex[j] = -1;
        bf->valp[j] = -INFINITY;
      }
  } else if (!x->need_sel) {
    /* selection on z: softmax and sigmoid are increasing, so TopK(s) = TopK(z) with the same tie
     * rule on equal logits (and no ties made by rounding s); the capacity priority is s */
    if (fast) carl__topk_cols(z, E, k, cols[0], cols[1], cols[2], cols[3], ex, bf->valp);
    else carl_kern_topk_row(z, E, k, ex, bf->valp);
    for (int j = 0; j < k; j++) bf->valp[j] = ex[j] >= 0 ? s[ex[j]] : -INFINITY;
  } else {
    carl_kern_topk_row(v, E, k, ex, bf->valp);
  }
  float a = 0;
  for (int j = 0; j < k; j++) {
    w[j] = ex[j] >= 0 ? s[ex[j]] : 0.0f;
    a += w[j];
  }
  if (x->renorm && a > 0) {
    float inv = 1.0f / a;
    for (int j = 0; j < k; j++) w[j] *= inv;
  }
  if (x->prio)
    for (int j = 0; j < k; j++) x->prio[t * k + j] = bf->valp[j];
  if (sl->gate_order) carl_kern_slots_by_gate(k, ex, w, x->prio ? x->prio + t * k : NULL);
  if (zs) carl__stats_row(s, E, x->score, lse, pp, zs);
  return 0;
}


/* ---- the fused selection: every token ------------------------------------------------------- */
carl_status carl_kern_select(const carl_kern_select_t *sl, carl_arena_t *a) {
  const int64_t T = sl->T;
  const int E = sl->E, k = sl->k;
  const int grouped = sl->G > 0;
  const int G = grouped ? sl->G : 0;
  const int32_t *goff = sl->goff, *gmem = sl->gmem;
  const int64_t C = sl->C;
  const int need_sel = sl->bias || sl->jitter > 0 || sl->on_logits;
  const int need_p = sl->psum != NULL; /* P_e; the z-loss needs logsumexp only */
  const int stats = need_p || sl->zsum;
  const int64_t nb = (T + CARL_KERN_BLOCK - 1) / CARL_KERN_BLOCK;
  /* scratch of this call (zero-filled): block partial sums of the statistics, capacity priorities */
  float *part = need_p ? carl_arena_alloc(a, (size_t)nb * (size_t)E * sizeof *part) : NULL;
  double *zpart = stats ? carl_arena_alloc(a, (size_t)nb * sizeof *zpart) : NULL;
  float *prio = C > 0 ? carl_arena_alloc(a, (size_t)T * (size_t)k * sizeof *prio) : NULL;
  if ((need_p && !part) || (stats && !zpart) || (C > 0 && !prio)) return carl_fail(CARL_ERR_NOMEM, "out of memory");
  const float *logits = sl->logits;
  int32_t *experts = sl->experts;
  float *weights = sl->weights;
  /* equal-size groups: the per-group top-2 runs over all groups at once */
  int eqsize = grouped ? goff[1] - goff[0] : 0;
  for (int g = 1; g < G; g++)
    if (goff[g + 1] - goff[g] != eqsize) eqsize = 0;
  int contig = eqsize > 0 && eqsize % 8 == 0;
  for (int g = 0; g < G && contig; g++)
    for (int i = 0; i < eqsize; i++)
      if (gmem[goff[g] + i] != g * eqsize + i) contig = 0;
  carl__kern_selctx_t x = {.contig = contig, .sl = sl, .score = sl->score, .renorm = sl->renorm, .jitter = sl->jitter,
                           .E = E, .k = k, .G = G, .grouped = grouped, .need_sel = need_sel, .need_lse = sl->need_lse,
                           .goff = goff, .gmem = gmem, .eqsize = eqsize, .jbase = (uint64_t)sl->step * (uint64_t)T,
                           .seed = sl->seed, .logits = logits, .experts = experts, .weights = weights, .prio = prio};
  const int pg = sl->per_group;
  const int use512 = carl__kern_select_avx512_fits(&x);
  /* loads of the dropless selection for the losses (per-thread integer counts: any order is exact) */
  const int count = need_p && C == 0 && sl->load;
  const int nth = omp_get_max_threads();
  int32_t *cnt = count ? carl_arena_alloc(a, (size_t)nth * (size_t)E * sizeof *cnt) : NULL;
  if (count && !cnt) return carl_fail(CARL_ERR_NOMEM, "out of memory");
  int64_t bad = INT64_MAX;
  int nomem = 0;
#pragma omp parallel if((int64_t)T * E >= CARL_OMP_MIN_WORK) reduction(min : bad) reduction(| : nomem)
  {
    int32_t *mycnt = count ? cnt + (size_t)omp_get_thread_num() * E : NULL;
    carl__kern_selbuf_t bf = {0};
    bf.s = malloc((size_t)E * sizeof *bf.s);
    bf.sel = need_sel ? malloc((size_t)E * sizeof *bf.sel) : NULL;
    bf.sel2 = grouped ? malloc((size_t)E * sizeof *bf.sel2) : NULL;
    bf.gs = grouped ? malloc((size_t)G * sizeof *bf.gs) : NULL;
    bf.g2 = grouped ? malloc((size_t)G * sizeof *bf.g2) : NULL;
    bf.gidx = grouped ? malloc((size_t)G * sizeof *bf.gidx) : NULL;
    bf.gval = grouped ? malloc((size_t)(G > pg ? G : pg) * sizeof *bf.gval) : NULL;
    bf.pidx = grouped ? malloc((size_t)pg * sizeof *bf.pidx) : NULL;
    bf.mask = grouped ? malloc((size_t)E) : NULL;
    float val[64];
    bf.valp = k <= (int)(sizeof val / sizeof *val) ? val : malloc((size_t)k * sizeof *bf.valp);
    if (!bf.s || (need_sel && !bf.sel) || !bf.valp ||
        (grouped && (!bf.sel2 || !bf.gs || !bf.g2 || !bf.gidx || !bf.gval || !bf.pidx || !bf.mask)))
      nomem = 1;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
      if (nomem) continue;
      int64_t t1 = (b + 1) * CARL_KERN_BLOCK < T ? (b + 1) * CARL_KERN_BLOCK : T;
      float *pp = need_p ? part + b * E : NULL;
      double *zs = stats ? &zpart[b] : NULL;
      if (use512) {
        int64_t tb = carl__kern_select_tokens_avx512(&x, b * CARL_KERN_BLOCK, t1, pp, zs);
        if (tb < bad) bad = tb;
      } else {
        for (int64_t t = b * CARL_KERN_BLOCK; t < t1; t++)
          if (carl__select_token(&x, &bf, t, pp, zs) && t < bad) bad = t;
      }
      for (int64_t i = b * CARL_KERN_BLOCK * k; mycnt && i < t1 * k; i++)
        if (experts[i] >= 0) mycnt[experts[i]]++;
    }
    free(bf.s);
    free(bf.sel);
    free(bf.sel2);
    free(bf.gs);
    free(bf.g2);
    free(bf.gidx);
    free(bf.gval);
    free(bf.pidx);
    free(bf.mask);
    if (bf.valp != val) free(bf.valp);
  }
  if (nomem) return carl_fail(CARL_ERR_NOMEM, "out of memory");
  if (bad != INT64_MAX) return carl_kern_bad_token(logits, E, bad);
  if (C > 0) CARL_TRY(carl_kern_apply_capacity(T, k, E, C, experts, prio, weights, sl->renorm, sl->dropped));
  if (stats) carl__stats_finish(part, zpart, nb, E, sl->psum, sl->zsum);
  if (count)
    for (int e = 0; e < E; e++) {
      int64_t n = 0;
      for (int h = 0; h < nth; h++) n += cnt[(size_t)h * E + e];
      sl->load[e] = (double)n;
    }
  return CARL_OK;
}
