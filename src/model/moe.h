/* Internal: the MoE feed-forward layer (src/model/moe.c), used by the model, its tests and
 * bench/moe_cpu.
 *
 *   carl__moe_t L = {.d = d, .f = f, .E = E, .k = k, .fs = 0, .router = r,
 *                    .step = st, .layer = l};   // st: the step (carl/step.h), local executor
 *   // or, for one layer on its own: carl_topo_t t; carl_exec_t *ex;
 *   //   CARL_TRY(carl__moe_standalone(&L, &t, &ex)); ... carl__moe_standalone_free(&L, ex);
 *   carl__moe_act_t A = {0};
 *   carl_route_in_t in = {.T = T, .E = E};                    // logits are set by forward
 *   CARL_TRY(carl__moe_forward(&L, &W, &A, &in, x, y));       // y [T, d]
 *   CARL_TRY(carl__moe_backward(&L, &W, &G, &A, &in, x, dy, dx));
 *   carl__moe_act_free(&A);
 *
 * Forward: z = x W_r^T; carl_step_route (the router, then the dispatch plan on the layer's
 * placement) -> experts [T,k], gates [T,k], router losses and d(losses)/dz; the executor
 * dispatches one copy per (token, destination device) (carl_exec_dispatch); the rows of each
 * (device, slot) -- one per kept (token, slot), token order -- run that slot's SwiGLU expert
 * H = X W13_g^T, A = silu(H_gate) * H_up, Y = A W2_g^T (sgemm; g = device * S + slot: the expert
 * weights are stored per physical slot); each copy sums gate x Y over its rows (ascending slot)
 * and the executor combines the copies into y (carl_exec_combine) after the shared expert.
 * Backward mirrors it through carl_exec_combine_backward / carl_exec_dispatch_backward;
 * d(gates) goes through carl_router_backward and is added to the router-loss gradient of z.
 * No atomics: every sum has a fixed order.
 */
#ifndef CARL_MODEL_MOE_H
#define CARL_MODEL_MOE_H

#include "carl/nn.h"
#include "carl/route.h"
#include "carl/step.h"

typedef struct {
  int d, f, E, k; /* width, expert hidden width, experts, experts per token */
  int fs;         /* shared expert hidden width, 0: none */
  carl_router_t *router; /* borrowed: the router of this layer in the step */
  carl_step_t *step;     /* borrowed: routes, plans and runs the executor */
  int layer;             /* layer index in the step */
} carl__moe_t;

/* Weights (or their gradients, same shapes). */
typedef struct {
  float *router; /* [E, d] */
  float *w13;    /* [P, 2f, d] per physical slot g = device * S + slot (P = D * S), or the
                    process's own slots only: row g - slot0 is slot g */
  float *w2;     /* [P, d, f] (or own slots, as w13) */
  float *sw13;   /* [2fs, d] or NULL */
  float *sw2;    /* [d, fs] or NULL */
  int64_t slot0; /* physical slot of the first row of w13 and w2: 0, or r S when only rank r's
                    own slots are stored (expert-parallel storage) */
} carl__moe_w_t;

/* Activations of one forward, kept for backward (owned; grown as needed). */
typedef struct {
  int64_t cap_t, cap_c, cap_r; /* tokens, copies, rows reserved */
  int64_t T;         /* tokens of the last forward (all ranks' with the mpi executor) */
  int64_t Tl, t0;    /* this rank's tokens [t0, t0 + Tl) of T (one process: 0 and T) */
  float *xall;       /* [T, d] every rank's router inputs (mpi executor only) */
  int32_t *tokall;   /* [T] every rank's token ids (mpi executor only) */
  float *logits;     /* [T, E] */
  float *dlogits;    /* [T, E] router-loss gradient from route, then the full gradient in backward */
  int32_t *experts;  /* [T, k] */
  float *weights;    /* [T, k] */
  float *dweights;   /* [T, k] */
  int64_t *load;     /* [E] kept (token, slot) pairs per expert */
  float *xc;         /* [copies, d] dispatched copies, then d(copies) in backward */
  float *yc;         /* [copies, d] combined expert outputs per copy, then d(copy outputs) */
  float *xg;         /* [R, d] rows' inputs (R = kept (token, slot) pairs) */
  float *h;          /* [R, 2f] */
  float *a;          /* [R, f] */
  float *ye;         /* [R, d] expert outputs (unweighted) */
  float *dye;        /* [R, d] scratch: d(Y), then d(X) */
  float *dh;         /* [R, 2f] */
  float *da;         /* [R, f] */
  float *sh_h;       /* [T, 2fs] */
  float *sh_a;       /* [T, fs] */
  float *sh_dh;      /* [T, 2fs] */
  float *sh_da;      /* [T, fs] */
  carl_route_out_t out;
} carl__moe_act_t;

/* Token-sized buffers for T tokens (the copy- and row-sized ones grow in forward). */
carl_status carl__moe_reserve(const carl__moe_t *L, carl__moe_act_t *A, int64_t T);
void carl__moe_act_free(carl__moe_act_t *A);

/* x [T, d] -> y [T, d] (overwritten). in: T and the optional fields (src, token_ids, step, seed)
 * set by the caller; logits, x, d, topo and place are filled here. */
carl_status carl__moe_forward(const carl__moe_t *L, const carl__moe_w_t *W, carl__moe_act_t *A, carl_route_in_t *in,
                              const float *x, float *y);
/* dy [T, d] -> dx [T, d] (overwritten); weight gradients G += . Uses the last forward's A. */
carl_status carl__moe_backward(const carl__moe_t *L, const carl__moe_w_t *W, const carl__moe_w_t *G,
                               carl__moe_act_t *A, const carl_route_in_t *in, const float *x, const float *dy,
                               float *dx);

/* One layer on its own (tests, benchmarks): a one-device step with the local executor for L
 * (sets L->step, L->layer = 0; topo is the caller's storage and must outlive the step). */
carl_status carl__moe_standalone(carl__moe_t *L, carl_topo_t *topo, carl_exec_t **ex);
void carl__moe_standalone_free(carl__moe_t *L, carl_exec_t *ex);

#endif
