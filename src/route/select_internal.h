/* Internals of the fused selection kernel (carl_route_select, common.c) shared with its AVX-512
 * executor (select_avx512.c) and the tests. */
#ifndef CARL_SELECT_INTERNAL_H
#define CARL_SELECT_INTERNAL_H

#include "carl/route_util.h"

/* What one call of carl_route_select does to every token. */
typedef struct {
  const carl_select_t *sl;
  carl_route_common_t c;
  int E, k, G, grouped, need_sel, need_lse, stats;
  const int32_t *goff, *gmem;
  int eqsize;
  int contig; /* groups are the consecutive blocks [g * eqsize, (g + 1) * eqsize), eqsize % 8 == 0 */
  uint64_t jbase, seed;
  const float *logits;
  int32_t *experts;
  float *weights;
  float *prio;
} carl__selctx_t;

/* Per-thread scratch of the portable executor. */
typedef struct {
  float *s, *sel, *sel2, *gs, *g2, *gval, *valp;
  int32_t *gidx, *pidx;
  uint8_t *mask;
} carl__selbuf_t;

/* Insert (x, i) into the buffer ordered by value descending, then index ascending: the order
 * of the pushes does not matter. */
static inline void carl__topk_push_any(float x, int32_t i, int k, int *m, int32_t *idx, float *val) {
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
static inline void carl__slots_by_gate(int k, int32_t *ex, float *w, float *prio) {
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

/* Test hook: 0 keeps the routing kernels on their portable executor (also set by CARL_ROUTE_SIMD=0
 * in the environment); -1 (default) uses the AVX-512 executor where the CPU has it and the shapes
 * fit (carl__select_avx512_fits). The two give the same selections; scores and gates agree to a
 * few units in the last place (the AVX-512 exp is its own polynomial, with fused multiply-adds),
 * and each is deterministic for any thread count. */
extern int carl__route_simd;

/* 1 when the AVX-512 executor is on (CPU support and carl__route_simd). */
int carl__route_avx512_on(void);

/* 1 when the AVX-512 executor handles every token of x: E a multiple of 16 up to 1024, k <= 16, no
 * jitter, and, when group-limited, contiguous equal groups of a multiple of 16 experts, at most 16
 * groups, per_group <= 2. */
int carl__select_avx512_fits(const carl__selctx_t *x);

/* Route tokens t0 .. t1 - 1 as the portable carl__select_token does; returns the first token whose
 * logits are not finite (its slots get -1 and weight 0), or INT64_MAX. pp/zs: partial sums of the
 * statistics of the tokens' block, or NULL. */
int64_t carl__select_tokens_avx512(const carl__selctx_t *x, int64_t t0, int64_t t1, float *pp, double *zs);

/* carl_route_score_row on the AVX-512 executor (E a multiple of 16, at most 1024). */
float carl__score_row_avx512(const float *z, int E, int score, float *s);

#endif
