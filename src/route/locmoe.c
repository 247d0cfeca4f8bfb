/* locmoe: LocMoE (ALGORITHMS.md 2.8; research/routers.md section 2).
 *
 * Top-1 routing, gate weight = softmax value of the chosen expert (eq. 3, renorm = 0).
 * Gate: learned (the caller's logits) or GrAP (gate = 1): z[t, i] = relu(mean of the i-th block of
 * d/E activations of x_t), fixed weights, requires E | d (eq. 4, bias 0).
 * Losses: L_aux = l_aux * E * sum_e f_e P_e (f_e from the top-1 choices before capacity, eq. 5);
 * L_loc = mu * mean over nodes of KL(D_c || D_l) (carl_locality_loss).
 * Capacity (when capacity_factor > 0): max(ceil(cf * T / E), ec_min) with ec_min from Theorem 1,
 * delta = min over routed tokens of cos(x_t, w_e(t)) (GrAP), or the option delta when > 0. With
 * cap_fixed = 1 (the paper) ec_min is measured on the first step and kept (state, save/load).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/array.h"
#include "carl/balance.h"
#include "carl/route_seed.h"
#include "route/router_impl.h"
#include "route/seed_internal.h"

/* ---- GrAP ----------------------------------------------------------------------------------------- */
carl_status carl_locmoe_grap_logits(int64_t T, int d, int E, const float *x, float *z) {
  if (E < 1 || d < 1) return carl_fail(CARL_ERR_INVALID, "GrAP: d=%d, E=%d must be >= 1", d, E);
  if (d % E != 0) return carl_fail(CARL_ERR_INVALID, "d: GrAP needs E | d, but d=%d is not a multiple of E=%d", d, E);
  CARL_ASSERT(T == 0 || (x && z));
  const int w = d / E;
  for (int64_t t = 0; t < T; t++) {
    const float *xt = x + t * d;
    for (int i = 0; i < E; i++) {
      double sum = 0;
      for (int j = 0; j < w; j++) sum += xt[i * w + j];
      float g = (float)(sum / w);
      if (!isfinite(g)) return carl_fail(CARL_ERR_NUMERIC, "x: token %lld holds a NaN or an infinity", (long long)t);
      z[t * E + i] = g > 0 ? g : 0;
    }
  }
  return CARL_OK;
}

static carl_status grap_logits(const carl_route_in_t *in, float *z /* [T, E] */) {
  if (!in->x || in->d < 1) return carl_fail(CARL_ERR_INVALID, "x: locmoe with gate=1 (GrAP) needs the router inputs x [T, d]");
  return carl_locmoe_grap_logits(in->T, in->d, in->E, in->x, z);
}

/* ---- router --------------------------------------------------------------------------------------- */
typedef struct {
  int gate, min_cap, cap_fixed, loc;
  double mu, eps, delta_opt, l_aux;
  int64_t ec_fixed; /* 0: not measured yet */
  int64_t ec_last;  /* bound measured by the last route (0: none) */
  double delta_last;
} locmoe_state;

static const carl_opt_t locmoe_opts[] = {
    {"k", 1, "experts per token: LocMoE routes top-1 (must be 1)"},
    {"renorm", 0, "0: the gate weight is the softmax value of the chosen expert (LocMoE eq. 3)"},
    {"z_loss", 0, "router z-loss coefficient (LocMoE has none; must be 0 with gate=1)"},
    {"gate", 0, "0: learned gate (caller logits); 1: GrAP, logits = relu(block means of x), needs E | d"},
    {"l_aux", 0.01, "coefficient of L_aux = l_aux * E * sum_e f_e P_e (f from the top-1 choices)"},
    {"loc", 1, "1: add the locality loss mu * KL(D_c || D_l)"},
    {"mu", 0.01, "locality loss coefficient"},
    {"loc_eps", 0.01, "mass of D_l outside the node's experts, in (0, 1)"},
    {"min_cap", 1, "1: capacity >= ec_min of Theorem 1 (when it can be measured and capacity_factor > 0)"},
    {"delta", 0, "cosine threshold of Theorem 1; 0: measure min cos(x_t, w_e(t)) (GrAP gate)"},
    {"cap_fixed", 1, "1: measure ec_min on the first step and keep it (LocMoE); 0: every step"},
};

static carl_status locmoe_backward(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out,
                                   const float *dweights, float *dlogits);

static carl_status locmoe_init(carl_router_t *r) {
  locmoe_state *st = calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "locmoe: state");
  r->state = st;
  int k;
  CARL_TRY(carl_router_opt_int(r, "k", 1, 1, &k));
  CARL_TRY(carl_router_opt_int(r, "gate", 0, 1, &st->gate));
  CARL_TRY(carl_router_opt_real(r, "l_aux", 0, 1e6, &st->l_aux));
  CARL_TRY(carl_router_opt_int(r, "loc", 0, 1, &st->loc));
  CARL_TRY(carl_router_opt_real(r, "mu", 0, 1e6, &st->mu));
  CARL_TRY(carl_router_opt_real(r, "loc_eps", 1e-12, 1 - 1e-12, &st->eps));
  CARL_TRY(carl_router_opt_int(r, "min_cap", 0, 1, &st->min_cap));
  CARL_TRY(carl_router_opt_real(r, "delta", 0, 1, &st->delta_opt));
  CARL_TRY(carl_router_opt_int(r, "cap_fixed", 0, 1, &st->cap_fixed));
  if (st->gate == 1 && (r->opt[CARL_OPT_ZLOSS] > 0 || r->opt[CARL_OPT_AUX] > 0))
    return carl_fail(CARL_ERR_INVALID, "router 'locmoe': with gate=1 (GrAP) the common z_loss and aux options must be 0 "
                     "(they act on caller logits); L_aux is the option l_aux");
  r->backward = locmoe_backward;
  return CARL_OK;
}

static void locmoe_free(carl_router_t *r) {
  free(r->state);
  r->state = NULL;
}

static carl_status locmoe_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  locmoe_state *st = r->state;
  carl_route_common_t c;
  carl_route_common(r, &c);
  const int64_t T = in->T;
  const int E = in->E;
  st->ec_last = 0;
  float *zbuf = NULL, *s = NULL, *prio = NULL;
  int32_t *top1 = NULL;
  carl__seed_topo_t tp;
  memset(&tp, 0, sizeof tp);
  carl_status rc = CARL_OK;
  const float *z = in->logits;
  if (st->gate == 1) {
    zbuf = malloc((size_t)T * E * sizeof *zbuf);
    if (!zbuf) return carl_fail(CARL_ERR_NOMEM, "locmoe: GrAP logits");
    rc = grap_logits(in, zbuf);
    z = zbuf;
  } else if (!z) {
    rc = carl_fail(CARL_ERR_INVALID, "logits: NULL (locmoe gate=0 routes the caller's logits)");
  }
  if (rc == CARL_OK) {
    s = malloc((size_t)T * E * sizeof *s);
    prio = malloc((size_t)T * sizeof *prio);
    top1 = malloc((size_t)T * sizeof *top1);
    if (!s || !prio || !top1) rc = carl_fail(CARL_ERR_NOMEM, "locmoe: T=%lld E=%d", (long long)T, E);
  }
  if (rc == CARL_OK) rc = carl_route_scores(r, z, T, E, c.score, s);
  if (rc == CARL_OK) rc = carl__seed_topo(&r->scratch, in, 0, 0, &tp);
  if (rc == CARL_OK) {
    for (int64_t t = 0; t < T; t++) {
      float v;
      carl_kern_topk_row(s + t * E, E, 1, &top1[t], &v);
      out->experts[t] = top1[t];
      out->weights[t] = v;
      prio[t] = v;
    }
    /* capacity with the Theorem 1 floor */
    int64_t C = carl_kern_capacity(c.cf, T, 1, E);
    if (C > 0 && st->min_cap) {
      int64_t ec = st->cap_fixed ? st->ec_fixed : 0;
      if (!ec) {
        double delta = st->delta_opt;
        if (delta <= 0 && st->gate == 1) { /* min over routed tokens of cos(x_t, w_e(t)) */
          const int w = in->d / E;
          delta = INFINITY;
          for (int64_t t = 0; t < T; t++) {
            const float *x = in->x + t * in->d;
            double nx = 0, blk = 0;
            for (int j = 0; j < in->d; j++) nx += (double)x[j] * x[j];
            for (int j = 0; j < w; j++) blk += x[top1[t] * w + j];
            if (nx > 0) {
              double cs = blk / (sqrt(nx) * sqrt((double)w));
              if (cs < delta) delta = cs;
            }
          }
          if (delta == INFINITY) delta = 0; /* every x_t is zero: no bound */
          else if (delta <= 0) delta = 1e-300; /* p_delta = 1: ec_min = ceil(1/E) */
        }
        if (delta > 0) {
          if (in->d < 2)
            rc = carl_fail(CARL_ERR_INVALID, "d: %d: the LocMoE capacity bound needs the model width d >= 2", in->d);
          else {
            ec = carl_locmoe_ec_min(delta, in->d, E);
            st->delta_last = delta;
          }
        }
      }
      st->ec_last = ec;
      if (ec > C) C = ec;
      if (C > T) C = T;
    }
    if (rc == CARL_OK) rc = carl__seed_finish(T, 1, E, C, c.renorm, out->experts, out->weights, prio, out);
  }
  if (rc == CARL_OK && st->l_aux > 0) {
    double v;
    rc = carl_loss_expert(z, T, E, c.score, top1, 1, st->l_aux, &v, out->dlogits);
    if (rc == CARL_OK) carl_route_add_loss(out, "aux", v);
  }
  if (rc == CARL_OK && st->loc && st->mu > 0) {
    double v;
    rc = carl_locality_loss(T, E, s, tp.node, tp.N, tp.local, st->eps, st->mu, &v, out->dlogits);
    if (rc == CARL_OK) carl_route_add_loss(out, "loc", v);
  }
  free(zbuf);
  free(s);
  free(prio);
  free(top1);
  return rc;
}

static carl_status locmoe_update(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out) {
  (void)in;
  (void)out;
  locmoe_state *st = r->state;
  if (st->cap_fixed && !st->ec_fixed && st->ec_last > 0) st->ec_fixed = st->ec_last;
  return CARL_OK;
}

static carl_status locmoe_backward(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out,
                                   const float *dweights, float *dlogits) {
  locmoe_state *st = r->state;
  carl_route_common_t c;
  carl_route_common(r, &c);
  if (st->gate == 0) {
    if (!in->logits) return carl_fail(CARL_ERR_INVALID, "logits: NULL");
    return carl_route_gate_backward(in->logits, in->T, in->E, 1, c.score, c.renorm, out->experts, dweights, dlogits);
  }
  float *z = malloc((size_t)in->T * in->E * sizeof *z);
  if (!z) return carl_fail(CARL_ERR_NOMEM, "locmoe: GrAP logits");
  carl_status rc = grap_logits(in, z);
  if (rc == CARL_OK) rc = carl_route_gate_backward(z, in->T, in->E, 1, c.score, c.renorm, out->experts, dweights, dlogits);
  free(z);
  return rc;
}

static carl_status locmoe_save(const carl_router_t *r, const char *path) {
  const locmoe_state *st = r->state;
  double v[1] = {(double)st->ec_fixed};
  return carl_route_state_save(path, "locmoe", CARL_STATE_F64, 1, v);
}

static carl_status locmoe_load(carl_router_t *r, const char *path) {
  locmoe_state *st = r->state;
  double v[1];
  CARL_TRY(carl_route_state_load(path, "locmoe", CARL_STATE_F64, 1, v, NULL, NULL));
  if (!(v[0] >= 0) || v[0] != floor(v[0]) || v[0] > 9e15)
    return carl_fail(CARL_ERR_STATE, "%s: locmoe ec_min %g is not a count", path, v[0]);
  st->ec_fixed = (int64_t)v[0];
  return CARL_OK;
}

const carl_router_impl_t carl__router_locmoe = {
    .name = "locmoe",
    .help = "LocMoE: top-1 (learned or GrAP gate), L_aux + locality loss, capacity floor of Theorem 1",
    .opts = locmoe_opts,
    .nopts = sizeof locmoe_opts / sizeof locmoe_opts[0],
    .init = locmoe_init,
    .route = locmoe_route,
    .update = locmoe_update,
    .save = locmoe_save,
    .load = locmoe_load,
    .free = locmoe_free,
};
