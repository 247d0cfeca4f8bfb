/* carl/plan.h: dispatch plan and the transparent communication model (ALGORITHMS.md section 1).
 *
 * Usage:
 *   carl_cost_t cost;
 *   CARL_TRY(carl_cost_init(&cost, &topo));
 *   CARL_TRY(carl_plan_cost(&topo, &place, experts, src, T, k, token_bytes, CARL_PLAN_FLAT, &cost));
 *   printf("inter-node bytes %.0f, all-to-all %.3f ms\n", cost.bytes[CARL_LINK_INTER], cost.a2a_s * 1e3);
 *   carl_cost_free(&cost);
 *
 * experts: [T, k] int32 expert ids, -1 = dropped (no copy). src: [T] device of each token.
 * A token sends one copy of its hidden vector (token_bytes) per distinct destination device
 * (flat), or per distinct destination node over `inter` then per device over `intra` inside the
 * node (hierarchical). Combine mirrors dispatch; the totals count dispatch + combine.
 * Hierarchical forwarding (DeepEP style): the inter-node copy goes to the device with the same
 * local index on the destination node, which forwards it over `intra` to the other destination
 * devices of that node. Messages: one per (source, destination) device pair with traffic, per
 * phase. Time of a phase = max over devices of max(send, recv) of sum over classes of
 * bytes / B + messages * latency; one call = dispatch phase + combine phase (a2a_s adds both).
 * Replicas: the nearest replica by link class; ties spread by token index (carl_plan_replica).
 * Full definitions: docs/cost-model.md.
 * Ownership: carl_cost_t owns its arrays (init/free); the plan functions only read their inputs.
 */
#ifndef CARL_PLAN_H
#define CARL_PLAN_H

#include "carl/topo.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CARL_PLAN_FLAT = 0, CARL_PLAN_HIER = 1 } carl_plan_mode;

typedef struct {
  int D;
  double *send_bytes; /* [D, CARL_NLINK] dispatch + combine, per device and link class */
  double *recv_bytes; /* [D, CARL_NLINK] */
  int64_t *send_msgs; /* [D, CARL_NLINK] messages (one per peer with traffic, per phase) */
  int64_t *recv_msgs; /* [D, CARL_NLINK] */
  double *traffic;    /* [D, D] bytes device a -> device b (dispatch + combine) */
  double bytes[CARL_NLINK]; /* totals per link class */
  double inter_fraction;    /* (rack + inter) bytes / all non-self bytes; 0 when none */
  double a2a_s;             /* all-to-all time, ALGORITHMS.md section 1: the sum over calls of
                               (dispatch phase time + combine phase time) */
  int64_t copies;           /* token copies dispatched (non-self and self): (token, destination
                               device) pairs, the same in both modes */
  double *dispatch;         /* [D, D] dispatch-phase bytes a -> b of the most recent call, per hop
                               (the combine phase is its transpose) */
  int64_t calls;            /* carl_plan_cost calls accumulated since init/reset */
} carl_cost_t;

carl_status carl_cost_init(carl_cost_t *c, const carl_topo_t *t);
void carl_cost_reset(carl_cost_t *c);
void carl_cost_free(carl_cost_t *c);

/* Accumulate the traffic of one all-to-all (dispatch + combine) into c (call carl_cost_reset
 * first for a fresh step; several calls, e.g. one per MoE layer, add up, a2a_s included).
 * src may be NULL: then token t lives on device t * D / T (tokens spread evenly).
 * Errors (c unchanged): expert ids outside [-1, E), src outside [0, D), k < 1, token_bytes 0,
 * a placement whose device count differs from the topology's. Uses OpenMP threads; the result
 * does not depend on their number. */
carl_status carl_plan_cost(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                           const int32_t *src, int64_t T, int k, size_t token_bytes, carl_plan_mode mode,
                           carl_cost_t *c);

/* Device that serves expert e for a token on device a: the nearest replica (self, then intra,
 * rack, inter); among equally near replicas the choice is spread by token index. */
int carl_plan_replica(const carl_topo_t *t, const carl_placement_t *p, int e, int a, int64_t token);

#ifdef __cplusplus
}
#endif
#endif
