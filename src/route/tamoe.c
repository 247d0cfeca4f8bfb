/* tamoe: TA-MoE's topology-aware dispatch-frequency loss, a baseline (Chen et al., NeurIPS 2022,
 * arXiv 2302.09915; research/carl.md 5; Chen-Chang/TA-MoE gate/gshard_gate.py). docs/routers.md.
 *
 * Selection is plain top-k (as the reference's GShard gate); the topology enters through the
 * auxiliary loss only, so routing drifts toward cheap links during training. The reference weights
 * the dispatch count c_e of each rank by softmax(topo_row) * W^2, one weight per destination that
 * grows with the cost of reaching it. Here the weight comes from the topology file: for source
 * device a and expert e,
 *   tau(a, e) = normalised copy cost to e's nearest replica (carl_topo_cost: B_inter / B_link, 1 for
 *               inter-node), the device itself counted as an intra-node copy (tau > 0, as a softmax);
 *   w(a, e)   = E tau(a, e) / sum_e' tau(a, e')                 (mean over e of w(a, .) = 1)
 * and the loss, per source device as each rank computes its own in the reference, is
 *   L = ta * E * sum_a (T_a / T) sum_e f_a(e) w(a, e) P_a(e),
 *   f_a(e) = kept (token, slot) pairs from a to e / (T_a k),  P_a(e) = mean over a's tokens of p[t, e]
 * (p = softmax, or sigmoid normalised over the experts). f is a constant of the selection, so
 * dL/dp[t, e] = ta * E * f_a(e) w(a, e) / T for t on a. With uniform weights (one device, or equal
 * links) it is the Switch loss computed per source device.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "route/router_impl.h"
#include "route/seed_internal.h"

static const carl_opt_t tamoe_opts[] = {
    {"ta", 1e-2, "coefficient of the topology-aware dispatch-frequency loss (the Switch value 1e-2)"},
};

static carl_status tamoe_init(carl_router_t *r) {
  double v;
  return carl_router_opt_real(r, "ta", 0, 1e6, &v);
}

/* The loss and its gradient after the selection in out->experts. */
static carl_status tamoe_loss(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out, double coef,
                              int score, int k) {
  const int64_t T = in->T;
  const int E = in->E;
  carl__seed_topo_t tp;
  CARL_TRY(carl__seed_topo(&r->scratch, in, 1, 0, &tp));
  const int D = tp.D;
  /* tau of a local copy: the intra-node link's cost (1 without a topology or an intra class) */
  double tau_self = 1;
  if (in->topo && in->topo->link[CARL_LINK_INTRA].GBps > 0 && in->topo->link[CARL_LINK_INTER].GBps > 0)
    tau_self = in->topo->link[CARL_LINK_INTER].GBps / in->topo->link[CARL_LINK_INTRA].GBps;
  double *w = calloc((size_t)D * E, sizeof *w);   /* [D, E] w(a, e) */
  double *g = calloc((size_t)D * E, sizeof *g);   /* [D, E] n_a(e), then dL/dp for tokens of a */
  double *Pa = calloc((size_t)D * E, sizeof *Pa); /* [D, E] sum over a's tokens of p */
  int64_t *Ta = calloc((size_t)D, sizeof *Ta);
  float *s = malloc((size_t)E * sizeof *s);
  double *p = malloc((size_t)E * sizeof *p);
  carl_status st = CARL_OK;
  if (!w || !g || !Pa || !Ta || !s || !p) st = carl_fail(CARL_ERR_NOMEM, "tamoe: T=%lld E=%d", (long long)T, E);
  for (int a = 0; a < D && st == CARL_OK; a++) {
    double sum = 0;
    for (int e = 0; e < E; e++) {
      double c = tp.cost[(size_t)a * E + e];
      w[(size_t)a * E + e] = c > 0 ? c : tau_self;
      sum += w[(size_t)a * E + e];
    }
    for (int e = 0; e < E; e++) w[(size_t)a * E + e] *= E / sum;
  }
  for (int64_t t = 0; t < T && st == CARL_OK; t++) {
    const int a = tp.src[t];
    Ta[a]++;
    for (int j = 0; j < k; j++) {
      int32_t e = out->experts[t * k + j];
      if (e >= 0) g[(size_t)a * E + e] += 1;
    }
  }
  /* pass 1: P_a; pass 2 (with the gradient): dlogits */
  for (int pass = 0; pass < 2 && st == CARL_OK; pass++) {
    if (pass == 1) {
      double v = 0;
      for (int a = 0; a < D; a++)
        for (int e = 0; e < E; e++) {
          size_t i = (size_t)a * E + e;
          if (!Ta[a]) continue;
          double f = g[i] / ((double)Ta[a] * k);
          v += ((double)Ta[a] / (double)T) * f * w[i] * (Pa[i] / (double)Ta[a]);
          g[i] = coef * E * f * w[i] / (double)T;
        }
      carl_route_add_loss(out, "ta", coef * E * v);
      if (!out->dlogits) break;
    }
    for (int64_t t = 0; t < T; t++) {
      const float *z = in->logits + t * E;
      if (isnan(carl_kern_score_row(z, E, score, s))) {
        int e = 0;
        while (e < E && isfinite(z[e])) e++;
        st = carl_fail(CARL_ERR_NUMERIC, "logits: token %lld, expert %d is not finite", (long long)t, e < E ? e : 0);
        break;
      }
      double A = 1;
      if (score == CARL_SCORE_SIGMOID) {
        A = 0;
        for (int e = 0; e < E; e++) A += s[e];
      }
      for (int e = 0; e < E; e++) p[e] = s[e] / A;
      const size_t row = (size_t)tp.src[t] * E;
      if (pass == 0) {
        for (int e = 0; e < E; e++) Pa[row + e] += p[e];
        continue;
      }
      double dot = 0;
      for (int e = 0; e < E; e++) dot += p[e] * g[row + e];
      float *dz = out->dlogits + t * E;
      if (score == CARL_SCORE_SIGMOID) /* p = sig / A: dp_e/dz_b = sig_b (1 - sig_b) / A (delta_eb - p_e) */
        for (int b = 0; b < E; b++) dz[b] += (float)((double)s[b] * (1.0 - s[b]) / A * (g[row + b] - dot));
      else
        for (int b = 0; b < E; b++) dz[b] += (float)(p[b] * (g[row + b] - dot));
    }
  }
  free(w), free(g), free(Pa), free(Ta), free(s), free(p);
  return st;
}

static carl_status tamoe_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  carl_route_common_t c;
  carl_route_common(r, &c);
  double coef;
  CARL_TRY(carl_router_opt_real(r, "ta", 0, 1e6, &coef));
  CARL_TRY(carl_route_topk_biased(r, in, out, NULL, 0, NULL));
  if (coef <= 0) return CARL_OK;
  return tamoe_loss(r, in, out, coef, c.score, c.k);
}

const carl_router_impl_t carl__router_tamoe = {
    .name = "tamoe",
    .help = "TA-MoE: top-k with a topology-aware dispatch-frequency loss (costlier links weigh more)",
    .opts = tamoe_opts,
    .nopts = sizeof tamoe_opts / sizeof tamoe_opts[0],
    .init = tamoe_init,
    .route = tamoe_route,
};
