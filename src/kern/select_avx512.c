/* The AVX-512 variant of the fused selection (variant.h): one token's scores, loss
 * statistics, group limit and top-k on 16-wide vectors, reading the logits row once from memory.
 * It takes the decisions of the portable reference (carl__select_token in select.c), step by
 * step; only its exp differs (its own polynomial, fused multiply-adds), by a few units in the last
 * place.
 *
 * Top-k: the row is viewed as [E/16, 16]; the k-th largest of the 16 lane maxima is a lower bound
 * thr of the k-th largest value (k lanes each hold a value >= it), so the k largest are among the
 * values >= thr, which are compacted (in index order) and sorted as 64-bit keys (value, then
 * index) by a bitonic network in registers; more than 16 of them (many equal values) falls back
 * to an insertion over all values >= thr. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kern/variant.h"

int carl__kern_simd = -1;

/* CARL_ROUTE_SIMD=0 in the environment keeps the routing kernels on the portable reference (results
 * identical on every machine), 1 (the default) allows AVX-512; read once when the library is
 * loaded. */
__attribute__((constructor)) static void sel_env(void) {
  const char *e = getenv("CARL_ROUTE_SIMD");
  if (!e) return;
  if (strcmp(e, "0") == 0) carl__kern_simd = 0;
  else if (strcmp(e, "1") != 0) CARL_WARN("CARL_ROUTE_SIMD=%s: expected 0 (portable) or 1 (AVX-512 where available); ignored", e);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define SEL_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi2,fma,bmi2")))
#define SEL_NVMAX (CARL__KERN_AVX512_MAX_E / 16) /* vectors of 16 in a row */
#define SEL_INLINE static inline __attribute__((always_inline))
/* The latency-bound steps (sorting networks, compaction) run on SEL_NT tokens in lockstep, so
 * that the processor overlaps their dependency chains. */
#define SEL_NT 8

int carl__kern_avx512_on(void) {
  return carl__kern_simd != 0 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2") &&
         __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
}

int carl__kern_select_avx512_fits(const carl__kern_selctx_t *x) {
  if (!carl__kern_avx512_on() || !carl__kern_avx512_row_fits(x->E) || x->k > 16 || x->jitter > 0) return 0;
  if (!x->grouped) return 1;
  return x->contig && x->eqsize % 16 == 0 && x->G <= 16 && x->sl->per_group <= 2;
}

/* exp(t) for t = x (neg = 0) or t = -x (neg = 1): t = n ln2 + r (n = round(t / ln2), ln2 in two
 * parts), exp(r) by a degree-6 polynomial fitted for relative error on |r| <= ln2/2 (3e-9; about an
 * ulp in float, like carl_kern_expf's Cephes polynomial, which needs degree 7), times 2^n by scalef.
 * clamp 1: t clamped below at -87 as carl_kern_expf does; 2: also above at 88; 0: no clamp, for
 * arguments known to lie in [-87, 88] (then t = -inf or NaN gives NaN). NaN stays NaN. */
SEL_AVX512 SEL_INLINE __m512 sel_exp_sign(__m512 x, const int clamp, const int neg) {
  if (clamp) { /* the second operand is returned for NaN */
    x = neg ? _mm512_min_ps(_mm512_set1_ps(87.0f), x) : _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
    if (clamp == 2) x = neg ? _mm512_max_ps(_mm512_set1_ps(-88.0f), x) : _mm512_min_ps(_mm512_set1_ps(88.0f), x);
  }
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(neg ? -1.44269504088896341f : 1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = neg ? _mm512_fnmsub_ps(n, _mm512_set1_ps(0.693359375f), x) : _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.3814608101e-03f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3687109873e-03f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1668388993e-02f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666521132e-01f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.9999994040e-01f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

SEL_AVX512 SEL_INLINE __m512 sel_exp(__m512 x, const int clamp) { return sel_exp_sign(x, clamp, 0); }

/* log(x) for positive normal x (Cephes logf: x = m 2^e with m in [sqrt(1/2), sqrt(2)), a degree-8
 * polynomial in m - 1; about 1 ulp). */
SEL_AVX512 SEL_INLINE __m512 sel_log(__m512 x) {
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_p5_1, _MM_MANT_SIGN_zero); /* [0.5, 1) */
  __m512 e = _mm512_add_ps(_mm512_getexp_ps(x), _mm512_set1_ps(1.0f));    /* x = m 2^e */
  const __mmask16 lo = _mm512_cmp_ps_mask(m, _mm512_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm512_mask_sub_ps(e, lo, e, _mm512_set1_ps(1.0f));
  m = _mm512_mask_add_ps(m, lo, m, m); /* m in [sqrt(1/2), sqrt(2)) */
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f)), f2 = _mm512_mul_ps(f, f);
  __m512 y = _mm512_set1_ps(7.0376836292e-2f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.1514610310e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.1676998740e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.2420140846e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.4249322787e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.6668057665e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.0000714765e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-2.4999993993e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(3.3333331174e-1f));
  y = _mm512_mul_ps(_mm512_mul_ps(y, f), f2);
  y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
  y = _mm512_fnmadd_ps(f2, _mm512_set1_ps(0.5f), y);
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(f, y));
}

static int sel_all_finite(const float *z, int E) {
  for (int e = 0; e < E; e++)
    if (!isfinite(z[e])) return 0;
  return 1;
}

/* Pass 1 over a row: *lanes = the 16 lane maxima of z viewed as [nv, 16]; returns max(z).
 * mn NULL: returns NAN when z holds a NaN or an infinity (a sum of the row that is not finite is
 * checked exactly). mn not NULL: *mn = min(z) instead of the sum (for the caller whose exp or
 * sigmoid pass shows a NaN in its sum; an infinity makes max or min not finite). */
SEL_AVX512 static inline float sel_max(const float *z, int nv, __m512 *lanes, float *mn) {
  __m512 m0 = _mm512_loadu_ps(z), m1 = m0, f0 = m0, f1 = mn ? m0 : _mm512_setzero_ps();
  for (int i = 1; i < nv; i++) {
    const __m512 y = _mm512_loadu_ps(z + 16 * i);
    if (i & 1) {
      m1 = _mm512_max_ps(m1, y);
      f1 = mn ? _mm512_min_ps(f1, y) : _mm512_add_ps(f1, y);
    } else {
      m0 = _mm512_max_ps(m0, y);
      f0 = mn ? _mm512_min_ps(f0, y) : _mm512_add_ps(f0, y);
    }
  }
  *lanes = _mm512_max_ps(m0, m1);
  if (mn) {
    *mn = _mm512_reduce_min_ps(_mm512_min_ps(f0, f1));
    return _mm512_reduce_max_ps(*lanes);
  }
  if (!isfinite(_mm512_reduce_add_ps(_mm512_add_ps(f0, f1))) && !sel_all_finite(z, 16 * nv)) return NAN;
  return _mm512_reduce_max_ps(*lanes);
}

/* e = exp(z - mx) (mx = max z, finite; e NULL: not stored; clamp as sel_exp_sign); returns sum(e). */
SEL_AVX512 SEL_INLINE float sel_exp_row(const float *z, int nv, float mx, float *e, const int clamp) {
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  for (int i = 0; i < nv; i++) {
    const __m512 y = sel_exp(_mm512_sub_ps(_mm512_loadu_ps(z + 16 * i), vm), clamp);
    if (e) _mm512_storeu_ps(e + 16 * i, y);
    if (i & 1) a1 = _mm512_add_ps(a1, y);
    else a0 = _mm512_add_ps(a0, y);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* s = sigmoid(z) (clamp as sel_exp_sign for exp(-z)); returns sum(s). vb not NULL: also
 * vb = s + b (b NULL: s) and *lanes = the lane maxima of vb, in the same pass. */
SEL_AVX512 SEL_INLINE float sel_sigmoid_row(const float *z, int nv, float *s, const float *b, float *vb, __m512 *lanes,
                                            const int clamp) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, l = _mm512_set1_ps(-INFINITY);
  for (int i = 0; i < nv; i++) {
    /* 1 / d by the 14-bit reciprocal and one Newton step (within an ulp or two of the division) */
    const __m512 d = _mm512_add_ps(one, sel_exp_sign(_mm512_loadu_ps(z + 16 * i), clamp, 1));
    const __m512 r = _mm512_rcp14_ps(d);
    const __m512 y = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
    _mm512_storeu_ps(s + 16 * i, y);
    if (vb) {
      const __m512 w = b ? _mm512_add_ps(y, _mm512_loadu_ps(b + 16 * i)) : y;
      _mm512_storeu_ps(vb + 16 * i, w);
      l = _mm512_max_ps(l, w);
    }
    if (i & 1) a1 = _mm512_add_ps(a1, y);
    else a0 = _mm512_add_ps(a0, y);
  }
  if (vb) *lanes = l;
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* x[i] *= c */
SEL_AVX512 SEL_INLINE void sel_scale(float *x, int nv, float c) {
  const __m512 vc = _mm512_set1_ps(c);
  for (int i = 0; i < nv; i++) _mm512_storeu_ps(x + 16 * i, _mm512_mul_ps(_mm512_loadu_ps(x + 16 * i), vc));
}

SEL_AVX512 float carl__kern_score_row_avx512(const float *z, int E, int score, float *s) {
  __m512 lanes;
  const int nv = E / 16;
  const float mx = sel_max(z, nv, &lanes, NULL);
  if (isnan(mx)) return NAN;
  const float sum = sel_exp_row(z, nv, mx, score == CARL_SCORE_SOFTMAX ? s : NULL, 1);
  if (score == CARL_SCORE_SOFTMAX) sel_scale(s, nv, 1.0f / sum);
  else sel_sigmoid_row(z, nv, s, NULL, NULL, NULL, 2);
  return mx + _mm512_cvtss_f32(sel_log(_mm512_set1_ps(sum)));
}

/* thr[u] = the k-th largest lane of v[u] (1 <= k <= 16): a bitonic sort of the 16 lanes,
 * descending. Lane i of a compare-exchange at distance d within blocks of size b keeps the larger
 * of itself and lane i ^ d when (i & d) == 0 differs from (i & b) != 0. */
SEL_AVX512 SEL_INLINE __m512 sel_x1(__m512 v) { return _mm512_permute_ps(v, 0xB1); }
SEL_AVX512 SEL_INLINE __m512 sel_x2(__m512 v) { return _mm512_permute_ps(v, 0x4E); }
SEL_AVX512 SEL_INLINE __m512 sel_x4(__m512 v) { return _mm512_shuffle_f32x4(v, v, 0xB1); }
SEL_AVX512 SEL_INLINE __m512 sel_x8(__m512 v) { return _mm512_shuffle_f32x4(v, v, 0x4E); }
#define SEL_SORT_STEP(d, b)                                                                                           \
  do {                                                                                                                \
    __mmask16 big = 0;                                                                                                \
    for (int i = 0; i < 16; i++) big |= (__mmask16)((((i & (d)) == 0) != ((i & (b)) != 0)) << i);                   \
    for (int u = 0; u < n; u++) {                                                                                     \
      const __m512 p = sel_x##d(w[u]);                                                                                \
      w[u] = _mm512_mask_max_ps(_mm512_min_ps(w[u], p), big, w[u], p);                                               \
    }                                                                                                                 \
  } while (0)

SEL_AVX512 SEL_INLINE void sel_kth_n(int n, const __m512 *v, int k, float *thr) {
  __m512 w[SEL_NT];
  for (int u = 0; u < n; u++) w[u] = v[u];
  SEL_SORT_STEP(1, 2);
  SEL_SORT_STEP(2, 4);
  SEL_SORT_STEP(1, 4);
  SEL_SORT_STEP(4, 8);
  SEL_SORT_STEP(2, 8);
  SEL_SORT_STEP(1, 8);
  SEL_SORT_STEP(8, 16);
  SEL_SORT_STEP(4, 16);
  SEL_SORT_STEP(2, 16);
  SEL_SORT_STEP(1, 16);
  for (int u = 0; u < n; u++) thr[u] = _mm512_cvtss_f32(_mm512_permutexvar_ps(_mm512_set1_epi32(k - 1), w[u]));
}

/* The indices (index order) of the values >= thr of v [nv, 16] in the vectors kept by keep, into
 * buf: as bytes, four vectors at a time, where E <= 256 (nv = 4, 8, 12 or 16: SEL_BYTES), else as
 * 16-bit words, two vectors at a time. Returns their number, or some number above 16 once more
 * than 16 are found. sel_cand_idx reads the first 16 back, zero-extended (later, so that the
 * compacting stores have landed). */
#define SEL_BYTES(nv) ((nv) % 4 == 0 && (nv) <= 16)
SEL_AVX512 SEL_INLINE int sel_cands_all(const float *v, int nv, uint64_t keep, float thr, uint8_t *buf /* [128] */,
                                         const int all /* keep = all vectors: plain compares */) {
  static const uint8_t iota8[64] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                    22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43,
                                    44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63};
  const __m512 th = _mm512_set1_ps(thr);
#define SEL_CMP(i)                                                                                                    \
  (all ? _mm512_cmp_ps_mask(_mm512_loadu_ps(v + 16 * (i)), th, _CMP_GE_OQ)                                           \
       : _mm512_mask_cmp_ps_mask((__mmask16)(-(int)((keep >> (i)) & 1u)), _mm512_loadu_ps(v + 16 * (i)), th, _CMP_GE_OQ))
  int nc = 0;
  if (SEL_BYTES(nv)) {
    const __m512i iota = _mm512_loadu_si512(iota8);
    for (int i = 0; i < nv && nc <= 16; i += 4) {
      const __mmask64 m = _mm512_kunpackd(_mm512_kunpackw(SEL_CMP(i + 3), SEL_CMP(i + 2)), _mm512_kunpackw(SEL_CMP(i + 1), SEL_CMP(i)));
      _mm512_storeu_si512(buf + nc, _mm512_maskz_compress_epi8(m, _mm512_add_epi8(iota, _mm512_set1_epi8((char)(16 * i)))));
      nc += (int)__builtin_popcountll(m);
    }
    return nc;
  }
  const __m512i iota = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)iota8));
  for (int i = 0; i < nv && nc <= 16; i += 2) {
    const __mmask32 m = _mm512_kunpackw(i + 1 < nv ? (__mmask32)SEL_CMP(i + 1) : 0, (__mmask32)SEL_CMP(i));
    _mm512_storeu_si512(buf + 2 * nc, _mm512_maskz_compress_epi16(m, _mm512_add_epi16(iota, _mm512_set1_epi16((short)(16 * i)))));
    nc += __builtin_popcount((unsigned)m);
  }
#undef SEL_CMP
  return nc;
}

SEL_AVX512 SEL_INLINE int sel_cands(const float *v, int nv, uint64_t keep, float thr, uint8_t *buf) {
  return keep == ~0ull ? sel_cands_all(v, nv, keep, thr, buf, 1) : sel_cands_all(v, nv, keep, thr, buf, 0);
}

SEL_AVX512 SEL_INLINE __m512i sel_cand_idx(const uint8_t *buf, int nv, __mmask16 have) {
  return SEL_BYTES(nv) ? _mm512_maskz_cvtepu8_epi32(have, _mm_loadu_si128((const __m128i *)buf))
                       : _mm512_maskz_cvtepu16_epi32(have, _mm256_loadu_si256((const __m256i *)buf));
}

/* Bitonic compare-exchange of 64-bit keys at lane distance d (1, 2, 4) within a vector of 8: lane
 * i keeps the larger of itself and lane i ^ d where big has bit i. */
SEL_AVX512 SEL_INLINE __m512i sel_k64_x(__m512i w, int d) {
  return d == 1 ? _mm512_shuffle_epi32(w, (_MM_PERM_ENUM)0x4E) : d == 2 ? _mm512_shuffle_i64x2(w, w, 0xB1) : _mm512_shuffle_i64x2(w, w, 0x4E);
}
#define SEL_K64_STEP(W, d, big)                                                                                       \
  do {                                                                                                                \
    for (int u = 0; u < n; u++) {                                                                                     \
      const __m512i p_ = sel_k64_x(W[u], d);                                                                          \
      W[u] = _mm512_mask_max_epi64(_mm512_min_epi64(W[u], p_), (__mmask8)(big), W[u], p_);                          \
    }                                                                                                                 \
  } while (0)
/* big-lane masks of an 8-lane step at distance d in blocks of b (b = 8: descending) */
#define SEL_BIG8(d, b) ((__mmask8)(((((0 & (d)) == 0) != ((0 & (b)) != 0)) << 0) | ((((1 & (d)) == 0) != ((1 & (b)) != 0)) << 1) | \
  ((((2 & (d)) == 0) != ((2 & (b)) != 0)) << 2) | ((((3 & (d)) == 0) != ((3 & (b)) != 0)) << 3) |                    \
  ((((4 & (d)) == 0) != ((4 & (b)) != 0)) << 4) | ((((5 & (d)) == 0) != ((5 & (b)) != 0)) << 5) |                    \
  ((((6 & (d)) == 0) != ((6 & (b)) != 0)) << 6) | ((((7 & (d)) == 0) != ((7 & (b)) != 0)) << 7)))

/* Bitonic merge of the 8 keys of W[u] (a bitonic sequence) into descending (asc = 0) or ascending
 * order. */
SEL_AVX512 SEL_INLINE void sel_merge8_n(int n, __m512i *W, const int asc) {
  const __mmask8 f = asc ? 0xFF : 0;
  SEL_K64_STEP(W, 4, SEL_BIG8(4, 8) ^ f);
  SEL_K64_STEP(W, 2, SEL_BIG8(2, 8) ^ f);
  SEL_K64_STEP(W, 1, SEL_BIG8(1, 8) ^ f);
}

/* The 8 keys of W[u] sorted, descending (asc = 0) or ascending: two runs of 4 in opposite
 * directions, then a merge. */
SEL_AVX512 SEL_INLINE void sel_sort8_n(int n, __m512i *W, const int asc) {
  SEL_K64_STEP(W, 1, SEL_BIG8(1, 2));
  SEL_K64_STEP(W, 2, SEL_BIG8(2, 4));
  SEL_K64_STEP(W, 1, SEL_BIG8(1, 4));
  sel_merge8_n(n, W, asc);
}

/* For each token u: the k (<= 16) largest of v[u] [nv, 16] over the vectors kept by keep[u] (k
 * values among them), descending, ties to the lower index, in iv[u] (lanes >= k undefined);
 * lanes[u] = lane maxima over those vectors. The candidates (at most 16) become 64-bit keys (the
 * order-preserving integer of the value, then 0xFFFF - index: distinct, and descending keys are
 * the order wanted), sorted by a bitonic network on two vectors of 8. More than 16 values >= thr
 * (many equal values) take an insertion over all of them. */
SEL_AVX512 SEL_INLINE void sel_topk_n(int n, const float *const *v, int nv, const __m512 *lanes, const uint64_t *keep,
                                      int k, __m512i *iv) {
  float thr[SEL_NT];
  sel_kth_n(n, lanes, k, thr);
  int nc[SEL_NT];
  uint8_t cbuf[SEL_NT][128];
  for (int u = 0; u < n; u++) nc[u] = sel_cands(v[u], nv, keep[u], thr[u], cbuf[u]);
  __m512i A[SEL_NT], B[SEL_NT];
  const __m512i low = _mm512_set1_epi32(0x7FFFFFFF);
  for (int u = 0; u < n; u++) {
    const __mmask16 have = nc[u] <= 16 ? (__mmask16)((1u << nc[u]) - 1u) : 0;
    const __m512i ci = sel_cand_idx(cbuf[u], nv, have);
    const __m512 cv = _mm512_mask_i32gather_ps(_mm512_set1_ps(-INFINITY), have, ci, v[u], 4);
    const __m512i b = _mm512_castps_si512(_mm512_add_ps(cv, _mm512_setzero_ps())); /* -0 + 0 = +0 */
    const __m512i key = _mm512_xor_si512(b, _mm512_and_si512(_mm512_srai_epi32(b, 31), low));
    const __m512i lo = _mm512_sub_epi32(_mm512_set1_epi32(0xFFFF), ci);
    A[u] = _mm512_unpacklo_epi32(lo, key); /* any 8 of the 16 candidates */
    B[u] = _mm512_unpackhi_epi32(lo, key);
  }
  /* bitonic sort of 16: A descending and B ascending form a bitonic sequence of 16, whose merge
   * first keeps the larger of lanes i and i + 8 in A, then sorts each half */
  sel_sort8_n(n, A, 0);
  sel_sort8_n(n, B, 1);
  for (int u = 0; u < n; u++) {
    const __m512i hi = _mm512_max_epi64(A[u], B[u]);
    B[u] = _mm512_min_epi64(A[u], B[u]);
    A[u] = hi;
  }
  sel_merge8_n(n, A, 0);
  if (k > 8) sel_merge8_n(n, B, 0);
  const __m512i m16 = _mm512_set1_epi64(0xFFFF);
  for (int u = 0; u < n; u++) {
    if (nc[u] > 16) {
      int m = 0;
      int32_t idx[16];
      float val[16];
      for (int i = 0; i < 16 * nv; i++)
        if (((keep[u] >> (i / 16)) & 1u) && v[u][i] >= thr[u]) carl_kern_topk_push(v[u][i], i, k, &m, idx, val);
      for (; m < k; m++) idx[m] = -1;
      iv[u] = _mm512_maskz_loadu_epi32((__mmask16)((1u << k) - 1u), idx);
      continue;
    }
    const __m256i ia = _mm512_cvtepi64_epi32(_mm512_sub_epi64(m16, _mm512_and_si512(A[u], m16)));
    iv[u] = _mm512_zextsi256_si512(ia);
    if (k > 8) iv[u] = _mm512_inserti64x4(iv[u], _mm512_cvtepi64_epi32(_mm512_sub_epi64(m16, _mm512_and_si512(B[u], m16))), 1);
  }
}

/* Slots by gate (carl_kern_slots_by_gate) of n tokens with k <= 8 slots, in registers: lanes 0..k-1 of
 * ex, w and (not NULL) pr. 64-bit keys: the gate's bits (gates >= 0: integer order), then
 * 1023 - expert and the slot; empty slots (expert -1) after the real ones, lanes >= k last. */
SEL_AVX512 SEL_INLINE void sel_gate_order_n(int n, int k, __m512i *ex, __m512 *w, __m512 *pr) {
  const __mmask8 km = (__mmask8)((1u << k) - 1u);
  const __m512i slot = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i rest = _mm512_mask_or_epi64(_mm512_or_si512(_mm512_set1_epi64(INT64_MIN), slot), km,
                                            _mm512_set1_epi64(INT64_MIN + 16), slot);
  __m512i key[SEL_NT];
  for (int u = 0; u < n; u++) {
    const __m256i e = _mm512_castsi512_si256(ex[u]);
    const __m256i g = _mm256_castps_si256(_mm512_castps512_ps256(w[u]));
    const __m256i lo = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_set1_epi32(1023), e), 4);
    const __m512i kk = _mm512_or_si512(_mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(g), 32), _mm512_cvtepu32_epi64(lo)), slot);
    key[u] = _mm512_mask_mov_epi64(rest, _mm256_mask_cmpge_epi32_mask(km, e, _mm256_setzero_si256()), kk);
  }
  sel_sort8_n(n, key, 0);
  for (int u = 0; u < n; u++) {
    const __m256i idx = _mm512_cvtepi64_epi32(_mm512_and_si512(key[u], _mm512_set1_epi64(7)));
    ex[u] = _mm512_zextsi256_si512(_mm256_permutexvar_epi32(idx, _mm512_castsi512_si256(ex[u])));
    w[u] = _mm512_zextps256_ps512(_mm256_permutexvar_ps(idx, _mm512_castps512_ps256(w[u])));
    if (pr) pr[u] = _mm512_zextps256_ps512(_mm256_permutexvar_ps(idx, _mm512_castps512_ps256(pr[u])));
  }
}

/* top-2 merge of (a1, b1) and (a2, b2) (a >= b lane by lane) */
#define SEL_MERGE(A1, B1, A2, B2, pg, outA, outB)                                                                     \
  do {                                                                                                                \
    const __m512 a1_ = (A1), a2_ = (A2);                                                                             \
    if ((pg) == 2) (outB) = _mm512_max_ps(_mm512_min_ps(a1_, a2_), _mm512_max_ps((B1), (B2)));                        \
    (outA) = _mm512_max_ps(a1_, a2_);                                                                                \
  } while (0)

/* Group scores over contiguous groups of m vectors: the sum of the per_group (1 or 2) largest v of
 * each group, in lanes 0..G-1 (-inf beyond). The 16 lanes of every group are reduced side by side
 * (P = 4, 8 or 16 groups, padded with empty ones): pairs of groups are merged by 128-bit block
 * shuffles (16 -> 8 -> 4 lanes per group), then within blocks (4 -> 2 -> 1), which leaves group
 * 4c + q in lane 4q + c (P = 16; P = 8 fills c = 0, 1 and repeats; P = 4 fills every lane of block
 * q with group q). */
SEL_AVX512 SEL_INLINE __m512 sel_group_scores(const float *v, int G, int m, int pg, const int P, __m512 *gmax /* [P] */) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  __m512 A[16], B[16];
  for (int g = 0; g < P; g++) {
    A[g] = B[g] = ninf;
    if (g < G) A[g] = _mm512_loadu_ps(v + 16 * g * m);
    for (int j = 1; g < G && j < m; j++) {
      const __m512 y = _mm512_loadu_ps(v + 16 * (g * m + j));
      if (pg == 2) B[g] = j == 1 ? _mm512_min_ps(A[g], y) : _mm512_max_ps(B[g], _mm512_min_ps(A[g], y));
      A[g] = _mm512_max_ps(A[g], y);
    }
    gmax[g] = A[g];
  }
  /* 16 -> 8 lanes: blocks {0,1} and {2,3} of groups 2j and 2j+1 */
  for (int j = 0; j < P / 2; j++)
    SEL_MERGE(_mm512_shuffle_f32x4(A[2 * j], A[2 * j + 1], 0x44), _mm512_shuffle_f32x4(B[2 * j], B[2 * j + 1], 0x44),
              _mm512_shuffle_f32x4(A[2 * j], A[2 * j + 1], 0xEE), _mm512_shuffle_f32x4(B[2 * j], B[2 * j + 1], 0xEE), pg,
              A[j], B[j]);
  /* 8 -> 4 lanes: block q of vector j now holds group 4j + q */
  for (int j = 0; j < P / 4; j++)
    SEL_MERGE(_mm512_shuffle_f32x4(A[2 * j], A[2 * j + 1], 0x88), _mm512_shuffle_f32x4(B[2 * j], B[2 * j + 1], 0x88),
              _mm512_shuffle_f32x4(A[2 * j], A[2 * j + 1], 0xDD), _mm512_shuffle_f32x4(B[2 * j], B[2 * j + 1], 0xDD), pg,
              A[j], B[j]);
  /* 4 -> 2 lanes: vectors 0 and 1 (groups 0..3 and 4..7; P = 4 pairs vector 0 with itself) */
  const int h = P >= 8 ? 1 : 0;
  __m512 A0, B0 = ninf, A1 = ninf, B1 = ninf;
  SEL_MERGE(_mm512_shuffle_ps(A[0], A[h], 0x44), _mm512_shuffle_ps(B[0], B[h], 0x44), _mm512_shuffle_ps(A[0], A[h], 0xEE),
            _mm512_shuffle_ps(B[0], B[h], 0xEE), pg, A0, B0);
  if (P == 16)
    SEL_MERGE(_mm512_shuffle_ps(A[2], A[3], 0x44), _mm512_shuffle_ps(B[2], B[3], 0x44), _mm512_shuffle_ps(A[2], A[3], 0xEE),
              _mm512_shuffle_ps(B[2], B[3], 0xEE), pg, A1, B1);
  else {
    A1 = A0;
    B1 = B0;
  }
  /* 2 -> 1 lane */
  __m512 FA, FB = ninf;
  SEL_MERGE(_mm512_shuffle_ps(A0, A1, 0x88), _mm512_shuffle_ps(B0, B1, 0x88), _mm512_shuffle_ps(A0, A1, 0xDD),
            _mm512_shuffle_ps(B0, B1, 0xDD), pg, FA, FB);
  const __m512 F = pg == 2 ? _mm512_add_ps(FA, FB) : FA;
  /* group g to lane g: from lane 4 (g % 4) + g / 4 (P = 8, 16) or 4 g (P = 4) */
  static const int32_t map8[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
  static const int32_t map4[16] = {0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm512_mask_permutexvar_ps(ninf, (__mmask16)((1u << G) - 1u), _mm512_loadu_si512(P == 4 ? map4 : map8), F);
}

/* Group limit for n tokens: keep[u] = the vectors of the M best groups of token t0 + u (group score
 * + bonus; equal scores: the lower group first); lanes[u] = the lane maxima over those vectors.
 * 8 groups of 32 experts with the top-2 sum (DeepSeek-V3's node limit) get constant trip counts. */
SEL_AVX512 SEL_INLINE void sel_groups_n(int n, const carl__kern_selctx_t *x, const float *const *v, int64_t t0, uint64_t *keep,
                                        __m512 *lanes) {
  const carl_kern_select_t *sl = x->sl;
  const int G = x->G, m = x->eqsize / 16, pg = sl->per_group;
  const __mmask16 real = (__mmask16)((1u << G) - 1u);
  __m512 gs[SEL_NT], gmax[SEL_NT][16];
  float thr[SEL_NT];
  for (int u = 0; u < n; u++) {
    if (G == 8 && m == 2 && pg == 2) gs[u] = sel_group_scores(v[u], 8, 2, 2, 8, gmax[u]);
    else if (G <= 4) gs[u] = sel_group_scores(v[u], G, m, pg, 4, gmax[u]);
    else if (G <= 8) gs[u] = sel_group_scores(v[u], G, m, pg, 8, gmax[u]);
    else gs[u] = sel_group_scores(v[u], G, m, pg, 16, gmax[u]);
    if (sl->group_bonus)
      gs[u] = _mm512_add_ps(gs[u], _mm512_maskz_loadu_ps(real, sl->group_bonus + (size_t)(sl->bonus_row ? sl->bonus_row[t0 + u] : 0) * G));
  }
  /* the M best: those above the M-th largest score, then the first of those equal to it */
  sel_kth_n(n, gs, sl->M, thr);
  const uint64_t gbits = (1ull << m) - 1ull; /* m <= 32: at least two groups */
  for (int u = 0; u < n; u++) {
    const __m512 th = _mm512_set1_ps(thr[u]);
    const unsigned above = _mm512_mask_cmp_ps_mask(real, gs[u], th, _CMP_GT_OQ);
    const unsigned equal = _mm512_mask_cmp_ps_mask(real, gs[u], th, _CMP_EQ_OQ);
    const unsigned kept = above | _pdep_u32((1u << (sl->M - __builtin_popcount(above))) - 1u, equal);
    if (m == 2) { /* each group bit becomes two vector bits */
      const uint64_t b = _pdep_u64(kept, 0x5555555555555555ull);
      keep[u] = b | b << 1;
    } else {
      keep[u] = 0;
      for (int g = 0; g < G; g++) keep[u] |= (0ull - ((kept >> g) & 1u)) & (gbits << (g * m));
    }
    lanes[u] = _mm512_set1_ps(-INFINITY);
    for (int g = 0; g < G; g++)
      lanes[u] = _mm512_mask_max_ps(lanes[u], (__mmask16)(0u - ((kept >> g) & 1u)), lanes[u], gmax[u][g]);
  }
}

/* A block of n tokens from t0 holds logits that are not finite: -1 when n > 1 (nothing written);
 * n = 1: the token's slots get -1 and weight 0, returns 1. */
static int sel_not_finite(const carl__kern_selctx_t *x, int64_t t0, int n) {
  if (n > 1) return -1;
  for (int j = 0; j < x->k; j++) {
    x->experts[t0 * x->k + j] = -1;
    x->weights[t0 * x->k + j] = 0;
  }
  return 1;
}

/* Tokens t0 .. t0 + n - 1 (n <= SEL_NT). Returns 0; 1 when n == 1 and the token's logits are not
 * finite (its slots get -1 and weight 0); -1 when n > 1 and some token's logits are not finite,
 * before anything is written (the caller then takes the tokens one at a time). */
SEL_AVX512 SEL_INLINE int sel_block(const carl__kern_selctx_t *x, int64_t t0, int n, int nv, float *pp, double *zs) {
  const carl_kern_select_t *sl = x->sl;
  const int E = 16 * nv, k = x->k, score = x->score;
  const float *z[SEL_NT];
  float mx[SEL_NT], mn[SEL_NT] = {0};
  __m512 zl[SEL_NT];
  /* with exp or sigmoid: the row's range, which may spare the exp its clamp (a NaN shows in the
   * sum of the scores instead) */
  const int need_exp = score == CARL_SCORE_SOFTMAX || x->need_lse;
  const int plain = !x->need_sel && !x->grouped;
  const int nogate = plain && !zs && !x->prio && x->renorm && score == CARL_SCORE_SOFTMAX;
  const int rng = !nogate && (need_exp || score == CARL_SCORE_SIGMOID);
  for (int u = 0; u < n; u++) {
    z[u] = x->logits + (t0 + u) * E;
    mx[u] = sel_max(z[u], nv, &zl[u], rng ? &mn[u] : NULL);
    if (rng && !(isfinite(mx[u]) && isfinite(mn[u]))) mx[u] = NAN;
  }
  for (int u = 0; u < n; u++)
    if (isnan(mx[u])) return sel_not_finite(x, t0, n);
  const __mmask16 km = (__mmask16)((1u << k) - 1u);
  __m512i iv[SEL_NT];
  uint64_t keep[SEL_NT];
  for (int u = 0; u < n; u++) keep[u] = ~0ull;
  if (nogate) {
    /* nothing needs the full softmax: renormalised gates over S are exp(z_j - z_max) / sum over S */
    if (n > 1) /* the next block's rows (a prefetch past the end of the logits does not fault) */
      for (int i = 0; i < n * nv; i++) _mm_prefetch((const char *)(z[0] + (size_t)n * E + 16 * i), _MM_HINT_T0);
    sel_topk_n(n, z, nv, zl, keep, k, iv);
    for (int u = 0; u < n; u++) {
      const __m512 zk = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), km, iv[u], z[u], 4);
      const __m512 e = _mm512_maskz_mov_ps(km, sel_exp(_mm512_sub_ps(zk, _mm512_set1_ps(mx[u])), 1));
      _mm512_mask_storeu_ps(x->weights + (t0 + u) * k, km, _mm512_mul_ps(e, _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(e))));
      _mm512_mask_storeu_epi32(x->experts + (t0 + u) * k, km, iv[u]);
    }
    return 0;
  }
  /* scores and selection values of token u at s[u], vb[u]: consecutive rows (no 4 KiB aliasing) */
  __attribute__((aligned(64))) float sbuf[2 * SEL_NT * 16 * SEL_NVMAX];
  float *s[SEL_NT], *vb[SEL_NT];
  for (int u = 0; u < n; u++) {
    s[u] = sbuf + (size_t)u * E;
    vb[u] = sbuf + (size_t)(n + u) * E;
  }
  /* scores: softmax s = e * inv with e = exp(z - mx), inv = 1 / sum(e), formed in place only where
   * s itself is selected on (group limit without bias); elsewhere s[u] keeps e and the gates are
   * e * inv. Sigmoid: s = sigmoid(z), inv = 1 / sum(s) for the statistics. */
  const int sc = score == CARL_SCORE_SOFTMAX && !plain && !x->need_sel;
  float inv[SEL_NT], sum[SEL_NT], ssum[SEL_NT];
  for (int u = 0; u < SEL_NT; u++) inv[u] = sum[u] = ssum[u] = 1.0f;
  const int fuse = score == CARL_SCORE_SIGMOID && x->need_sel && !sl->on_logits;
  __m512 vl[SEL_NT];
  const float *brow[SEL_NT]; /* the bias row of each token, or NULL */
  for (int u = 0; u < n; u++) {
    vl[u] = zl[u];
    brow[u] = sl->bias ? sl->bias + (size_t)(sl->bias_row ? sl->bias_row[t0 + u] : 0) * E : NULL;
  }
  for (int u = 0; u < n; u++) {
    if (n > 1) /* the next block's row u (a prefetch past the end of the logits does not fault) */
      for (int i = 0; i < nv; i++) _mm_prefetch((const char *)(z[u] + (size_t)n * E + 16 * i), _MM_HINT_T0);
    if (need_exp) { /* no clamp needed when every z - mx >= -87 */
      sum[u] = mn[u] - mx[u] >= -87.0f ? sel_exp_row(z[u], nv, mx[u], score == CARL_SCORE_SOFTMAX ? s[u] : NULL, 0)
                                       : sel_exp_row(z[u], nv, mx[u], score == CARL_SCORE_SOFTMAX ? s[u] : NULL, 1);
      inv[u] = 1.0f / sum[u];
    }
    if (score == CARL_SCORE_SIGMOID) { /* with a bias on s: the selection values in the same pass */
      const float *b = fuse ? brow[u] : NULL;
      float *o = fuse ? vb[u] : NULL;
      ssum[u] = mx[u] <= 87.0f && mn[u] >= -87.0f ? /* -z within the clamps */ sel_sigmoid_row(z[u], nv, s[u], b, o, &vl[u], 0)
                                                  : sel_sigmoid_row(z[u], nv, s[u], b, o, &vl[u], 2);
      if (pp) inv[u] = 1.0f / ssum[u];
    }
  }
  for (int u = 0; u < n; u++) /* a NaN in the row */
    if (!isfinite(sum[u]) || !isfinite(ssum[u])) return sel_not_finite(x, t0, n);
  if (sc && !pp)
    for (int u = 0; u < n; u++) sel_scale(s[u], nv, inv[u]);
  /* statistics: sum of lse^2 (lse = mx + log(sum), the block's tokens in one vector) and pp += p,
   * p = s (softmax; scaled here when s is selected on) or s / sum(s) (sigmoid) */
  if (zs) {
    float lse[16] = {0};
    if (need_exp)
      _mm512_storeu_ps(lse, _mm512_add_ps(_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), mx),
                                          sel_log(_mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), (__mmask16)((1u << n) - 1u), sum))));
    for (int u = 0; u < n; u++) *zs += (double)lse[u] * (double)lse[u];
  }
  if (pp)
    for (int i = 0; i < nv; i++) {
      __m512 acc = _mm512_loadu_ps(pp + 16 * i);
      for (int u = 0; u < n; u++) {
        if (!sc) {
          acc = _mm512_fmadd_ps(_mm512_load_ps(s[u] + 16 * i), _mm512_set1_ps(inv[u]), acc);
          continue;
        }
        const __m512 y = _mm512_mul_ps(_mm512_load_ps(s[u] + 16 * i), _mm512_set1_ps(inv[u]));
        _mm512_store_ps(s[u] + 16 * i, y);
        acc = _mm512_add_ps(acc, y);
      }
      _mm512_storeu_ps(pp + 16 * i, acc);
    }
  /* selection values v and their lane maxima: plain: z (softmax and sigmoid are increasing, so
   * TopK(s) = TopK(z) with the same tie rule on equal logits; the capacity priority is s);
   * need_sel: (z or s) + bias, s = e * inv by one fused multiply-add; group limit: s */
  const float *v[SEL_NT];
  for (int u = 0; u < n; u++) {
    v[u] = fuse ? vb[u] : plain ? z[u] : s[u];
    if (!x->need_sel || fuse) continue;
    const float *b = brow[u];
    const __m512 g = _mm512_set1_ps(score == CARL_SCORE_SOFTMAX && !sl->on_logits ? inv[u] : 1.0f);
    const float *base = sl->on_logits ? z[u] : s[u];
    vl[u] = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < nv; i++) {
      const __m512 y = _mm512_loadu_ps(base + 16 * i);
      const __m512 w = b ? _mm512_fmadd_ps(y, g, _mm512_loadu_ps(b + 16 * i)) : _mm512_mul_ps(y, g);
      _mm512_store_ps(vb[u] + 16 * i, w);
      if (!x->grouped) vl[u] = _mm512_max_ps(vl[u], w);
    }
    v[u] = vb[u];
  }
  if (x->grouped) sel_groups_n(n, x, v, t0, keep, vl);
  sel_topk_n(n, v, nv, vl, keep, k, iv);
  __m512 wv[SEL_NT], pv[SEL_NT];
  for (int u = 0; u < n; u++) {
    const float g = score == CARL_SCORE_SOFTMAX && !sc ? inv[u] : 1.0f; /* s holds e */
    const __mmask16 on = _mm512_mask_cmpge_epi32_mask(km, iv[u], _mm512_setzero_si512());
    wv[u] = _mm512_mul_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), on, iv[u], s[u], 4), _mm512_set1_ps(g));
    if (x->prio) /* the selection value (plain: s) */
      pv[u] = plain ? wv[u] : _mm512_mask_i32gather_ps(_mm512_set1_ps(-INFINITY), on, iv[u], v[u], 4);
    const float a = _mm512_reduce_add_ps(wv[u]);
    if (x->renorm && a > 0) wv[u] = _mm512_mul_ps(wv[u], _mm512_set1_ps(1.0f / a));
  }
  if (sl->gate_order && k <= 8) sel_gate_order_n(n, k, iv, wv, x->prio ? pv : NULL);
  for (int u = 0; u < n; u++) {
    int32_t *ex = x->experts + (t0 + u) * k;
    float *w = x->weights + (t0 + u) * k;
    float *pr = x->prio ? x->prio + (t0 + u) * k : NULL;
    _mm512_mask_storeu_epi32(ex, km, iv[u]);
    _mm512_mask_storeu_ps(w, km, wv[u]);
    if (pr) _mm512_mask_storeu_ps(pr, km, pv[u]);
    if (sl->gate_order && k > 8) carl_kern_slots_by_gate(k, ex, w, pr);
  }
  return 0;
}

SEL_AVX512 SEL_INLINE int64_t sel_tokens(const carl__kern_selctx_t *x, int64_t t0, int64_t t1, int nv, float *pp, double *zs) {
  int64_t bad = INT64_MAX;
  for (int64_t t = t0; t < t1;) {
    if (t + SEL_NT <= t1 && sel_block(x, t, SEL_NT, nv, pp, zs) == 0) {
      t += SEL_NT;
      continue;
    }
    const int64_t te = t + SEL_NT <= t1 ? t + SEL_NT : t1;
    for (; t < te; t++)
      if (sel_block(x, t, 1, nv, pp, zs) && t < bad) bad = t;
  }
  return bad;
}

SEL_AVX512 int64_t carl__kern_select_tokens_avx512(const carl__kern_selctx_t *x, int64_t t0, int64_t t1, float *pp, double *zs) {
  if (x->E == 256) return sel_tokens(x, t0, t1, 16, pp, zs);
  return sel_tokens(x, t0, t1, x->E / 16, pp, zs);
}

#else /* no AVX-512 variant on this platform */
int carl__kern_avx512_on(void) { return 0; }
int carl__kern_select_avx512_fits(const carl__kern_selctx_t *x) {
  (void)x;
  return 0;
}
int64_t carl__kern_select_tokens_avx512(const carl__kern_selctx_t *x, int64_t t0, int64_t t1, float *pp, double *zs) {
  (void)x, (void)t0, (void)t1, (void)pp, (void)zs;
  return INT64_MAX;
}
float carl__kern_score_row_avx512(const float *z, int E, int score, float *s) {
  (void)z, (void)E, (void)score, (void)s;
  return NAN;
}
#endif
