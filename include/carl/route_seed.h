/* carl/route_seed.h: helpers of the seed routers that other parts call directly: the C2R
 * collaboration profiler, the LocMoE capacity bound and locality loss (ALGORITHMS.md 2.8, 2.9).
 *
 * Usage:
 *   // C2R: profile a trace of logits, then build the collaboration table
 *   int64_t *C = calloc((size_t)E * E, sizeof *C);
 *   CARL_TRY(carl_c2r_count_logits(T, E, k, logits, C));       // top-k sets of softmax(logits)
 *   CARL_TRY(carl_c2r_table(E, C, table));                     // table: int32 [E, E-1]
 *   // LocMoE Theorem 1
 *   double p = carl_locmoe_p_delta(0.03, 5120);                // 0.0318
 *   int64_t ec = carl_locmoe_ec_min(0.03, 5120, 16);           // 2
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

/* ---- LocMoE minimum capacity (research/routers.md 2.4) --------------------------------------- */
/* Regularised incomplete beta I_x(a, b) (a, b > 0, 0 <= x <= 1) by Lentz's continued fraction;
 * NaN on bad arguments. carl_betai_upper returns 1 - I_x(a, b) without cancellation. */
double carl_betai(double a, double b, double x);
double carl_betai_upper(double a, double b, double x);
/* p_delta = 1 - I_{delta^2}(1/2, (d-1)/2): probability that a uniform unit vector in R^d has
 * |cos| >= delta with a fixed direction. delta <= 0 gives 1; d < 2 gives NaN. */
double carl_locmoe_p_delta(double delta, int d);
/* ec_min = ceil(1 / (E * p_delta)), saturated at INT64_MAX / 4 when p_delta underflows;
 * -1 on bad arguments (d < 2, E < 1, NaN delta). */
int64_t carl_locmoe_ec_min(double delta, int d, int E);

/* GrAP gate (LocMoE eq. 4): z[t, i] = relu(mean of x[t, i*d/E .. (i+1)*d/E)); E must divide d. */
carl_status carl_locmoe_grap_logits(int64_t T, int d, int E, const float *x /* [T, d] */, float *z /* [T, E] */);

/* ---- LocMoE locality loss (ALGORITHMS.md 2.8) ------------------------------------------------ */
/* L = mu * mean over nodes holding tokens of KL(D_c || D_l), with
 *   D_c(e) = mean over the node's tokens of s[t, e],
 *   D_l(e) = (1 - eps) / |local| on the node's experts, eps / (E - |local|) elsewhere
 *            (uniform 1/E when the node holds every expert).
 * s is softmax(z) row-wise. If dlogits is not NULL, dL/dz is ADDED to it. */
carl_status carl_locality_loss(int64_t T, int E, const float *s /* [T, E] */,
                               const int32_t *tok_node /* [T] node of each token */, int nodes,
                               const uint8_t *local /* [nodes, E] 1: expert has a replica there */,
                               double eps, double mu, double *value, float *dlogits /* [T, E] or NULL */);

#ifdef __cplusplus
}
#endif
#endif
