/* Internal: the MoE feed-forward layer (src/model/moe.c), used by the model, its tests and
 * bench/moe_cpu.
 *
 *   carl__moe_t L = {.d = d, .f = f, .E = E, .k = k, .fs = 0, .router = r};
 *   carl__moe_act_t A = {0};
 *   CARL_TRY(carl__moe_reserve(&L, &A, T));
 *   carl_route_in_t in = {.T = T, .E = E, .x = x, .d = d};    // logits are set by forward
 *   CARL_TRY(carl__moe_forward(&L, &W, &A, &in, x, y));       // y [T, d]
 *   CARL_TRY(carl__moe_backward(&L, &W, &G, &A, &in, x, dy, dx));
 *   carl__moe_act_free(&A);
 *
 * Forward: z = x W_r^T; carl_router_route -> experts [T,k], gates [T,k], router losses and
 * d(losses)/dz; tokens grouped by expert (counting sort, token order kept); per expert
 * H = X_e W13_e^T, A = silu(H_gate) * H_up, Y_e = A W2_e^T (sgemm); y_t = sum_slots g * Y (slot
 * order) + shared expert. Backward mirrors it; d(gates) goes through carl_router_backward and
 * is added to the router-loss gradient of z. No atomics: every sum has a fixed order.
 */
#ifndef CARL_MODEL_MOE_H
#define CARL_MODEL_MOE_H

#include "carl/nn.h"
#include "carl/route.h"

typedef struct {
  int d, f, E, k; /* width, expert hidden width, experts, experts per token */
  int fs;         /* shared expert hidden width, 0: none */
  carl_router_t *router; /* borrowed */
} carl__moe_t;

/* Weights (or their gradients, same shapes). */
typedef struct {
  float *router; /* [E, d] */
  float *w13;    /* [E, 2f, d] */
  float *w2;     /* [E, d, f] */
  float *sw13;   /* [2fs, d] or NULL */
  float *sw2;    /* [d, fs] or NULL */
} carl__moe_w_t;

/* Activations of one forward, kept for backward (owned; sized by carl__moe_reserve). */
typedef struct {
  int64_t cap;       /* tokens reserved */
  int64_t T;         /* tokens of the last forward */
  float *logits;     /* [T, E] */
  float *dlogits;    /* [T, E] router-loss gradient from route, then the full gradient in backward */
  int32_t *experts;  /* [T, k] */
  float *weights;    /* [T, k] */
  float *dweights;   /* [T, k] */
  int64_t *load;     /* [E] assignments per expert */
  int64_t *off;      /* [E+1] start of each expert's rows in the grouped arrays */
  int32_t *row_tok;  /* [T*k] token of each grouped row */
  int32_t *slot_row; /* [T*k] grouped row of (t, slot), -1 when dropped */
  float *xg;         /* [T*k, d] gathered inputs */
  float *h;          /* [T*k, 2f] */
  float *a;          /* [T*k, f] */
  float *ye;         /* [T*k, d] expert outputs (unweighted) */
  float *dye;        /* [T*k, d] scratch: d(Y_e), then d(X_e) */
  float *dh;         /* [T*k, 2f] */
  float *da;         /* [T*k, f] */
  float *sh_h;       /* [T, 2fs] */
  float *sh_a;       /* [T, fs] */
  float *sh_dh;      /* [T, 2fs] */
  float *sh_da;      /* [T, fs] */
  carl_route_out_t out;
} carl__moe_act_t;

carl_status carl__moe_reserve(const carl__moe_t *L, carl__moe_act_t *A, int64_t T);
void carl__moe_act_free(carl__moe_act_t *A);

/* x [T, d] -> y [T, d] (overwritten). in: T, E, x, d, and the optional fields (src, token_ids,
 * topo, place, step, seed) set by the caller; logits are filled here. */
carl_status carl__moe_forward(const carl__moe_t *L, const carl__moe_w_t *W, carl__moe_act_t *A, carl_route_in_t *in,
                              const float *x, float *y);
/* dy [T, d] -> dx [T, d] (overwritten); weight gradients G += . Uses the last forward's A. */
carl_status carl__moe_backward(const carl__moe_t *L, const carl__moe_w_t *W, const carl__moe_w_t *G,
                               carl__moe_act_t *A, const carl_route_in_t *in, const float *x, const float *dy,
                               float *dx);

#endif
