/* route/router_impl.h (internal): the kit for writing a router: the implementation table the
 * registry holds, the router object, and the machinery every router shares (ALGORITHMS.md
 * section 2). The public side is carl/route.h; the kernels are in kern/kern.h.
 *
 * Usage (inside a router implementation, src/route/<family>.c):
 *   static carl_status my_init(carl_router_t *r) {
 *     int M;
 *     CARL_TRY(carl_router_opt_int(r, "M", 1, 4096, &M));      // error names "M" and its range
 *     ...
 *   }
 *   static carl_status my_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
 *     carl_route_common_t c;
 *     carl_route_common(r, &c);                                  // k, capacity_factor, score, ...
 *     // selection on s + bias[row(t)], gates from s, capacity, P_e and z statistics for the losses:
 *     return carl_route_topk_biased(r, in, out, bias, nbias_rows, bias_row);
 *   }
 *
 * Contract between the registry and a router's route():
 *   - the registry has already checked in (T >= 1, E >= 1, 1 <= k <= E, logits present), zeroed
 *     out->dlogits (when not NULL) and reset out->nloss/loss_total/dropped/capacity;
 *   - route() fills out->experts/weights, ADDS its own loss gradients to out->dlogits and appends its
 *     losses with carl_route_add_loss(); it reports non-finite logits with CARL_ERR_NUMERIC naming
 *     the token (the scoring helpers here do that);
 *   - after route() the registry adds the common losses (z-loss, Switch aux loss) from out->experts;
 *     when the router used carl_route_select() / carl_route_topk_biased() or carl_route_scores(),
 *     the statistics they left in r->psum / r->zsum (and the loads in r->load) are reused,
 *     otherwise the registry recomputes them from the logits and the experts;
 *   - scratch memory needed only during one route may come from r->scratch (carl_arena_alloc),
 *     which the registry resets before each route.
 * Ownership: nothing here keeps pointers to caller buffers; carl_route_scores writes caller storage.
 */
#ifndef CARL_ROUTER_IMPL_H
#define CARL_ROUTER_IMPL_H

#include <math.h>
#include <string.h>

#include "carl/route.h"
#include "kern/kern.h"

struct carl_select; /* carl_select_t, below */

/* ---- the implementation: one file per router family registers one of these ------------------ */
struct carl_router_impl {
  const char *name;
  const char *help;
  const carl_opt_t *opts; /* router-specific options (the common ones are added by the registry) */
  int nopts;
  carl_status (*init)(carl_router_t *r);   /* validate options, allocate state */
  carl_status (*route)(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out);
  carl_status (*update)(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out); /* may be NULL */
  carl_status (*save)(const carl_router_t *r, const char *path); /* may be NULL: stateless */
  carl_status (*load)(carl_router_t *r, const char *path);
  void (*free)(carl_router_t *r);          /* may be NULL */
  /* May be NULL. The selection route() makes this step, as one descriptor of the fused kernel
   * (carl_route_select below; its arrays in r->scratch, valid until the next route), for
   * executors that run that kernel elsewhere (the GPU path, src/cuda). Reads in's E, topology,
   * placement and step, never T, logits or src: per-token rows follow the descriptor's by_src.
   * CARL_ERR_UNSUPPORTED when this step's selection is not one such call (then call route()). */
  carl_status (*describe)(carl_router_t *r, const carl_route_in_t *in, struct carl_select *sel);
  /* May be NULL. The router's own losses after its selection, from the statistics the selection
   * left (r->psum, r->load); the registry calls it after route(), before the common losses. */
  carl_status (*finish)(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out);
};

struct carl_router {
  const carl_router_impl_t *impl;
  int nopt;
  const carl_opt_t *opt_def[CARL_ROUTER_MAX_OPTS]; /* common options first, then impl->opts */
  double opt[CARL_ROUTER_MAX_OPTS];                /* current values, same order */
  void *state;                   /* owned by the implementation */
  /* Filled by the common machinery during route (below), read by the registry for the common
   * losses; the registry owns psum and load. */
  double *psum;  /* [psum_cap] sum over tokens of p[t, e] in the last route, valid when have_psum */
  int psum_cap;
  int have_psum;
  double zsum;   /* sum over tokens of logsumexp(z_t)^2 in the last route, valid when have_zsum */
  int have_zsum;
  double *load;  /* [psum_cap] kept (token, slot) pairs per expert in the last route, valid when have_load */
  int have_load;
  /* Scratch of the kernels during one route (carl_arena_alloc), reset by the registry before each
   * route and kept between routes, so that repeated routes do not map fresh memory. */
  carl_arena_t scratch;
  /* Set by a router's init to replace the default gate backward (NULL: gates are s at the chosen
   * experts, renormalised when the renorm option is set; carl_route_gate_backward). */
  carl_status (*backward)(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out,
                          const float *dweights /* [T, k] */, float *dlogits /* [T, E] */);
};

/* ---- common options ------------------------------------------------------------------------- */
/* Common options: always the first CARL_NCOMMON entries of r->opt, in this order. */
enum {
  CARL_OPT_K = 0,      /* experts per token */
  CARL_OPT_CF = 1,     /* capacity factor: C = ceil(cf * T * k / E); 0 = dropless */
  CARL_OPT_SCORE = 2,  /* 0 softmax, 1 sigmoid */
  CARL_OPT_RENORM = 3, /* 1: gate weights renormalised over the kept experts of the token */
  CARL_OPT_ZLOSS = 4,  /* router z-loss coefficient */
  CARL_OPT_AUX = 5,    /* Switch/GShard auxiliary loss coefficient */
  CARL_OPT_JITTER = 6, /* std of Gaussian noise added to the logits for selection only (0: off) */
  CARL_NCOMMON = 7
};

typedef struct {
  int k;
  double cf;
  int score;
  int renorm;
  double z_coef;
  double aux_coef;
  double jitter;
} carl_route_common_t;

static inline void carl_route_common(const carl_router_t *r, carl_route_common_t *c) {
  c->k = (int)r->opt[CARL_OPT_K];
  c->cf = r->opt[CARL_OPT_CF];
  c->score = (int)r->opt[CARL_OPT_SCORE];
  c->renorm = (int)r->opt[CARL_OPT_RENORM];
  c->z_coef = r->opt[CARL_OPT_ZLOSS];
  c->aux_coef = r->opt[CARL_OPT_AUX];
  c->jitter = r->opt[CARL_OPT_JITTER];
}

/* ---- options (for a router's init) ----------------------------------------------------------- */
/* Read option `key` as an integer in [lo, hi]; error (naming the router, the key and the range)
 * when it is out of range or not an integer. */
carl_status carl_router_opt_int(const carl_router_t *r, const char *key, int lo, int hi, int *out);
/* Read option `key` as a real in [lo, hi]. */
carl_status carl_router_opt_real(const carl_router_t *r, const char *key, double lo, double hi, double *out);

/* ---- scores ---------------------------------------------------------------------------------- */
/* All rows, OpenMP over tokens. Non-finite logits -> CARL_ERR_NUMERIC naming the first bad token.
 * When r is not NULL also leaves r->psum (sum_t p[t,e], p = s for softmax, s/sum(s) for sigmoid)
 * and r->zsum (sum_t logsumexp^2) for the registry's common losses. */
carl_status carl_route_scores(carl_router_t *r, const float *logits /* [T, E] */, int64_t T, int E, int score,
                              float *s /* [T, E] */);

/* ---- gates, backward ------------------------------------------------------------------------- */
/* dlogits += d(weights)/d(logits)^T dweights for gates w = s[t, e_j] / (renorm ? sum over kept : 1),
 * s = softmax or sigmoid of the logits. Slots with expert -1 carry no gradient. */
carl_status carl_route_gate_backward(const float *logits /* [T, E] */, int64_t T, int E, int k, int score,
                                     int renorm, const int32_t *experts /* [T, k] */,
                                     const float *dweights /* [T, k] */, float *dlogits /* [T, E] */);

/* The fused path of topk-like routers: for each token t, selection on sel = s[t,.] + bias[row, .]
 * (row = bias_row ? bias_row[t] : 0; bias NULL: no bias) plus jitter noise, gate weights from s
 * (renormalised when the renorm option is set), capacity by the sel value of each pair, and the
 * statistics for the common losses. OpenMP over tokens; deterministic for any thread count. */
carl_status carl_route_topk_biased(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out,
                                   const float *bias /* [nrows, E] or NULL */, int nrows,
                                   const int32_t *bias_row /* [T] or NULL */);

/* The general selection of the fused kernel. Per token t, with s = scores of z_t:
 *   sel[e] = (on_logits ? z[t,e] : s[e]) + bias[brow(t), e] + jitter noise     (bias NULL: none)
 *   group-limited (group != NULL and 1 <= M < ngroups): group score of g = sum of the per_group
 *     largest sel over the experts of g, + group_bonus[gbrow(t), g] (group_bonus NULL: none); keep
 *     the M best groups (equal scores: lower group first); S_t = TopK(sel) inside them;
 *   otherwise S_t = TopK(sel). Gates, capacity (by sel) and statistics as carl_route_topk_biased. */
typedef struct carl_select {
  int on_logits;            /* select on z + bias instead of s + bias (sinkhorn: z + log d1) */
  const float *bias;        /* [nrows, E] or NULL */
  int nrows;
  const int32_t *bias_row;  /* [T] or NULL: row 0 */
  const int32_t *group;     /* [E] group of each expert, or NULL */
  int ngroups;
  int M;                    /* groups kept per token */
  int per_group;            /* scores summed per group (>= 1), e.g. k / M */
  const float *group_bonus; /* [nbrows, ngroups] or NULL */
  int nbrows;
  const int32_t *bonus_row; /* [T] or NULL: row 0 */
  int stats;                /* 1: leave the loss statistics (r->psum, r->zsum) even without aux/z losses */
  int gate_order;           /* 1: list a token's slots by gate (descending, equal: lower expert first)
                               instead of by selection value (capacity drops stay in place) */
  int by_src;               /* 1: bias_row[t] is the device of token t (nrows = its device count) and
                               bonus_row[t] is dev_node[bias_row[t]]; an executor that holds src
                               elsewhere (the GPU) computes the rows from its own copy of src */
  const int32_t *dev_node;  /* [nrows] node of each device (with by_src and a group bonus) */
} carl_select_t;
carl_status carl_route_select(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out,
                              const carl_select_t *sel);

/* For executors that run the selection elsewhere (the GPU path, src/cuda), the registry's two
 * halves of carl_router_route around impl->route: prepare resets out's counters and the router's
 * statistics and scratch for E experts; finish runs impl->finish and adds the common losses from
 * the statistics the executor left in r->psum / r->zsum / r->load (have_* set). */
carl_status carl__router_prepare(carl_router_t *r, int E, carl_route_out_t *out);
carl_status carl__router_finish(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out);

/* Append a loss (value already multiplied by its coefficient) to out. */
void carl_route_add_loss(carl_route_out_t *out, const char *name, double value);

/* ---- topology helpers ------------------------------------------------------------------------ */
/* Number of devices of in (1 when there is no topology). */
int carl_route_devices(const carl_route_in_t *in);
/* Device of token t: in->src[t], or t * D / T. */
static inline int32_t carl_route_src(const carl_route_in_t *in, int D, int64_t t) {
  return in->src ? in->src[t] : (int32_t)(t * D / in->T);
}
/* Group of each expert: level 0 = device, 1 = node (of its home replica; contiguous placement
 * e * D / E when in->place is NULL). Fails when the placement's E differs from in->E or a
 * device id is out of range. *ngroups = D or N. */
carl_status carl_route_expert_groups(const carl_route_in_t *in, int level, int32_t *group /* [E] */, int *ngroups);

/* Sinkhorn scalings of C = exp(z) (ALGORITHMS.md 2.3; fp64): repeat d0 = (1/T)/(C d1 + 1e-8),
 * d1 = (1/E)/(C^T d0 + 1e-8) until mean|d1 - d1_old| <= tol or max_iter; plan = diag(d0) C diag(d1).
 * Cbuf: [T, E] scratch (receives C, shifted by a constant when max z > 80). Non-finite z ->
 * CARL_ERR_NUMERIC naming the token. */
carl_status carl_sinkhorn_scalings(const float *z /* [T, E] */, int64_t T, int E, double tol, int max_iter,
                                   double *d0 /* [T] */, double *d1 /* [E] */, float *Cbuf /* [T, E] */,
                                   int *iters, double *err);

/* Build the frequency-balanced table of a `hash` router from token counts: ids in decreasing
 * count (equal counts: lower id first) each go to the currently least-loaded expert (lower index
 * on ties); ids with count 0 or >= V fall back to the random hash. */
carl_status carl_router_hash_build(carl_router_t *r, const int64_t *counts /* [V] */, int64_t V, int E);

/* ---- router state files ---------------------------------------------------------------------- */
/* A small binary file: "CARLRST1", router name (CARL_ROUTER_NAME_MAX = 32 bytes), element type
 * (0 float64, 1 int32), count (int64), then the little-endian values. Written atomically. */
enum { CARL_STATE_F64 = 0, CARL_STATE_I32 = 1 };
carl_status carl_route_state_save(const char *path, const char *router, int type, int64_t n, const void *data);
/* Reads a state written by carl_route_state_save. n >= 0: the count must equal n (else
 * CARL_ERR_STATE naming the file, the expected and the found count). n < 0: any count; the data
 * is malloc'ed into *alloc and the count returned in *nout. */
carl_status carl_route_state_load(const char *path, const char *router, int type, int64_t n, void *data,
                                  void **alloc, int64_t *nout);

#endif
