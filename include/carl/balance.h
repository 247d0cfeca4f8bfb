/* carl/balance.h: balancing losses with exact gradients, and load / skew / selectivity metrics
 * (ALGORITHMS.md sections 2.1, 2.11 and 3); LocMoE's locality loss and capacity bound (2.8).
 *
 * Usage:
 *   // losses: value and d(value)/d(logits) added into dlogits (dlogits may be NULL)
 *   double aux, z;
 *   CARL_TRY(carl_loss_expert(logits, T, E, CARL_SCORE_SOFTMAX, experts, k, 0.01, &aux, dlogits));
 *   CARL_TRY(carl_loss_z(logits, T, E, 1e-3, &z, dlogits));
 *
 *   // metrics
 *   double load[E];  carl_load_experts(experts, T, k, E, load);
 *   carl_skew_t sk;  carl_skew(load, E, &sk);            // sk.maxvio, sk.cv, sk.gini, ...
 *   double rho;      CARL_TRY(carl_retained_mass(logits, T, E, 0, experts, k, &rho));
 *
 *   // LocMoE Theorem 1: the minimum expert capacity
 *   double p = carl_locmoe_p_delta(0.03, 5120);                // 0.0318
 *   int64_t ec = carl_locmoe_ec_min(0.03, 5120, 16);           // 2
 *
 * Conventions: experts is [T, k] int32 with -1 for dropped slots (ignored everywhere); p[t, e] is
 * the router probability: softmax(z_t) for score 0, sigmoid(z_t) / sum_e sigmoid(z_t) for score 1
 * (DeepSeek-V3's normalised affinities). f_e = load_e / (T k) is not differentiable; P_e =
 * mean_t p[t, e] is, so every balance loss's gradient flows through P only. Sums over tokens use
 * fixed blocks, so results do not depend on the number of threads.
 * Ownership: the functions only read their inputs and write caller storage.
 */
#ifndef CARL_BALANCE_H
#define CARL_BALANCE_H

#include "carl/topo.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- losses ---------------------------------------------------------------------------------- */
/* Router z-loss (ST-MoE): value = coef * mean_t logsumexp(z_t)^2;
 * dlogits[t, e] += coef * 2 * lse_t * softmax(z_t)_e / T. */
carl_status carl_loss_z(const float *logits /* [T, E] */, int64_t T, int E, double coef, double *value,
                        float *dlogits /* [T, E] or NULL */);

/* Switch/GShard auxiliary loss = CARL's L_E: value = coef * E * sum_e f_e P_e. */
carl_status carl_loss_expert(const float *logits /* [T, E] */, int64_t T, int E, int score,
                             const int32_t *experts /* [T, k] */, int k, double coef, double *value,
                             float *dlogits /* [T, E] or NULL */);

/* CARL's L_G (DeepSeek-V2 device balance): value = coef * sum_g f'_g P'_g, f'_g = mean of f_e over the
 * experts of group g, P'_g = sum of P_e over them. group[e] in 0..G-1 (the device or the node of
 * expert e's home replica, for the device or node balance). */
carl_status carl_loss_group(const float *logits /* [T, E] */, int64_t T, int E, int score,
                            const int32_t *experts /* [T, k] */, int k, const int32_t *group /* [E] */, int G,
                            double coef, double *value, float *dlogits /* [T, E] or NULL */);

/* L_E and L_G in one pass (CARL's dual-level balancing): *L_E = coef_E * E * sum f P,
 * *L_G = coef_G * sum f' P'; gradients of both added into dlogits. */
carl_status carl_loss_dual(const float *logits /* [T, E] */, int64_t T, int E, int score,
                           const int32_t *experts /* [T, k] */, int k, const int32_t *group /* [E] */, int G,
                           double coef_E, double coef_G, double *L_E, double *L_G, float *dlogits /* or NULL */);

/* The values of carl_loss_dual from statistics at hand (no pass over the logits, no gradient):
 * psum [E] = sum_t p[t, e] as the routing kernels gather it while routing (p = s for softmax,
 * s / sum(s) for sigmoid); the loads from load [E] (kept pairs per expert) when not NULL, else
 * counted from experts. */
carl_status carl_loss_dual_value(const int32_t *experts /* [T, k] or NULL */, const double *load /* [E] or NULL */,
                                 int64_t T, int k, int E, const double *psum /* [E] */, const int32_t *group /* [E] */,
                                 int G, double coef_E, double coef_G, double *L_E, double *L_G);

/* The general form behind the three: value = sum_e c[e] * P_e; dlogits += d(value)/d(logits).
 * P (may be NULL) receives P_e = mean_t p[t, e]. */
carl_status carl_loss_linear_p(const float *logits /* [T, E] */, int64_t T, int E, int score,
                               const double *c /* [E] */, double *value, double *P /* [E] or NULL */,
                               float *dlogits /* [T, E] or NULL */);

/* L_E from statistics already at hand: load [E] (kept assignments) and psum [E] = sum_t p[t, e]. */
double carl_loss_expert_value(const double *load, const double *psum, int64_t T, int k, int E, double coef);

/* ---- loads and skew -------------------------------------------------------------------------- */
/* load[e] = number of kept (token, slot) pairs routed to e (-1 ignored). */
void carl_load_experts(const int32_t *experts /* [T, k] */, int64_t T, int k, int E, double *load /* [E] */);

/* Loads of the groups of level 0 (devices) or 1 (nodes) from expert loads. An expert with several
 * replicas (place != NULL) spreads its load equally over its replica slots. place NULL: contiguous
 * placement (expert e on device e * D / E). topo NULL: one device. out: [D] or [N]. */
carl_status carl_load_groups(const double *expert_load /* [E] */, int E, const carl_topo_t *topo,
                             const carl_placement_t *place, int level, double *out, int *ngroups);

typedef struct {
  double max, min, mean;
  double max_over_mean; /* max / mean (1 when balanced; 0 when every load is 0) */
  double maxvio;        /* max / mean - 1 */
  double cv;            /* population standard deviation / mean */
  double gini;          /* sum_i sum_j |x_i - x_j| / (2 n^2 mean) */
} carl_skew_t;
void carl_skew(const double *load /* [n] */, int n, carl_skew_t *out);

/* Fraction of (token, slot) pairs dropped (expert -1). */
double carl_drop_rate(const int32_t *experts /* [T, k] */, int64_t T, int k);

/* ---- selectivity ----------------------------------------------------------------------------- */
/* rho = mean_t sum_{e in S_t} s[t,e] / sum_{e in TopK(s_t)} s[t,e]; s = softmax (0) or sigmoid (1);
 * S_t = the kept experts of t. */
carl_status carl_retained_mass(const float *logits /* [T, E] */, int64_t T, int E, int score,
                               const int32_t *experts /* [T, k] */, int k, double *rho);
/* Mean over tokens of |S_t & TopK(s_t)| / |S_t | TopK(s_t)| (1 when both are empty). */
carl_status carl_topk_jaccard(const float *logits /* [T, E] */, int64_t T, int E, int score,
                              const int32_t *experts /* [T, k] */, int k, double *jaccard);
/* One token's terms of carl_retained_mass and carl_topk_jaccard, from its scores s [E] (softmax
 * or sigmoid of its logits) and kept experts ex [k] (-1 or out of range: dropped); idx, val [k]
 * are scratch (TopK(s) on return). */
void carl_token_selectivity(const float *s /* [E] */, int E, int k, const int32_t *ex /* [k] */, int32_t *idx /* [k] */,
                            float *val /* [k] */, double *retained, double *jaccard);
/* Entropy (nats) of one token's routing distribution from its scores s [E] (softmax or sigmoid):
 * p = s for softmax (0), p = s / sum(s) for sigmoid (1); -sum_e p ln p in double. */
double carl_score_entropy(const float *s /* [E] */, int E, int score);
/* Routing entropy: mean over tokens of -sum_e p[t,e] ln p[t,e] (nats; p as in the losses), and
 * the entropy of the expert load distribution -sum_e (l_e/L) ln(l_e/L) (either pointer may be NULL). */
carl_status carl_routing_entropy(const float *logits /* [T, E] */, int64_t T, int E, int score,
                                 const int32_t *experts /* [T, k] or NULL */, int k, double *token_entropy,
                                 double *load_entropy);

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
