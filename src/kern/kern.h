/* The routing kernels (internal): scores (softmax or sigmoid, with logsumexp), top-k with the
 * lower-index tie rule, capacity, and the fused selection of the topk-like routers
 * (ALGORITHMS.md section 2). They know no router: route/ and balance/ call them, they call
 * neither. Each fast variant sits beside its portable reference and takes the same decisions:
 *   select.c         the portable reference (eight-wide vector extension, same results on every
 *                    CPU and with any thread count);
 *   select_avx512.c  the AVX-512 variant of the score row and of the fused selection, chosen where
 *                    the CPU has it and the shapes fit (variant.h); its exp is its own polynomial,
 *                    so scores and gates differ from the reference by a few units in the last
 *                    place, the selections not;
 *   capacity.c       the capacity C and the capacity drop.
 *
 * Usage:
 *   float s[E];
 *   float lse = carl_kern_score_row(z, E, CARL_SCORE_SOFTMAX, s);   // NaN: z holds a NaN or inf
 *   int32_t idx[k]; float val[k];
 *   carl_kern_topk_row(s, E, k, idx, val);                          // equal values: lower index first
 *   int64_t C = carl_kern_capacity(1.25, T, k, E);                  // ceil(cf T k / E), 0: dropless
 *
 * Ownership: every buffer is the caller's; carl_kern_select takes its scratch from the caller's
 * arena.
 */
#ifndef CARL_KERN_H
#define CARL_KERN_H

#include <math.h>
#include <stdint.h>

#include "carl/core.h"

/* Tokens per block of the sums over tokens: sums over a block, then over the blocks in order, so
 * the results do not depend on the thread count. */
#define CARL_KERN_BLOCK 256

/* ---- scores ---------------------------------------------------------------------------------- */
/* exp(x) for x <= 88 in single precision (Cephes polynomial, about 1 ulp), written so that the
 * compiler vectorises loops that call it; x below -87 gives exp(-87) (harmless in softmax sums). */
static inline float carl_kern_expf(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } u;
  u.i = ((int32_t)n + 127) << 23;
  return p * u.f;
}

/* One row: s = softmax(z) (returns logsumexp(z)) or sigmoid(z) (returns logsumexp(z) as well, for
 * the z-loss); score is CARL_SCORE_SOFTMAX or CARL_SCORE_SIGMOID. Returns NAN when the row holds a
 * NaN or an infinity. */
float carl_kern_score_row(const float *z /* [E] */, int E, int score, float *s /* [E] */);

/* All rows, OpenMP over tokens. Non-finite logits -> CARL_ERR_NUMERIC naming the first bad token.
 * psum and zsum: both NULL, or both set: then psum [E] = sum_t p[t, e] (p = s for softmax,
 * s / sum(s) for sigmoid) and *zsum = sum_t logsumexp(z_t)^2, written on success. */
carl_status carl_kern_scores(const float *logits /* [T, E] */, int64_t T, int E, int score, float *s /* [T, E] */,
                             double *psum /* [E] or NULL */, double *zsum);

/* The error of a token whose logits are not finite: CARL_ERR_NUMERIC, "logits: token t, expert e
 * is NaN|infinite (finite values required)". */
carl_status carl_kern_bad_token(const float *logits /* [T, E] */, int E, int64_t t);

/* ---- top-k ----------------------------------------------------------------------------------- */
/* The k largest of v in descending order; equal values: the lower index first (ALGORITHMS.md).
 * Slots beyond n get index -1 and value -inf. */
void carl_kern_topk_row(const float *v /* [n] */, int n, int k, int32_t *idx /* [k] */, float *val /* [k] */);
/* Same over a subset: only indices with mask[i] != 0 take part; missing slots get idx -1. */
void carl_kern_topk_row_masked(const float *v /* [n] */, const uint8_t *mask /* [n] */, int n, int k,
                               int32_t *idx /* [k] */, float *val /* [k] */);

/* Insert (x, i) into the buffer of *m <= k entries ordered by value descending, then index
 * ascending: the order of the pushes does not matter. */
static inline void carl_kern_topk_push(float x, int32_t i, int k, int *m, int32_t *idx, float *val) {
  int p;
  if (*m == k) {
    if (!(x > val[k - 1] || (x == val[k - 1] && i < idx[k - 1]))) return;
    p = k - 1;
  } else {
    p = (*m)++;
  }
  while (p > 0 && (val[p - 1] < x || (val[p - 1] == x && idx[p - 1] > i))) {
    val[p] = val[p - 1];
    idx[p] = idx[p - 1];
    p--;
  }
  val[p] = x;
  idx[p] = i;
}

/* Reorder the k slots of a token by gate: w descending, equal w: the lower expert first, empty
 * slots (expert -1) last; prio (may be NULL) moves with its slot. */
static inline void carl_kern_slots_by_gate(int k, int32_t *ex /* [k] */, float *w /* [k] */, float *prio /* [k] */) {
  for (int i = 1; i < k; i++) {
    const int32_t e = ex[i];
    const float v = w[i], q = prio ? prio[i] : 0;
    int p = i;
    while (p > 0 && (ex[p - 1] < 0 ? e >= 0 : e >= 0 && (v > w[p - 1] || (v == w[p - 1] && e < ex[p - 1])))) {
      ex[p] = ex[p - 1];
      w[p] = w[p - 1];
      if (prio) prio[p] = prio[p - 1];
      p--;
    }
    ex[p] = e;
    w[p] = v;
    if (prio) prio[p] = q;
  }
}

/* ---- capacity -------------------------------------------------------------------------------- */
/* C = ceil(cf * T * k / E), at least 1; 0 when cf <= 0 (dropless). */
int64_t carl_kern_capacity(double cf, int64_t T, int k, int E);
/* Keep at most C (token, slot) pairs per expert: per overfull expert the pairs with the lowest
 * prio are dropped (equal prio: the higher token index is dropped first). Dropped slots get expert
 * -1 and weight 0; then, when renorm, the kept weights of a token are renormalised to sum 1.
 * *dropped += number of dropped pairs. */
carl_status carl_kern_apply_capacity(int64_t T, int k, int E, int64_t C, int32_t *experts /* [T, k] */,
                                     const float *prio /* [T, k] */, float *weights /* [T, k] */, int renorm,
                                     int64_t *dropped);

/* ---- the fused selection --------------------------------------------------------------------- */
/* What carl_kern_select does to each token t, with s = scores of z_t:
 *   sel[e] = (on_logits ? z[t,e] : s[e]) + bias[bias_row(t), e] + jitter noise   (bias NULL: none)
 *   group limit (G > 0): group score of g = sum of the per_group largest sel over the experts of g,
 *     + group_bonus[bonus_row(t), g]; keep the M best groups (equal scores: lower group first);
 *     S_t = TopK(sel) inside them; otherwise S_t = TopK(sel);
 *   gates w_j = s[e_j], renormalised over S_t when renorm; slots in selection order, or by gate
 *   (descending, equal: lower expert first) when gate_order; then the capacity C by the sel value
 *   of each pair (carl_kern_apply_capacity), and the statistics.
 * The caller has checked the rows (bias_row, bonus_row) and the groups. */
typedef struct {
  int64_t T;
  int E, k;
  const float *logits;      /* [T, E] */
  int32_t *experts;         /* [T, k] out: chosen experts, -1 where dropped */
  float *weights;           /* [T, k] out: gates, 0 where dropped */
  int score;                /* CARL_SCORE_SOFTMAX or CARL_SCORE_SIGMOID */
  int renorm;               /* 1: gates renormalised over the kept experts of the token */
  int on_logits;            /* select on z + bias instead of s + bias (sinkhorn: z + log d1) */
  const float *bias;        /* [nrows, E] or NULL */
  const int32_t *bias_row;  /* [T] rows in 0..nrows-1, or NULL: row 0 */
  double jitter;            /* std of the noise N(0, jitter^2) on sel, drawn from (seed,
                               CARL_STREAM_JITTER, (step * T + t) * E + e); 0: none */
  uint64_t seed;
  int64_t step;
  int G;                    /* 0: no group limit; else G >= 2 groups, 1 <= M < G */
  int M;                    /* groups kept per token */
  int per_group;            /* scores summed per group (>= 1) */
  const int32_t *goff;      /* [G + 1] the experts of group g are gmem[goff[g] .. goff[g + 1]) */
  const int32_t *gmem;      /* [E] ascending within a group */
  const float *group_bonus; /* [nbrows, G] or NULL */
  const int32_t *bonus_row; /* [T] rows in 0..nbrows-1, or NULL: row 0 */
  int gate_order;           /* 1: a token's slots listed by gate (capacity drops stay in place) */
  int64_t C;                /* per-expert capacity; 0: dropless */
  int64_t *dropped;         /* += pairs dropped by the capacity (C > 0) */
  /* statistics for the losses, written on success (NULL: not wanted) */
  double *zsum;             /* sum_t logsumexp(z_t)^2 (sigmoid: only with need_lse, else 0 is added) */
  int need_lse;             /* 1: the logsumexp of sigmoid rows too (the z-loss) */
  double *psum;             /* [E] sum_t p[t, e] (p = s for softmax, s / sum(s) for sigmoid); needs zsum */
  double *load;             /* [E] kept pairs per expert; counted only with psum and C = 0 */
} carl_kern_select_t;

/* Runs the selection on every token (OpenMP over blocks of CARL_KERN_BLOCK tokens; deterministic
 * for any thread count), scratch from the arena a. Errors: CARL_ERR_NUMERIC naming the first token
 * whose logits are not finite (carl_kern_bad_token); CARL_ERR_NOMEM "out of memory". */
carl_status carl_kern_select(const carl_kern_select_t *sel, carl_arena_t *a);

#endif
