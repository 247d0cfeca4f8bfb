/* carl/route_seed.h: helpers of the seed routers that other parts call directly: the C2R
 * collaboration profiler and the LocMoE GrAP gate (ALGORITHMS.md 2.8, 2.9). The LocMoE capacity
 * bound and locality loss are balance functions (carl/balance.h).
 *
 * Usage:
 *   // C2R: profile a trace of logits, then build the collaboration table
 *   int64_t *C = calloc((size_t)E * E, sizeof *C);
 *   CARL_TRY(carl_c2r_count_logits(T, E, k, logits, C));       // top-k sets of softmax(logits)
 *   CARL_TRY(carl_c2r_table(E, C, table));                     // table: int32 [E, E-1]
 *
 * Ownership: every buffer is the caller's; nothing here allocates beyond scratch it frees.
 */
#ifndef CARL_ROUTE_SEED_H
#define CARL_ROUTE_SEED_H

#include "carl/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- C2R collaboration profile (research/routers.md 1.2) ------------------------------------ */
/* counts[i][j] += number of tokens whose top-k set holds both i and j (the diagonal counts each
 * activation of i; it is ignored by carl_c2r_table). experts: [T, k] ids, -1 entries skipped. */
carl_status carl_c2r_count_sets(int64_t T, int k, const int32_t *experts /* [T, k] */, int E,
                                int64_t *counts /* [E, E] */);
/* The same from logits: top-k of softmax(logits) with the lower-index tie rule. */
carl_status carl_c2r_count_logits(int64_t T, int E, int k, const float *logits /* [T, E] */,
                                  int64_t *counts /* [E, E] */);
/* Row i: the E-1 other experts by descending counts[i][j], ties to the lower j. */
carl_status carl_c2r_table(int E, const int64_t *counts /* [E, E] */, int32_t *table /* [E, E-1] */);

/* ---- LocMoE GrAP gate ----------------------------------------------------------------------- */
/* LocMoE eq. 4: z[t, i] = relu(mean of x[t, i*d/E .. (i+1)*d/E)); E must divide d. */
carl_status carl_locmoe_grap_logits(int64_t T, int d, int E, const float *x /* [T, d] */, float *z /* [T, E] */);

#ifdef __cplusplus
}
#endif
#endif
