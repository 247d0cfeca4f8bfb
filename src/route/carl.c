/* carl: CARL-MoE, the integrated router (ALGORITHMS.md 2.11; research/carl.md section 10).
 *
 * Selection works on the communication-aware utility
 *   u[t, e] = s[t, e] - lambda_c * c^(src(t), e)        (c^ to the nearest replica of e)
 * and the gate weights on s (renormalised over S_t when renorm = 1, the default), so the gradients
 * and gate magnitudes stay those of s. Components, each switchable:
 *   comm      the cost term above (off: u = s);
 *   hier      locality-biased hierarchical selection: node score = sum of the top max(1, k/M)
 *             utilities of the node's experts (cost to the replica inside that node) plus
 *             lambda_loc * [node == node(src(t))]; keep the M best nodes; TopK(u) inside them;
 *   adaptive  L = alpha_E * L_E + alpha_G * L_G with each alpha following its level's skew
 *             r = max/mean load: alpha <- beta*alpha + (1-beta)*min(xi*(r-1), alpha_max)
 *             (off: the alphas stay at alpha_E0, alpha_G0);
 *   warm      for the first W steps select TopK of sinkhorn(exp(u)) (balanced), no L_E / L_G;
 *   queue     straggler-aware term: u[t, e] -= q[dev(e)], q the dual price of the constraint "no
 *             device computes longer than the mean": after each step q_b += eta_q * (L_b / mean L - 1)
 *             (L_b the expert rows served on device b), centred to mean 0 and clipped to
 *             [-q_max, q_max]; for a replicated expert the mean price of its replicas' devices;
 *   dedup     the copy cost is charged per (token, destination device) as the dispatch plan counts
 *             copies, not per expert: the k experts are chosen greedily, each at its marginal cost
 *             (0 on a device the token already reaches; with dedup = 2 the hierarchical plan's
 *             costs: the inter-node hop once per destination node, then c^ of the forward inside
 *             it). Needs one replica per expert (else the per-expert cost above is used).
 * With hier = 1, M is checked against the topology at every route, the warm-start ones included.
 * With every component off (and alpha_E0 = alpha_G0 = 0) the router is exactly topk.
 * State: alpha_E, alpha_G, the step counter (advanced by update()) and q [D]; save/load keep them
 * (a state file without q, written before the queue term, loads with q = 0).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/adaptive.h"
#include "carl/balance.h"
#include "route/router_impl.h"
#include "route/seed_internal.h"

typedef struct {
  int comm, hier, adaptive, warm, W, M, group, sk_iters;
  double lambda_c, lambda_loc, sk_tol;
  carl_adaptive_t aE, aG;
  int64_t steps; /* update() calls so far */
  int queue, dedup;
  double eta_q, q_max;
  int D;    /* devices of q (0 until the first update or load) */
  double *q; /* [D] device prices of the queue term */
} carl_state;

static const carl_opt_t carl_opts[] = {
    {"comm", 1, "1: select on u = s - lambda_c * c^(src, e) (communication-aware utility)"},
    {"lambda_c", 0.1, "weight of the normalised copy cost in the utility (>= 0)"},
    {"hier", 1, "1: locality-biased hierarchical selection (keep the M best nodes, TopK inside)"},
    {"M", 0, "nodes a token may reach with hier=1 (0: min(nodes, k))"},
    {"lambda_loc", 0, "bonus added to the score of the token's own node with hier=1 (>= 0)"},
    {"adaptive", 1, "1: alpha_E, alpha_G follow the observed skew; 0: fixed at alpha_E0, alpha_G0"},
    {"alpha_E0", 0, "initial (or, with adaptive=0, fixed) coefficient of L_E"},
    {"alpha_G0", 0, "initial (or, with adaptive=0, fixed) coefficient of L_G"},
    {"alpha_E_max", 0.01, "cap on the expert-level coefficient target"},
    {"alpha_G_max", 0.05, "cap on the group-level coefficient target"},
    {"beta", 0.99, "EMA factor of the coefficient controller, in [0, 1)"},
    {"xi", 0.2, "gain of the controller on the excess skew r - 1"},
    {"group", 0, "group of L_G and of its skew: 0 device, 1 node"},
    {"warm", 1, "1: Sinkhorn warm start on u for the first W steps"},
    {"W", 100, "warm-start steps (update() calls)"},
    {"sk_tol", 1e-4, "Sinkhorn stopping tolerance on mean |d1 - d1_old|"},
    {"sk_iters", 1000, "Sinkhorn iteration cap"},
    {"queue", 1, "1: straggler-aware utility u -= q[dev(e)], q the device prices of the compute queue"},
    {"eta_q", 0.01, "step of the device prices: q_b += eta_q * (load_b / mean load - 1) after each step"},
    {"q_max", 1, "bound on |q_b| (utility units)"},
    {"dedup", 0, "copy cost per (token, device) as the plan counts it: 0 per expert, 1 flat plan, 2 hierarchical plan"},
};

static carl_status carl_init(carl_router_t *r) {
  carl_state *st = calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "carl: state");
  r->state = st;
  double a0E, a0G, amE, amG, beta, xi;
  CARL_TRY(carl_router_opt_int(r, "comm", 0, 1, &st->comm));
  CARL_TRY(carl_router_opt_real(r, "lambda_c", 0, 1e6, &st->lambda_c));
  CARL_TRY(carl_router_opt_int(r, "hier", 0, 1, &st->hier));
  CARL_TRY(carl_router_opt_int(r, "M", 0, 1 << 20, &st->M));
  CARL_TRY(carl_router_opt_real(r, "lambda_loc", 0, 1e6, &st->lambda_loc));
  CARL_TRY(carl_router_opt_int(r, "adaptive", 0, 1, &st->adaptive));
  CARL_TRY(carl_router_opt_real(r, "alpha_E0", 0, 1e6, &a0E));
  CARL_TRY(carl_router_opt_real(r, "alpha_G0", 0, 1e6, &a0G));
  CARL_TRY(carl_router_opt_real(r, "alpha_E_max", 0, 1e6, &amE));
  CARL_TRY(carl_router_opt_real(r, "alpha_G_max", 0, 1e6, &amG));
  CARL_TRY(carl_router_opt_real(r, "beta", 0, 1, &beta));
  CARL_TRY(carl_router_opt_real(r, "xi", 0, 1e6, &xi));
  CARL_TRY(carl_router_opt_int(r, "group", 0, 1, &st->group));
  CARL_TRY(carl_router_opt_int(r, "warm", 0, 1, &st->warm));
  CARL_TRY(carl_router_opt_int(r, "W", 0, 1 << 30, &st->W));
  CARL_TRY(carl_router_opt_real(r, "sk_tol", 0, 1, &st->sk_tol));
  CARL_TRY(carl_router_opt_int(r, "sk_iters", 1, 1 << 24, &st->sk_iters));
  CARL_TRY(carl_router_opt_int(r, "queue", 0, 1, &st->queue));
  CARL_TRY(carl_router_opt_real(r, "eta_q", 0, 1e6, &st->eta_q));
  CARL_TRY(carl_router_opt_real(r, "q_max", 0, 1e6, &st->q_max));
  CARL_TRY(carl_router_opt_int(r, "dedup", 0, 2, &st->dedup));
  if (beta >= 1) return carl_fail(CARL_ERR_INVALID, "router 'carl': option beta = %g must be < 1", beta);
  CARL_TRY(carl_adaptive_init(&st->aE, a0E, beta, xi, amE));
  CARL_TRY(carl_adaptive_init(&st->aG, a0G, beta, xi, amG));
  return CARL_OK;
}

static void carl_free(carl_router_t *r) {
  carl_state *st = r->state;
  if (st) free(st->q);
  free(r->state);
  r->state = NULL;
}

/* The k largest of v (double) restricted to mask (NULL: all), descending, ties to the lower index. */
static void topk_d(const double *v, const uint8_t *mask, int n, int k, int32_t *idx) {
  int m = 0;
  for (int i = 0; i < n; i++) {
    if (mask && !mask[i]) continue;
    if (m < k) m++;
    else if (!(v[i] > v[idx[k - 1]])) continue;
    int p = m - 1;
    while (p > 0 && v[idx[p - 1]] < v[i]) {
      idx[p] = idx[p - 1];
      p--;
    }
    idx[p] = i;
  }
  for (int j = m; j < k; j++) idx[j] = -1;
}

/* The queue price of each expert [E]: q of its device, the mean over its replicas' devices when it
 * has several (NULL when the queue term is off or has no prices yet). */
static carl_status carl_queue_prices(carl_router_t *r, const carl_route_in_t *in, const float **qe_out) {
  const carl_state *st = r->state;
  *qe_out = NULL;
  const int E = in->E, D = carl_route_devices(in);
  if (!st->queue || !st->q || st->D != D) return CARL_OK;
  float *qe = carl_arena_alloc(&r->scratch, (size_t)E * sizeof *qe);
  if (!qe) return carl_fail(CARL_ERR_NOMEM, "carl: queue prices [%d]", E);
  if (in->place) {
    const carl_placement_t *p = in->place;
    if (p->E != E || p->D != D)
      return carl_fail(CARL_ERR_INVALID, "placement: %d experts on %d devices, the route has E = %d on %d devices", p->E,
                       p->D, E, D);
    int *n = carl_arena_alloc(&r->scratch, (size_t)E * sizeof *n);
    double *sum = carl_arena_alloc(&r->scratch, (size_t)E * sizeof *sum);
    if (!n || !sum) return carl_fail(CARL_ERR_NOMEM, "carl: queue prices [%d]", E);
    memset(n, 0, (size_t)E * sizeof *n);
    memset(sum, 0, (size_t)E * sizeof *sum);
    for (int d = 0; d < D; d++)
      for (int j = 0; j < p->slots; j++) {
        int32_t e = p->slot_expert[d * p->slots + j];
        if (e >= 0 && e < E) n[e]++, sum[e] += st->q[d];
      }
    for (int e = 0; e < E; e++) qe[e] = n[e] ? (float)(sum[e] / n[e]) : 0.0f;
  } else {
    for (int e = 0; e < E; e++) qe[e] = (float)st->q[(int64_t)e * D / E];
  }
  *qe_out = qe;
  return CARL_OK;
}

/* Hierarchical selection with replicated experts (an expert may be on several nodes), where the
 * shared group-limited kernel, which gives each expert one group, does not apply. Node scores use
 * the cost to the expert's replica inside that node; the final TopK the nearest replica among the
 * kept nodes. s: scores [T, E]; sel: s plus the jitter noise (or s). Fills experts (descending s,
 * ties to the lower index), raw gate weights s and the capacity priority u. */
static carl_status carl_select_replicated(const carl_state *st, const carl_route_in_t *in, const carl_route_common_t *c,
                                          const carl__seed_topo_t *tp, const float *qe, const float *s, const float *sel, int M,
                                          int32_t *experts /* [T, k] */, float *weights /* [T, k] */,
                                          float *prio /* [T, k] */) {
  const int64_t T = in->T;
  const int E = in->E, k = c->k, N = tp->N;
  const float lam = st->comm ? (float)st->lambda_c : 0.0f;
  const int q = k / M > 0 ? k / M : 1;
  int64_t bad = -1;
#pragma omp parallel
  {
    double *ns = malloc((size_t)N * sizeof *ns);
    double *uf = malloc((size_t)E * sizeof *uf);
    float *tv = malloc((size_t)(q + 1) * sizeof *tv);
    int32_t *nk = malloc((size_t)M * sizeof *nk);
    uint8_t *mask = malloc((size_t)E);
    CARL_ASSERT(ns && uf && tv && nk && mask);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
      const int a = tp->src[t];
      const float *st_ = sel + t * E;
      for (int n = 0; n < N; n++) {
        /* top-q utilities of the node's experts (insertion into a short descending list) */
        const float *cn = tp->cost_node + ((size_t)a * N + n) * E;
        int m = 0;
        for (int e = 0; e < E; e++) {
          if (!tp->local[(size_t)n * E + e]) continue;
          float u = st_[e] - lam * cn[e] - (qe ? qe[e] : 0.0f);
          if (m == q && !(u > tv[q - 1])) continue;
          int p = m < q ? m++ : q - 1;
          while (p > 0 && tv[p - 1] < u) {
            tv[p] = tv[p - 1];
            p--;
          }
          tv[p] = u;
        }
        double sc = 0;
        for (int j = 0; j < m; j++) sc += tv[j];
        ns[n] = m ? sc + (n == tp->node[t] ? st->lambda_loc : 0) : -INFINITY;
      }
      topk_d(ns, NULL, N, M, nk);
      memset(mask, 0, (size_t)E);
      for (int e = 0; e < E; e++) uf[e] = INFINITY; /* min cost over the kept nodes, then utility */
      for (int j = 0; j < M; j++) {
        int n = nk[j];
        if (n < 0 || ns[n] == -INFINITY) continue;
        const float *cn = tp->cost_node + ((size_t)a * N + n) * E;
        for (int e = 0; e < E; e++)
          if (tp->local[(size_t)n * E + e]) {
            mask[e] = 1;
            if (cn[e] < uf[e]) uf[e] = cn[e];
          }
      }
      for (int e = 0; e < E; e++)
        uf[e] = mask[e] ? (double)(st_[e] - lam * (float)uf[e] - (qe ? qe[e] : 0.0f)) : -INFINITY;
      int32_t *ex = experts + t * k;
      topk_d(uf, mask, E, k, ex);
      if (ex[k - 1] < 0) {
#pragma omp critical
        if (bad < 0 || t < bad) bad = t;
      }
    }
    free(ns); free(uf); free(tv); free(nk); free(mask);
  }
  if (bad >= 0)
    return carl_fail(CARL_ERR_INVALID, "carl: the M=%d best nodes of token %lld hold fewer than k=%d experts (raise M)", M,
                     (long long)bad, k);
  for (int64_t t = 0; t < T; t++) {
    int32_t *ex = experts + t * k;
    const float *st_ = s + t * E;
    carl__sort_by_score(ex, k, st_); /* by gate, ties to the lower index */
    for (int j = 0; j < k; j++) {
      weights[t * k + j] = st_[ex[j]];
      prio[t * k + j] = sel[t * E + ex[j]] - lam * tp->cost[(size_t)tp->src[t] * E + ex[j]] - (qe ? qe[ex[j]] : 0.0f);
    }
  }
  return CARL_OK;
}

/* Selection with the plan's marginal copy costs (dedup = 1 flat, 2 hierarchical), one replica per
 * expert (dev [E] its device). Per token on device a, with B the devices and N the nodes it already
 * reaches, the marginal cost of expert e on device b = dev(e), node n:
 *   0 when b = a or b in B; flat: c^(a, b);
 *   hierarchical: c^(a, b) when n = node(a), else [n not in N] c^(a, f) + [b != f] c^(f, b), f the
 *   forwarder n P + (a mod P).
 * The k experts are taken one at a time, each time the best u = sel - lambda_c * marginal - q
 * (equal: the lower expert index); with hier = 1 only the M best nodes (node scores as in the
 * per-expert selection: top max(1, k/M) of sel - lambda_c c^ - q) are open. Fills experts (by s,
 * ties to the lower index), raw weights s and the capacity priority u at the time of the pick. */
static carl_status carl_select_dedup(const carl_state *st, const carl_route_in_t *in, const carl_route_common_t *c,
                                     const carl__seed_topo_t *tp, const int32_t *dev, const float *qe, const float *s,
                                     const float *sel, int hier, int M, int32_t *experts /* [T, k] */,
                                     float *weights /* [T, k] */, float *prio /* [T, k] */) {
  const int64_t T = in->T;
  const int E = in->E, k = c->k, D = tp->D, N = tp->N;
  const int P = in->topo && in->topo->devices_per_node > 0 ? in->topo->devices_per_node : D;
  const double lam = st->comm ? st->lambda_c : 0.0;
  const int q = k / M > 0 ? k / M : 1;
  double *cc = malloc((size_t)D * D * sizeof *cc); /* c^(a, b) */
  if (!cc) return carl_fail(CARL_ERR_NOMEM, "carl: costs [%d, %d]", D, D);
  for (int a = 0; a < D; a++)
    for (int b = 0; b < D; b++) cc[(size_t)a * D + b] = in->topo ? carl_topo_cost(in->topo, a, b) : 0.0;
  int64_t bad = -1;
#pragma omp parallel
  {
    double *u0 = malloc((size_t)E * sizeof *u0);
    double *ns = malloc((size_t)N * sizeof *ns);
    double *tv = malloc((size_t)(q + 1) * sizeof *tv);
    int32_t *nk = malloc((size_t)(M > 0 ? M : 1) * sizeof *nk);
    uint8_t *inB = malloc((size_t)D), *inN = malloc((size_t)N), *open = malloc((size_t)N), *taken = malloc((size_t)E);
    CARL_ASSERT(u0 && ns && tv && nk && inB && inN && open && taken);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
      const int a = tp->src[t], na = tp->node[t];
      const float *st_ = sel + t * E;
      for (int e = 0; e < E; e++) u0[e] = (double)st_[e] - (qe ? qe[e] : 0.0f);
      if (hier) {
        for (int n = 0; n < N; n++) { /* top-q of u0 - lambda_c c^ on node n */
          int m = 0;
          for (int e = 0; e < E; e++) {
            if (dev[e] / P != n) continue;
            double u = u0[e] - lam * cc[(size_t)a * D + dev[e]];
            if (m == q && !(u > tv[q - 1])) continue;
            int p = m < q ? m++ : q - 1;
            while (p > 0 && tv[p - 1] < u) {
              tv[p] = tv[p - 1];
              p--;
            }
            tv[p] = u;
          }
          double sc = 0;
          for (int j = 0; j < m; j++) sc += tv[j];
          ns[n] = m ? sc + (n == na ? st->lambda_loc : 0) : -INFINITY;
        }
        topk_d(ns, NULL, N, M, nk);
        memset(open, 0, (size_t)N);
        for (int j = 0; j < M; j++)
          if (nk[j] >= 0 && ns[nk[j]] != -INFINITY) open[nk[j]] = 1;
      } else {
        memset(open, 1, (size_t)N);
      }
      memset(inB, 0, (size_t)D);
      memset(inN, 0, (size_t)N);
      memset(taken, 0, (size_t)E);
      inB[a] = 1; /* the token's own device: self copies cost nothing */
      inN[na] = 1;
      int32_t *ex = experts + t * k;
      float *pr = prio + t * k;
      for (int j = 0; j < k; j++) {
        int best = -1;
        double bv = -INFINITY;
        for (int e = 0; e < E; e++) {
          const int b = dev[e], n = b / P;
          if (taken[e] || !open[n]) continue;
          double mc = 0;
          if (!inB[b]) {
            if (st->dedup == 1 || n == na) {
              mc = cc[(size_t)a * D + b];
            } else {
              const int f = n * P + a % P;
              mc = (inN[n] ? 0.0 : cc[(size_t)a * D + f]) + (b != f ? cc[(size_t)f * D + b] : 0.0);
            }
          }
          const double u = u0[e] - lam * mc;
          if (best < 0 || u > bv) best = e, bv = u;
        }
        if (best < 0) {
#pragma omp critical
          if (bad < 0 || t < bad) bad = t;
          for (; j < k; j++) ex[j] = -1;
          break;
        }
        ex[j] = best;
        pr[j] = (float)bv;
        taken[best] = 1;
        inB[dev[best]] = 1;
        inN[dev[best] / P] = 1;
      }
    }
    free(u0); free(ns); free(tv); free(nk); free(inB); free(inN); free(open); free(taken);
  }
  free(cc);
  if (bad >= 0)
    return carl_fail(CARL_ERR_INVALID, "carl: the M=%d best nodes of token %lld hold fewer than k=%d experts (raise M)", M,
                     (long long)bad, k);
  for (int64_t t = 0; t < T; t++) {
    int32_t *ex = experts + t * k;
    float *pr = prio + t * k;
    const float *st_ = s + t * E;
    /* sort the slots by gate, carrying each slot's priority with it */
    for (int i = 1; i < k; i++) {
      int32_t e = ex[i];
      float p = pr[i];
      int j = i;
      while (j > 0 && (st_[ex[j - 1]] < st_[e] || (st_[ex[j - 1]] == st_[e] && ex[j - 1] > e))) {
        ex[j] = ex[j - 1];
        pr[j] = pr[j - 1];
        j--;
      }
      ex[j] = e;
      pr[j] = p;
    }
    for (int j = 0; j < k; j++) weights[t * k + j] = st_[ex[j]];
  }
  return CARL_OK;
}

/* Does any expert have replicas on more than one node? */
static int carl_multi_node(const carl__seed_topo_t *tp, int E) {
  for (int e = 0; e < E; e++) {
    int n = 0;
    for (int g = 0; g < tp->N; g++) n += tp->local[(size_t)g * E + e] != 0;
    if (n > 1) return 1;
  }
  return 0;
}

/* What carl_route does this step. */
typedef enum { CARL_SEL_FLAT, CARL_SEL_NODES, CARL_SEL_REPLICATED, CARL_SEL_WARM, CARL_SEL_DEDUP } carl_sel_kind;

/* 1 when every expert has exactly one replica (contiguous placement without a placement). */
static int carl_one_replica(carl_router_t *r, const carl_route_in_t *in) {
  const carl_placement_t *p = in->place;
  if (!p) return 1;
  if (p->E != in->E) return 0;
  int *n = carl_arena_alloc(&r->scratch, (size_t)in->E * sizeof *n);
  if (!n) return 0;
  memset(n, 0, (size_t)in->E * sizeof *n);
  for (int i = 0; i < p->D * p->slots; i++) {
    int32_t e = p->slot_expert[i];
    if (e >= 0 && e < in->E && ++n[e] > 1) return 0;
  }
  return 1;
}

/* The shared part of route and describe: the topology helpers, the checks of M, the per-device
 * bias -lambda_c c^ and, for the flat and node-limited kinds, the fused kernel's descriptor. */
static carl_status carl_prepare(carl_router_t *r, const carl_route_in_t *in, carl__seed_topo_t *tp, carl_select_t *sl,
                                carl_sel_kind *kind, int *Mout, const float **qe_out) {
  carl_state *st = r->state;
  carl_route_common_t c;
  carl_route_common(r, &c);
  const int E = in->E, k = c.k;
  const int warm = st->warm && st->steps < st->W;
  const int hier = st->hier && !warm;
  const float *qe = NULL;
  CARL_TRY(carl_queue_prices(r, in, &qe));
  *qe_out = qe;
  CARL_TRY(carl__seed_topo(&r->scratch, in, st->comm || warm || hier, hier, tp));
  const int M = st->M ? st->M : (tp->N < k ? tp->N : k);
  *Mout = M;
  const float lam = st->comm ? (float)st->lambda_c : 0.0f;
  /* M is checked at every route with hier = 1, also during the warm start (which does not use it):
   * a bad M fails at the first route, not at the first step after the warm start */
  if (st->hier) {
    if (M > tp->N)
      return carl_fail(CARL_ERR_INVALID, "M: %d nodes per token exceeds the %d nodes of the topology (router 'carl', hier = 1)",
                       M, tp->N);
    /* the M nodes with the fewest experts must still hold k of them */
    int *cnt = carl_arena_alloc(&r->scratch, (size_t)tp->N * sizeof *cnt);
    if (!cnt) return carl_fail(CARL_ERR_NOMEM, "carl: nodes");
    for (int n = 0; n < tp->N; n++) cnt[n] = tp->nlocal[n];
    int64_t have = 0;
    for (int j = 0; j < M; j++) { /* M smallest counts */
      int lo = j;
      for (int n = j + 1; n < tp->N; n++)
        if (cnt[n] < cnt[lo]) lo = n;
      int x = cnt[j];
      cnt[j] = cnt[lo];
      cnt[lo] = x;
      have += cnt[j];
    }
    if (have < k)
      return carl_fail(CARL_ERR_INVALID, "carl: M=%d nodes may hold fewer than k=%d experts (%lld); raise M", M, k,
                       (long long)have);
  }
  /* the balancing losses of this step (after the warm start) read P from the kernel's statistics */
  const int balance = !warm && (st->aE.alpha > 0 || st->aG.alpha > 0);
  float *bias = NULL;
  if (st->comm || warm || qe) {
    bias = carl_arena_alloc(&r->scratch, (size_t)tp->D * E * sizeof *bias);
    if (!bias) return carl_fail(CARL_ERR_NOMEM, "carl: bias [%d, %d]", tp->D, E);
    for (int64_t i = 0; i < (int64_t)tp->D * E; i++)
      bias[i] = (tp->cost ? -lam * tp->cost[i] : 0.0f) - (qe ? qe[i % E] : 0.0f);
  }
  memset(sl, 0, sizeof *sl);
  sl->bias = bias;
  sl->nrows = bias ? tp->D : 0;
  sl->bias_row = bias ? tp->src : NULL;
  sl->by_src = 1;
  if (warm) {
    *kind = CARL_SEL_WARM;
  } else if (st->dedup && carl_one_replica(r, in)) {
    *kind = CARL_SEL_DEDUP;
  } else if (hier && !carl_multi_node(tp, E)) {
    /* node-limited selection by the shared kernel: groups = nodes, bonus lambda_loc on the own node */
    int G = 0;
    int32_t *group = carl_arena_alloc(&r->scratch, (size_t)E * sizeof *group);
    if (!group) return carl_fail(CARL_ERR_NOMEM, "carl: groups");
    CARL_TRY(carl_route_expert_groups(in, 1, group, &G));
    float *bonus = NULL;
    if (st->lambda_loc > 0) {
      bonus = carl_arena_alloc(&r->scratch, (size_t)G * G * sizeof *bonus);
      if (!bonus) return carl_fail(CARL_ERR_NOMEM, "carl: bonus");
      for (int n = 0; n < G; n++) bonus[(size_t)n * G + n] = (float)st->lambda_loc;
    }
    int32_t *dev_node = carl_arena_alloc(&r->scratch, (size_t)tp->D * sizeof *dev_node);
    if (!dev_node) return carl_fail(CARL_ERR_NOMEM, "carl: nodes");
    for (int d = 0; d < tp->D; d++) dev_node[d] = in->topo ? carl_topo_node(in->topo, d) : 0;
    sl->group = group;
    sl->ngroups = G;
    sl->M = M;
    sl->per_group = k / M > 0 ? k / M : 1;
    sl->group_bonus = bonus;
    sl->nbrows = bonus ? G : 0;
    sl->bonus_row = bonus ? tp->node : NULL;
    sl->dev_node = dev_node;
    sl->stats = balance;
    sl->gate_order = bias != NULL;
    *kind = CARL_SEL_NODES;
  } else if (hier) {
    *kind = CARL_SEL_REPLICATED;
  } else {
    /* flat selection: the topk kernel with a per-source-device bias -lambda_c * c^ */
    sl->stats = balance;
    sl->gate_order = bias != NULL;
    *kind = CARL_SEL_FLAT;
  }
  return CARL_OK;
}

static carl_status carl_describe(carl_router_t *r, const carl_route_in_t *in, carl_select_t *sel) {
  carl__seed_topo_t tp;
  carl_sel_kind kind;
  int M;
  const float *qe;
  CARL_TRY(carl_prepare(r, in, &tp, sel, &kind, &M, &qe));
  if (kind == CARL_SEL_WARM)
    return carl_fail(CARL_ERR_UNSUPPORTED, "carl: the Sinkhorn warm start (first W steps) is not one fused selection");
  if (kind == CARL_SEL_REPLICATED)
    return carl_fail(CARL_ERR_UNSUPPORTED, "carl: experts replicated on several nodes are not one fused selection");
  if (kind == CARL_SEL_DEDUP)
    return carl_fail(CARL_ERR_UNSUPPORTED, "carl: the per-device copy cost (dedup) is a greedy selection, not one fused one");
  return CARL_OK;
}

static carl_status carl_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  carl_state *st = r->state;
  carl_route_common_t c;
  carl_route_common(r, &c);
  if (!in->logits) return carl_fail(CARL_ERR_INVALID, "logits: NULL");
  const int64_t T = in->T;
  const int E = in->E, k = c.k;
  carl__seed_topo_t tp;
  carl_select_t sl;
  carl_sel_kind kind;
  int M;
  const float *qe;
  CARL_TRY(carl_prepare(r, in, &tp, &sl, &kind, &M, &qe));
  float *bias = (float *)sl.bias, *s = NULL, *u = NULL, *prio = NULL, *sel = NULL;
  carl_status rc = CARL_OK;
  int resort = 1;
  if (kind == CARL_SEL_WARM) {
    /* Sinkhorn on u = s - lambda_c c^; TopK of diag(d0) exp(u) diag(d1) per row = TopK(u + ln d1) */
    s = malloc((size_t)T * E * sizeof *s);
    u = malloc((size_t)T * E * sizeof *u);
    double *d0 = malloc((size_t)T * sizeof *d0), *d1 = malloc((size_t)E * sizeof *d1);
    if (!s || !u || !d0 || !d1) rc = carl_fail(CARL_ERR_NOMEM, "carl: Sinkhorn [%lld, %d]", (long long)T, E);
    if (rc == CARL_OK) rc = carl_route_scores(r, in->logits, T, E, c.score, s);
    if (rc == CARL_OK) {
      for (int64_t t = 0; t < T; t++)
        for (int e = 0; e < E; e++) u[t * E + e] = s[t * E + e] + bias[(size_t)tp.src[t] * E + e];
      float *Cb = malloc((size_t)T * E * sizeof *Cb);
      if (!Cb) rc = carl_fail(CARL_ERR_NOMEM, "carl: Sinkhorn [%lld, %d]", (long long)T, E);
      if (rc == CARL_OK) rc = carl_sinkhorn_scalings(u, T, E, st->sk_tol, st->sk_iters, d0, d1, Cb, NULL, NULL);
      free(Cb);
    }
    if (rc == CARL_OK)
      for (int a = 0; a < tp.D; a++)
        for (int e = 0; e < E; e++) bias[(size_t)a * E + e] += (float)log(d1[e]);
    free(d0);
    free(d1);
    if (rc == CARL_OK) {
      carl_select_t sw = {.bias = bias, .nrows = tp.D, .bias_row = tp.src, .gate_order = 1};
      rc = carl_route_select(r, in, out, &sw);
    }
  } else if (kind == CARL_SEL_REPLICATED || kind == CARL_SEL_DEDUP) {
    s = malloc((size_t)T * E * sizeof *s);
    prio = malloc((size_t)T * k * sizeof *prio);
    sel = c.jitter > 0 ? malloc((size_t)T * E * sizeof *sel) : s;
    if (!s || !prio || !sel) rc = carl_fail(CARL_ERR_NOMEM, "carl: scores [%lld, %d]", (long long)T, E);
    if (rc == CARL_OK) rc = carl_route_scores(r, in->logits, T, E, c.score, s);
    if (rc == CARL_OK && sel != s) { /* the noise of the shared kernels, same stream and index */
      const uint64_t jbase = (uint64_t)in->step * (uint64_t)T;
      for (int64_t t = 0; t < T; t++)
        for (int e = 0; e < E; e++)
          sel[t * E + e] = s[t * E + e] + (float)c.jitter * carl_rng_normal(in->seed, CARL_STREAM_JITTER,
                                                                              (jbase + (uint64_t)t) * (uint64_t)E + (uint64_t)e);
    }
    if (rc == CARL_OK && kind == CARL_SEL_DEDUP) {
      int32_t *dev = carl_arena_alloc(&r->scratch, (size_t)E * sizeof *dev);
      int G = 0;
      if (!dev) rc = carl_fail(CARL_ERR_NOMEM, "carl: devices [%d]", E);
      if (rc == CARL_OK) rc = carl_route_expert_groups(in, 0, dev, &G);
      if (rc == CARL_OK)
        rc = carl_select_dedup(st, in, &c, &tp, dev, qe, s, sel, st->hier, M, out->experts, out->weights, prio);
    } else if (rc == CARL_OK) {
      rc = carl_select_replicated(st, in, &c, &tp, qe, s, sel, M, out->experts, out->weights, prio);
    }
    if (rc == CARL_OK)
      rc = carl__seed_finish(T, k, E, carl_kern_capacity(c.cf, T, k, E), c.renorm, out->experts, out->weights, prio, out);
    resort = 0;
  } else {
    rc = carl_route_select(r, in, out, &sl);
    resort = kind == CARL_SEL_NODES || bias != NULL;
  }
  /* the interface lists the slots by gate (the kernel does, before capacity): dropped slots last */
  if (rc == CARL_OK && resort && out->dropped > 0) carl__seed_sort_slots(T, k, out->experts, out->weights);
  if (sel && sel != s) free(sel);
  free(s);
  free(u);
  free(prio);
  return rc;
}

/* The dual-level balancing losses with the current coefficients (none during the warm start). */
static carl_status carl_finish(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  carl_state *st = r->state;
  if (st->warm && st->steps < st->W) return CARL_OK;
  const int64_t T = in->T;
  const int E = in->E, k = (int)r->opt[CARL_OPT_K], score = (int)r->opt[CARL_OPT_SCORE];
  double aE = st->aE.alpha, aG = st->aG.alpha;
  if (aE <= 0 && aG <= 0) return CARL_OK;
  int32_t *group = carl_arena_alloc(&r->scratch, (size_t)E * sizeof *group);
  if (!group) return carl_fail(CARL_ERR_NOMEM, "carl: groups");
  int G = 0;
  double LE = 0, LG = 0;
  CARL_TRY(carl_route_expert_groups(in, st->group, group, &G));
  if (!out->dlogits && r->have_psum) /* values only: from the statistics of the selection */
    CARL_TRY(carl_loss_dual_value(out->experts, r->have_load ? r->load : NULL, T, k, E, r->psum, group, G, aE, aG, &LE, &LG));
  else
    CARL_TRY(carl_loss_dual(in->logits, T, E, score, out->experts, k, group, G, aE, aG, &LE, &LG, out->dlogits));
  if (aE > 0) carl_route_add_loss(out, "L_E", LE);
  if (aG > 0) carl_route_add_loss(out, "L_G", LG);
  return CARL_OK;
}

/* The queue prices' size: D devices (allocated at the first update; a loaded state must match). */
static carl_status carl_queue_size(carl_state *st, int D) {
  if (st->D == D) return CARL_OK;
  if (st->D != 0)
    return carl_fail(CARL_ERR_STATE, "carl: queue prices are for %d devices but the route has %d", st->D, D);
  st->q = calloc((size_t)D, sizeof *st->q);
  if (!st->q) return carl_fail(CARL_ERR_NOMEM, "carl: queue prices [%d]", D);
  st->D = D;
  return CARL_OK;
}

/* q_b += eta_q (L_b / mean L - 1), centred, clipped; L from the expert loads [E] (replicas share). */
static carl_status carl_queue_step(carl_state *st, const carl_route_in_t *in, const double *load, int E) {
  const int D = carl_route_devices(in);
  CARL_TRY(carl_queue_size(st, D));
  double *dl = calloc((size_t)D, sizeof *dl);
  if (!dl) return carl_fail(CARL_ERR_NOMEM, "carl: device loads [%d]", D);
  int nd = 0;
  carl_status rc = carl_load_groups(load, E, in->topo, in->place, 0, dl, &nd);
  if (rc == CARL_OK && nd == D) {
    double mean = 0;
    for (int b = 0; b < D; b++) mean += dl[b];
    mean /= D;
    if (mean > 0) {
      double qm = 0;
      for (int b = 0; b < D; b++) {
        st->q[b] += st->eta_q * (dl[b] / mean - 1.0);
        qm += st->q[b];
      }
      qm /= D;
      for (int b = 0; b < D; b++) {
        double v = st->q[b] - qm;
        st->q[b] = v > st->q_max ? st->q_max : v < -st->q_max ? -st->q_max : v;
      }
    }
  }
  free(dl);
  return rc;
}

static carl_status carl_update(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out) {
  carl_state *st = r->state;
  const int E = in->E, k = (int)r->opt[CARL_OPT_K];
  if (st->queue) {
    double *load = malloc((size_t)E * sizeof *load);
    if (!load) return carl_fail(CARL_ERR_NOMEM, "carl: loads");
    if (out->global_load)
      memcpy(load, out->global_load, (size_t)E * sizeof *load);
    else
      carl_load_experts(out->experts, in->T, k, E, load);
    carl_status rc = carl_queue_step(st, in, load, E);
    free(load);
    CARL_TRY(rc);
  }
  if (st->adaptive) {
    int D = in->topo ? in->topo->devices : 1;
    double *load = calloc((size_t)E + (size_t)D, sizeof *load);
    if (!load) return carl_fail(CARL_ERR_NOMEM, "carl: loads");
    double *gload = load + E;
    int ng = 0;
    if (out->global_load)
      memcpy(load, out->global_load, (size_t)E * sizeof *load);
    else
      carl_load_experts(out->experts, in->T, k, E, load);
    carl_status rc = carl_load_groups(load, E, in->topo, in->place, st->group, gload, &ng);
    if (rc == CARL_OK) {
      carl_adaptive_step(&st->aE, carl_load_skew(load, E));
      carl_adaptive_step(&st->aG, carl_load_skew(gload, ng));
    }
    free(load);
    CARL_TRY(rc);
  }
  st->steps++;
  return CARL_OK;
}

static carl_status carl_save(const carl_router_t *r, const char *path) {
  const carl_state *st = r->state;
  double *v = malloc((size_t)(3 + st->D) * sizeof *v);
  if (!v) return carl_fail(CARL_ERR_NOMEM, "carl: state");
  v[0] = st->aE.alpha, v[1] = st->aG.alpha, v[2] = (double)st->steps;
  for (int b = 0; b < st->D; b++) v[3 + b] = st->q[b];
  carl_status rc = carl_route_state_save(path, "carl", CARL_STATE_F64, 3 + st->D, v);
  free(v);
  return rc;
}

static carl_status carl_load(carl_router_t *r, const char *path) {
  carl_state *st = r->state;
  void *a = NULL;
  int64_t n = 0;
  CARL_TRY(carl_route_state_load(path, "carl", CARL_STATE_F64, -1, NULL, &a, &n));
  const double *v = a;
  if (n < 3 || n > 3 + (1 << 20)) {
    free(a);
    return carl_fail(CARL_ERR_STATE, "%s: carl state holds %lld values (3, or 3 + devices)", path, (long long)n);
  }
  for (int64_t b = 3; b < n; b++)
    if (!isfinite(v[b])) {
      free(a);
      return carl_fail(CARL_ERR_STATE, "%s: carl queue price %lld is not finite", path, (long long)(b - 3));
    }
  if (n > 3 && st->D != 0 && st->D != n - 3) {
    free(a);
    return carl_fail(CARL_ERR_STATE, "%s: carl queue prices are for %lld devices, this router has %d", path,
                     (long long)(n - 3), st->D);
  }
  if (!(v[0] >= 0) || !(v[1] >= 0) || !(v[2] >= 0) || !isfinite(v[0]) || !isfinite(v[1]) || v[2] != floor(v[2]) ||
      v[2] > 9e15) {
    carl_status rc = carl_fail(CARL_ERR_STATE, "%s: carl state holds alpha_E=%g alpha_G=%g steps=%g (out of range)",
                               path, v[0], v[1], v[2]);
    free(a);
    return rc;
  }
  if (n > 3) {
    carl_status rc = carl_queue_size(st, (int)(n - 3));
    if (rc != CARL_OK) {
      free(a);
      return rc;
    }
    for (int b = 0; b < st->D; b++) st->q[b] = v[3 + b];
  } else if (st->q) {
    memset(st->q, 0, (size_t)st->D * sizeof *st->q);
  }
  st->aE.alpha = v[0];
  st->aG.alpha = v[1];
  st->steps = (int64_t)v[2];
  free(a);
  return CARL_OK;
}

const carl_router_impl_t carl__router_carl = {
    .name = "carl",
    .help = "CARL-MoE: comm-aware utility, locality-biased node-limited selection, adaptive expert+group "
            "balancing, Sinkhorn warm start",
    .opts = carl_opts,
    .nopts = sizeof carl_opts / sizeof carl_opts[0],
    .init = carl_init,
    .route = carl_route,
    .update = carl_update,
    .save = carl_save,
    .load = carl_load,
    .free = carl_free,
    .describe = carl_describe,
    .finish = carl_finish,
};
