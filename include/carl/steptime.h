/* carl/steptime.h: the time of one MoE layer: dispatch + expert compute + combine, the step
 * waiting for the slowest device, with or without overlap of communication and compute
 * (docs/cost-model.md, "Step time").
 *
 * Usage (after pricing the layer's plan with carl_plan_cost or carl_plan_cost_decision):
 *   carl_steptime_opts_t o;
 *   carl_steptime_opts_default(&o);
 *   o.d = 7168; o.f = 2048; o.f_shared = 2048;           // DeepSeek-V3 dimensions
 *   o.overlap = CARL_OVERLAP_PIPELINE; o.chunks = 2;     // two-batch overlap
 *   carl_steptime_t st;
 *   CARL_TRY(carl_steptime_decision(&topo, &place, experts, src, T, k, &cost, &o, &st));
 *   // or in two calls: carl_steptime_load (rows and tokens per device), carl_steptime_layer
 *   printf("layer %.3f ms, of which compute %.3f ms (device %d)\n", st.layer_s * 1e3, st.compute_s * 1e3,
 *          st.straggler);
 *
 * Model, per MoE layer and pass (forward; with backward also the backward pass):
 *   A = dispatch phase time of the cost model (per device max(send, recv) of sum over classes of
 *       bytes / B + messages * latency, max over devices), B = combine phase time (the mirror);
 *   C = max over devices b of (rows_b * F_row + tokens_b * F_shared) / flops_b, the straggler;
 *       F_row = 6 d f FLOPs forward (SwiGLU: three d x f matrices, 2 FLOPs per multiply-add),
 *       12 d f backward; F_shared the same with f_shared, for the tokens that live on b;
 *   none:      T = A + C + B;
 *   pipelined: n chunks (Tutel's a2a_ffn_overlap_degree; n = 2 is DeepEP's two-batch overlap),
 *       a_n, b_n the phase times of 1/n of the bytes (the messages, hence the latency, stay),
 *       c_n = C / n:  T = (a_n + c_n + b_n) + (n - 1) * max(a_n + b_n, c_n)
 *       (one chunk through dispatch, compute and combine, then the busier of the communication
 *       and compute streams for the other n - 1 chunks; n = 1 is `none`).
 *   The backward pass moves the same bytes (the gradients of combine, then of dispatch) and
 *   computes twice the FLOPs. A layer's time is the sum of its passes.
 * Ownership: the functions only read their inputs and write the caller's struct/arrays.
 */
#ifndef CARL_STEPTIME_H
#define CARL_STEPTIME_H

#include "carl/plan.h"
#include "carl/topo.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CARL_OVERLAP_NONE = 0, CARL_OVERLAP_PIPELINE = 1 } carl_overlap;

typedef struct {
  int64_t d;            /* model width (hidden size), >= 1 */
  int64_t f;            /* width of one routed expert's FFN, >= 1 */
  int64_t f_shared;     /* total FFN width of the shared experts, 0: none */
  int backward;         /* 1: a training step (forward + backward); 0: forward only */
  carl_overlap overlap; /* none or pipelined */
  int chunks;           /* pipelined: chunks n in [1, 4096] */
  const double *flops;  /* [D] FLOP/s of each device; NULL: topo->flops for every device */
} carl_steptime_opts_t;

/* Defaults: d = f = 0 (must be set), no shared experts, backward 1, overlap none, chunks 2. */
void carl_steptime_opts_default(carl_steptime_opts_t *o);

typedef struct {
  double dispatch_s;     /* one dispatch phase, A */
  double combine_s;      /* one combine phase, B */
  double comm_s;         /* every phase of the layer's passes: (A + B) x passes */
  double compute_s;      /* sum over passes of the slowest device's compute (C) */
  double compute_mean_s; /* the same with the mean over devices instead of the max */
  int straggler;         /* the slowest device (lowest index among equals) */
  int64_t rows_max;      /* expert rows of the device with the most rows */
  double serial_s;       /* layer time without overlap: comm_s + compute_s */
  double pipelined_s;    /* layer time with opts.chunks chunks pipelined */
  double layer_s;        /* serial_s or pipelined_s, by opts.overlap */
} carl_steptime_t;

/* Expert rows per device: rows[b] = kept (token, slot) pairs whose expert is served on b by the
 * plan's replica rule (carl_plan_replica); tokens[a] = tokens whose source is a. src may be NULL
 * (token t on device t * D / T). tokens may be NULL. Errors: expert ids outside [-1, E), src
 * outside [0, D), a placement for another device count, k < 1. */
carl_status carl_steptime_load(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts /* [T, k] */,
                               const int32_t *src /* [T] */, int64_t T, int k, int64_t *rows /* [D] */,
                               int64_t *tokens /* [D] */);

/* The layer time from the dispatch bytes of one call (carl_cost_t.dispatch: bytes a -> b per hop,
 * the combine phase is its transpose), the rows per device and the tokens per device (for the
 * shared experts; may be NULL when f_shared = 0). Errors: d or f < 1, f_shared < 0, chunks
 * outside [1, 4096], a device rate that is not > 0 (topo->flops = 0: the topology file has no
 * "flops"), negative rows or bytes. */
carl_status carl_steptime_layer(const carl_topo_t *t, const double *dispatch /* [D, D] */, const int64_t *rows /* [D] */,
                                const int64_t *tokens /* [D] */, const carl_steptime_opts_t *o, carl_steptime_t *out);

/* Both in one call for one routing decision priced into c (carl_plan_cost_decision, or the layer's
 * cost of a carl_step_t): carl_steptime_load, then carl_steptime_layer on c->dispatch.
 * c must hold the most recent plan of this decision (its dispatch matrix is read). */
carl_status carl_steptime_decision(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts /* [T, k] */,
                                   const int32_t *src /* [T] */, int64_t T, int k, const carl_cost_t *c,
                                   const carl_steptime_opts_t *o, carl_steptime_t *out);

/* Time of one all-to-all phase whose bytes a -> b are scale * bytes[a * D + b] (the cost model's
 * phase time; messages: one per pair with bytes > 0). */
double carl_steptime_phase(const carl_topo_t *t, const double *bytes /* [D, D] */, double scale);

#ifdef __cplusplus
}
#endif
#endif
