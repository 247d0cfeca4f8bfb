/* carl/plan.h: the dispatch plan and the transparent communication model (ALGORITHMS.md section 1).
 *
 * Usage:
 *   carl_plan_t plan = {0};
 *   CARL_TRY(carl_plan_build(&topo, &place, experts, src, T, k, CARL_PLAN_FLAT, -1, CARL_PLAN_ROWS, &plan));
 *   carl_cost_t cost;
 *   CARL_TRY(carl_cost_init(&cost, &topo));
 *   CARL_TRY(carl_plan_cost(&topo, &plan, token_bytes, &cost));
 *   printf("inter-node bytes %.0f, all-to-all %.3f ms\n", cost.bytes[CARL_LINK_INTER], cost.a2a_s * 1e3);
 *   // an executor (carl/exec.h) runs the plan: dispatch, expert compute on the rows, combine
 *   carl_cost_free(&cost);
 *   carl_plan_free(&plan);
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
 *
 * The plan (carl_plan_t): hop counts [D, D] of every source (what the cost prices) and, with
 * CARL_PLAN_ROWS, what an executor needs to move the data:
 *   copies   one per (token, destination device) in flat mode. In hierarchical mode the first hop
 *            carries one copy per (token, own-node destination device) and one per (token,
 *            destination node), the latter to the forwarder (same local index on that node);
 *            the second hop repeats a forwarder's copy to the node's other destination devices.
 *            Copy index space: first-hop copies 0 .. n_send-1 grouped by (source, destination)
 *            pair, token order inside a pair; forwarded copies n_send .. n_send+n_fwd-1 grouped by
 *            (forwarder, destination) pair.
 *   rows     the receive layout: one row per kept (token, slot) on the device of its expert's
 *            replica, grouped by (device, local slot of the placement), in (token, slot) order
 *            inside a group; each row names the copy it reads and the routing slot (t*k + s) whose
 *            gate it carries.
 * A plan for one device (device >= 0) keeps the copies of pairs that device sends or receives and
 * the rows of that device; the hop counts always cover every source.
 * Ownership: carl_cost_t and carl_plan_t own their arrays (init/free); the functions only read
 * their other inputs. A carl_plan_t given to carl_plan_build must be zeroed or a built plan
 * (its arrays are reused or replaced).
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

typedef enum { CARL_PLAN_COUNTS = 0, CARL_PLAN_ROWS = 1 } carl_plan_detail;

typedef struct {
  int D, E, k;            /* devices, experts, slots per token */
  int S;                  /* slots per device of the placement (local slot index range) */
  int dpn;                /* devices per node of the topology (device b is on node b / dpn) */
  int64_t T;              /* tokens */
  carl_plan_mode mode;
  int device;             /* -1: every device; else the device this plan is for */
  int has_rows;           /* the row lists below are filled (CARL_PLAN_ROWS) */
  int64_t *hop;           /* [D, D] copies per hop a -> b, all sources (flat: a -> b; hierarchical:
                             a -> own-node b, a -> forwarder, forwarder -> b) */
  int64_t copies;         /* (token, destination device) pairs of all sources, both modes */
  /* rows (CARL_PLAN_ROWS) */
  int64_t n_send;         /* first-hop copies */
  int64_t *send_off;      /* [D*D + 1] first-hop copies a -> b: send_tok[send_off[a*D+b] .. send_off[a*D+b+1]) */
  int32_t *send_tok;      /* [n_send] token of each first-hop copy */
  int64_t n_fwd;          /* forwarded copies (hierarchical; 0 in flat mode) */
  int64_t *fwd_off;       /* [D*D + 1] forwarded copies f -> b: n_send + fwd_off[f*D+b] .. */
  int64_t *fwd_parent;    /* [n_fwd] first-hop copy each forwarded copy repeats (-1: not in this
                             device's plan) */
  int64_t *tok_off;       /* [T + 1] first-hop copies of token t: tok_copy[tok_off[t] .. tok_off[t+1]) */
  int64_t *tok_copy;      /* [n_send] ascending destination device */
  int64_t n_rows;
  int64_t *recv_off;      /* [D*S + 1] rows of slot j on device b: [recv_off[b*S+j], recv_off[b*S+j+1]) */
  int64_t *row_copy;      /* [n_rows] copy each row reads */
  int32_t *row_slot;      /* [n_rows] routing slot t*k + s whose gate the row carries */
  int64_t *copy_row_off;  /* [n_send + n_fwd + 1] rows fed by copy c: copy_row[copy_row_off[c] ..] */
  int64_t *copy_row;      /* [n_rows] ascending slot */
  int64_t cap_[8];        /* capacities of the arrays above (internal) */
} carl_plan_t;

/* Build the plan of one routing decision (token t's slot s on the nearest replica of
 * experts[t*k+s]). device: -1 for all devices, else the device whose sends, receives and rows are
 * kept. detail: CARL_PLAN_COUNTS fills hop and copies only (what the cost needs; the fast kernel),
 * CARL_PLAN_ROWS also the row lists. src may be NULL: token t on device t * D / T.
 * Errors (plan left empty but valid to free): expert ids outside [-1, E), src outside [0, D),
 * k < 1, a placement whose device count differs from the topology's, device outside [-1, D).
 * Uses OpenMP threads for the counts; the result does not depend on their number. */
carl_status carl_plan_build(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                            const int32_t *src, int64_t T, int k, carl_plan_mode mode, int device,
                            carl_plan_detail detail, carl_plan_t *plan);
void carl_plan_free(carl_plan_t *plan);

/* Accumulate the traffic of one all-to-all (dispatch + combine) of the plan into c, each copy
 * token_bytes long (call carl_cost_reset first for a fresh step; several calls, e.g. one per MoE
 * layer, add up, a2a_s included). Errors (c unchanged): token_bytes 0, a plan or accumulator for
 * another device count. */
carl_status carl_plan_cost(const carl_topo_t *t, const carl_plan_t *plan, size_t token_bytes, carl_cost_t *c);

/* The wall time of one dispatch + combine of the plan through the mpi executor (carl/exec.h,
 * docs/cost-model.md "The mpi executor's time"): carl_plan_cost's terms plus what the executor
 * adds around the copies. Per phase (dispatch, then combine, its mirror):
 *   counts  each exchange first sends the copy counts to every peer of its communicator
 *           (MPI_Alltoall, one int each, empty pairs included): per device the sum over those
 *           peers of ctl_latency_us of the pair's class; the max over devices. Flat: one exchange
 *           over all ranks. Hierarchical: three (inter-node communicator: the devices of the same
 *           local index; node communicator: twice).
 *   data    per device max(send, recv) of sum over classes of bytes / GBps + messages x latency
 *           (one message per peer with copies), self copies at self_GBps (0: free); the max over
 *           devices. Hierarchical: the inter-node hop and the node's hops are exchanges one after
 *           the other, each its own max over devices (the direct and forwarded node copies priced
 *           as one exchange).
 * total = 2 (counts + data). Errors: as carl_plan_cost, a negative latency or rate. */
typedef struct {
  double ctl_latency_us[CARL_NLINK]; /* one small message per link class (8-byte ping-pong) */
  double self_GBps;                 /* memcpy rate of a self copy, 1e9 bytes/s; 0: free */
} carl_mpi_cost_opts_t;

typedef struct {
  double counts_s; /* the count exchanges, both phases */
  double data_s;   /* the copies, both phases */
  double total_s;  /* counts_s + data_s */
} carl_mpi_time_t;

carl_status carl_plan_time_mpi(const carl_topo_t *t, const carl_plan_t *plan, size_t token_bytes,
                               const carl_mpi_cost_opts_t *o, carl_mpi_time_t *out);

/* The cost of a decision in one call: carl_plan_build (counts, all devices) + carl_plan_cost.
 * On error c is unchanged. */
carl_status carl_plan_cost_decision(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                                    const int32_t *src, int64_t T, int k, size_t token_bytes, carl_plan_mode mode,
                                    carl_cost_t *c);

/* Device that serves expert e for a token on device a: the nearest replica (self, then intra,
 * rack, inter); among equally near replicas the choice is spread by token index. */
int carl_plan_replica(const carl_topo_t *t, const carl_placement_t *p, int e, int a, int64_t token);

#ifdef __cplusplus
}
#endif
#endif
