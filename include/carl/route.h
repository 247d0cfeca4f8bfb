/* carl/route.h: the one routing interface and the router registry (ALGORITHMS.md section 2).
 *
 * Usage:
 *   const char *keys[] = {"k", "capacity_factor"}; double vals[] = {2, 1.25};
 *   carl_router_t *r;
 *   CARL_TRY(carl_router_create("topk", 2, keys, vals, &r));   // unknown key -> error naming it
 *   carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = src, .topo = &topo, .place = &pl};
 *   carl_route_out_t out = {.experts = ex, .weights = w, .dlogits = dz};   // caller storage
 *   CARL_TRY(carl_router_route(r, &in, &out));     // decisions with the current state
 *   CARL_TRY(carl_router_update(r, &in, &out));    // then stateful routers update (bias, duals, ...)
 *   carl_router_free(r);
 *
 * Order of the k slots: the router's selection order (compare chosen sets as sets).
 * Every router sees the same inputs and fills the same outputs, so the simulator, the trainer and
 * the executors call one decision path. Options are named numbers (ints and enums as doubles);
 * carl_router_options() lists them with defaults and help, for --help and configs.
 * Ownership: the router owns its state; in/out buffers belong to the caller.
 */
#ifndef CARL_ROUTE_H
#define CARL_ROUTE_H

#include "carl/topo.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t T;                     /* tokens in the step */
  int E;                         /* experts */
  const float *logits;           /* [T, E] router logits z */
  const int32_t *src;            /* [T] device holding each token; NULL: token t on device t*D/T */
  const int32_t *token_ids;      /* [T] vocabulary ids (hash router); NULL if unknown */
  const float *x;                /* [T, d] router inputs (locmoe bound, GrAP); NULL if unknown */
  int d;                         /* width of x */
  const carl_topo_t *topo;       /* NULL: one device */
  const carl_placement_t *place; /* NULL: contiguous placement over topo's devices */
  int64_t step;                  /* training step (warm start, schedules, jitter stream) */
  uint64_t seed;                 /* for jitter and random tables */
} carl_route_in_t;

#define CARL_MAX_LOSSES 8
typedef struct {
  const char *name; /* "aux", "z", "L_E", "L_G", "loc", ... */
  double value;     /* coefficient already applied */
} carl_loss_t;

typedef struct {
  int32_t *experts; /* [T, k] chosen experts (selection order), -1 where dropped (caller storage) */
  float *weights;   /* [T, k] gate weights, 0 where dropped (caller storage) */
  float *dlogits;   /* [T, E] d(sum of losses)/d(logits), overwritten; NULL: not computed */
  int nloss;
  carl_loss_t loss[CARL_MAX_LOSSES];
  double loss_total;
  int64_t dropped;  /* (token, slot) pairs dropped by capacity */
  int64_t capacity; /* per-expert capacity used this step (0: dropless) */
  const double *global_load; /* [E] kept (token, slot) pairs per expert over every process, set by
                                the step before update (NULL: update counts `experts`) */
} carl_route_out_t;

typedef struct {
  const char *name;
  double def;
  const char *help;
} carl_opt_t;

typedef struct carl_router carl_router_t;
struct carl_select; /* carl_select_t, carl/route_util.h */

/* ---- implementation side: one file per router family registers one of these ----------------- */
typedef struct {
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
   * (carl_route_select, carl/route_util.h; its arrays in r->scratch, valid until the next route),
   * for executors that run that kernel elsewhere (the GPU path, src/cuda). Reads in's E, topology,
   * placement and step, never T, logits or src: per-token rows follow the descriptor's by_src.
   * CARL_ERR_UNSUPPORTED when this step's selection is not one such call (then call route()). */
  carl_status (*describe)(carl_router_t *r, const carl_route_in_t *in, struct carl_select *sel);
  /* May be NULL. The router's own losses after its selection, from the statistics the selection
   * left (r->psum, r->load); the registry calls it after route(), before the common losses. */
  carl_status (*finish)(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out);
} carl_router_impl_t;

struct carl_router {
  const carl_router_impl_t *impl;
  int nopt;
  const carl_opt_t *opt_def[64]; /* common options first, then impl->opts */
  double opt[64];                /* current values, same order */
  void *state;                   /* owned by the implementation */
  /* Filled by the common kernels during route (carl/route_util.h), read by the registry for the
   * common losses; the registry owns psum. */
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

/* ---- user side ------------------------------------------------------------------------------- */
/* Names of all registered routers, NULL-terminated. */
const char *const *carl_router_names(void);
const carl_router_impl_t *carl_router_find(const char *name);
/* All options of router `name` (common + specific): writes up to max pointers, returns count or <0. */
int carl_router_options(const char *name, const carl_opt_t **opts, int max);

carl_status carl_router_create(const char *name, int nset, const char *const *keys, const double *vals,
                               carl_router_t **out);
double carl_router_get(const carl_router_t *r, const char *key); /* NaN if unknown */
carl_status carl_router_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out);
carl_status carl_router_update(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out);
/* Gradient through the gate weights: dlogits += d(weights)/d(logits)^T dweights. */
carl_status carl_router_backward(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out,
                                 const float *dweights /* [T, k] */, float *dlogits /* [T, E] */);
carl_status carl_router_save(const carl_router_t *r, const char *path);
carl_status carl_router_load(carl_router_t *r, const char *path);
void carl_router_free(carl_router_t *r);

#ifdef __cplusplus
}
#endif
#endif
