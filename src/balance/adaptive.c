/* Adaptive balancing-coefficient controller (ALGORITHMS.md 2.11; research/carl.md 8a, 10.3). */
#include "carl/adaptive.h"

#include <math.h>

carl_status carl_adaptive_init(carl_adaptive_t *a, double alpha0, double beta, double xi, double alpha_max) {
  CARL_ASSERT(a);
  if (!(alpha0 >= 0) || !isfinite(alpha0)) return carl_fail(CARL_ERR_INVALID, "alpha0: %g must be finite and >= 0", alpha0);
  if (!(beta >= 0 && beta < 1)) return carl_fail(CARL_ERR_INVALID, "beta: %g must lie in [0, 1)", beta);
  if (!(xi >= 0) || !isfinite(xi)) return carl_fail(CARL_ERR_INVALID, "xi: %g must be finite and >= 0", xi);
  if (!(alpha_max >= 0) || !isfinite(alpha_max))
    return carl_fail(CARL_ERR_INVALID, "alpha_max: %g must be finite and >= 0", alpha_max);
  a->alpha = alpha0;
  a->beta = beta;
  a->xi = xi;
  a->alpha_max = alpha_max;
  return CARL_OK;
}

double carl_adaptive_target(const carl_adaptive_t *a, double r) {
  double excess = (r > 1) ? r - 1 : 0; /* NaN compares false: counts as balanced */
  double t = a->xi * excess;
  if (t > a->alpha_max) t = a->alpha_max;
  return t < 0 ? 0 : t;
}

double carl_adaptive_step(carl_adaptive_t *a, double r) {
  a->alpha = a->beta * a->alpha + (1 - a->beta) * carl_adaptive_target(a, r);
  return a->alpha;
}

double carl_load_skew(const double *load, int n) {
  if (n <= 0) return 1;
  double mx = load[0], sum = 0;
  for (int i = 0; i < n; i++) {
    sum += load[i];
    if (load[i] > mx) mx = load[i];
  }
  if (!(sum > 0)) return 1;
  return mx / (sum / n);
}
