/* carl/adaptive.h: the adaptive balancing-coefficient controller of CARL-MoE (ALGORITHMS.md 2.11).
 *
 * Usage:
 *   carl_adaptive_t a;
 *   CARL_TRY(carl_adaptive_init(&a, 0.0, 0.99, 0.2, 0.01));   // alpha0, beta, xi, alpha_max
 *   double r = carl_load_skew(load, E);                         // max/mean load of this step
 *   double alpha = carl_adaptive_step(&a, r);                   // coefficient for the next step
 *
 * Rule (the Skywork-MoE form with the skew in place of the drop rate):
 *   alpha <- beta * alpha + (1 - beta) * min(xi * (r - 1), alpha_max),  r = max/mean load >= 1.
 * Ownership: carl_adaptive_t is plain data; nothing here allocates.
 */
#ifndef CARL_ADAPTIVE_H
#define CARL_ADAPTIVE_H

#include "carl/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  double alpha;     /* current coefficient (>= 0) */
  double beta;      /* EMA factor in [0, 1) */
  double xi;        /* gain on the excess skew r - 1 (>= 0) */
  double alpha_max; /* cap on the target (>= 0) */
} carl_adaptive_t;

/* Checks the ranges above; errors name the knob. */
carl_status carl_adaptive_init(carl_adaptive_t *a, double alpha0, double beta, double xi, double alpha_max);
/* min(xi * (r - 1), alpha_max), never below 0; r that is NaN or < 1 counts as 1. */
double carl_adaptive_target(const carl_adaptive_t *a, double r);
/* One EMA step towards the target for skew r; returns the new alpha. */
double carl_adaptive_step(carl_adaptive_t *a, double r);
/* max/mean of load[0..n); 1 when the mean is 0 (no load observed). */
double carl_load_skew(const double *load /* [n] */, int n);

#ifdef __cplusplus
}
#endif
#endif
