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
 * Routers are opaque here; a router is written against route/router_impl.h (the implementation
 * table, the router object and the shared machinery; docs/routers.md, "For router writers").
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
/* Most options of one router (common ones included): room enough for carl_router_options. */
#define CARL_ROUTER_MAX_OPTS 64
/* Bytes of a router's name or of one of its option names, NUL included. */
#define CARL_ROUTER_NAME_MAX 32

/* A router: its implementation, options and state (opaque; created by carl_router_create). */
typedef struct carl_router carl_router_t;
/* A registered router implementation (opaque; carl_router_find). */
typedef struct carl_router_impl carl_router_impl_t;

/* ---- the registry ---------------------------------------------------------------------------- */
/* Names of all registered routers, NULL-terminated. */
const char *const *carl_router_names(void);
/* The implementation registered as name; NULL when there is none. */
const carl_router_impl_t *carl_router_find(const char *name);
/* One line of help on router `name`; NULL when there is no such router. */
const char *carl_router_help(const char *name);
/* All options of router `name` (common + specific): writes up to max pointers, returns count or <0. */
int carl_router_options(const char *name, const carl_opt_t **opts, int max);

/* ---- one router ------------------------------------------------------------------------------ */
carl_status carl_router_create(const char *name, int nset, const char *const *keys, const double *vals,
                               carl_router_t **out);
double carl_router_get(const carl_router_t *r, const char *key); /* NaN if unknown */
/* The registry name of r ("topk", "carl", ...). */
const char *carl_router_name(const carl_router_t *r);
/* 1 when r has state that carl_router_save / carl_router_load write and read (bias, duals, tables). */
int carl_router_has_state(const carl_router_t *r);
/* 1 when carl_router_update changes r's state (bias, duals, coefficients); 0: it does nothing. */
int carl_router_updates(const carl_router_t *r);
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
