/* Statistics of a study over seeds: the mean and the half-width of its 95% confidence interval from
 * Student's t distribution with n - 1 degrees of freedom (docs/sim.md "Statistics"). */
#include <math.h>

#include "carl/sim.h"

/* t_{0.975, dof} for dof 1..30 (standard t tables, 4 decimals) */
static const double t975_table[30] = {12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
                                      2.2010,  2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
                                      2.0796,  2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423};

double carl_sim_t975(int dof) {
  if (dof < 1) return NAN;
  if (dof <= 30) return t975_table[dof - 1];
  /* Cornish-Fisher expansion of the t quantile around the normal one (z = 1.959964); it gives
   * 2.0423 at 30 degrees of freedom, the table's value */
  const double z = 1.959963985, v = dof, z2 = z * z, z3 = z2 * z, z5 = z3 * z2, z7 = z5 * z2;
  return z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v * v) +
         (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v * v * v);
}

void carl_sim_ci95(const double *x, int n, double *mean, double *half) {
  double m = NAN, h = NAN;
  if (x && n > 0) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    m = s / n;
    if (n > 1) {
      double ss = 0;
      for (int i = 0; i < n; i++) ss += (x[i] - m) * (x[i] - m);
      h = carl_sim_t975(n - 1) * sqrt(ss / (n - 1)) / sqrt((double)n);
    }
  }
  if (mean) *mean = m;
  if (half) *half = h;
}

int carl_sim_compare(double m1, double h1, double m2, double h2) {
  if (isnan(m1) || isnan(m2) || isnan(h1) || isnan(h2)) return CARL_SIM_UNDECIDED;
  if (m1 + h1 < m2 - h2) return CARL_SIM_WIN;
  if (m1 - h1 > m2 + h2) return CARL_SIM_LOSS;
  return CARL_SIM_OVERLAP;
}
