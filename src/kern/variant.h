/* The variants of the routing kernels (internal to src/kern and the tests): what the portable
 * reference (select.c) shares with its AVX-512 variant (select_avx512.c): the context of one
 * fused selection, the rules that pick the variant, and the test hook. */
#ifndef CARL_KERN_VARIANT_H
#define CARL_KERN_VARIANT_H

#include "kern/kern.h"

/* What one call of carl_kern_select does to every token: the call, and what follows from it. */
typedef struct {
  const carl_kern_select_t *sl;
  int E, k, G, grouped, need_sel, need_lse;
  int score, renorm;
  double jitter;
  const int32_t *goff, *gmem;
  int eqsize; /* grouped: the size of every group when they are equal, else 0 */
  int contig; /* groups are the consecutive blocks [g * eqsize, (g + 1) * eqsize), eqsize % 8 == 0 */
  uint64_t jbase, seed;
  const float *logits;
  int32_t *experts;
  float *weights;
  float *prio; /* [T, k] capacity priorities (the sel value of each pair), or NULL: dropless */
} carl__kern_selctx_t;

/* Per-thread scratch of the portable reference. */
typedef struct {
  float *s, *sel, *sel2, *gs, *g2, *gval, *valp;
  int32_t *gidx, *pidx;
  uint8_t *mask;
} carl__kern_selbuf_t;

/* Test hook: 0 keeps the routing kernels on their portable reference (also set by
 * CARL_ROUTE_SIMD=0 in the environment); -1 (default) uses the AVX-512 variant where the CPU has
 * it and the shapes fit (carl__kern_avx512_row_fits, carl__kern_select_avx512_fits). The two give
 * the same selections; scores and gates agree to a few units in the last place (the AVX-512 exp
 * is its own polynomial, with fused multiply-adds), and each is deterministic for any thread
 * count. */
extern int carl__kern_simd;

/* The widest row of the AVX-512 variant (its rows live in registers and on the stack). */
#define CARL__KERN_AVX512_MAX_E 1024

/* 1 when the AVX-512 variant is on (CPU support and carl__kern_simd). */
int carl__kern_avx512_on(void);

/* 1 when a row of E experts fits the AVX-512 variant: E a multiple of 16, at most
 * CARL__KERN_AVX512_MAX_E. */
static inline int carl__kern_avx512_row_fits(int E) { return E % 16 == 0 && E <= CARL__KERN_AVX512_MAX_E; }

/* 1 when the AVX-512 variant handles every token of x: the row fits, k <= 16, no jitter, and,
 * when group-limited, contiguous equal groups of a multiple of 16 experts, at most 16 groups,
 * per_group <= 2. */
int carl__kern_select_avx512_fits(const carl__kern_selctx_t *x);

/* Route tokens t0 .. t1 - 1 as the portable carl__select_token does; returns the first token whose
 * logits are not finite (its slots get -1 and weight 0), or INT64_MAX. pp/zs: partial sums of the
 * statistics of the tokens' block, or NULL. */
int64_t carl__kern_select_tokens_avx512(const carl__kern_selctx_t *x, int64_t t0, int64_t t1, float *pp, double *zs);

/* carl_kern_score_row on the AVX-512 variant (carl__kern_avx512_row_fits(E)). */
float carl__kern_score_row_avx512(const float *z, int E, int score, float *s);

#endif
