/* Internal: the function table behind carl_exec_t (carl/exec.h). An executor is one file (or one
 * folder: mpi/, cuda/, nccl/) that fills a table and a create function. */
#ifndef CARL_EXEC_IMPL_H
#define CARL_EXEC_IMPL_H

#include "carl/exec.h"

typedef struct {
  const char *name;
  int moves_data;
  carl_status (*dispatch)(carl_exec_t *ex, const carl_plan_t *plan, const float *x, int d, float *xc);
  carl_status (*combine)(carl_exec_t *ex, const carl_plan_t *plan, float *yc, int d, float *y);
  carl_status (*allreduce)(carl_exec_t *ex, double *v, int64_t n);
  carl_status (*migrate)(carl_exec_t *ex, const carl_placement_t *old, const carl_migration_t *m,
                         const carl_exec_tensor_t *tensors, int n);
  void (*free)(carl_exec_t *ex); /* may be NULL */
  /* one process (rank 0 of 1) when NULL: allgather copies nothing, allreduce_f is the identity */
  carl_status (*allgather)(carl_exec_t *ex, void *all, size_t bytes_each);
  carl_status (*allreduce_f)(carl_exec_t *ex, float *v, int64_t n);
} carl__exec_ops_t;

struct carl_exec {
  const carl__exec_ops_t *ops;
  double migrated_bytes;
  int rank, size; /* this process among the executor's processes (0 of 1 unless set by create) */
  void *state; /* owned by the executor */
};

carl_status carl__exec_new(const carl__exec_ops_t *ops, carl_exec_t **out);

/* One hop of a plan between rank r and each of its peers (src/exec/hop.c), in the plan's copy
 * index space: o is send_off with base 0 (the first hop) or fwd_off with base n_send (the
 * forwarded copies). Dispatch: rank r hands the peer b its copies r -> b, copies
 * [send_at, send_at + send_n), and receives b's copies b -> r at [recv_at, recv_at + recv_n);
 * combine is the mirror (the copies r received from b go back to b, r's own come back). Both
 * ends address the same copy indices: r's send_at for b is b's recv_at for r. The self pair
 * (b == r) is listed too; it stays in place (no transfer), and its copies count as the cost
 * model counts self traffic. What an executor hands its transport per peer is exactly this. */
typedef struct {
  int64_t send_at, send_n; /* copies handed to the peer */
  int64_t recv_at, recv_n; /* copies the peer hands to r */
} carl__hop_t;

/* out[i] for the peer of world rank peer[i], i < n. */
void carl__hop_peers(const carl_plan_t *p, const int64_t *o, int64_t base, int combine, int r, const int *peer, int n,
                     carl__hop_t *out);
/* The copy counts the peers announced (announced[i]: what peer[i] says it hands r in this hop)
 * against r's plan: CARL_ERR_STATE naming the first peer whose count differs (the ranks hold
 * different plans). who names the executor in the message. */
carl_status carl__hop_check(const char *who, int r, const int *peer, int n, const int *announced, const carl__hop_t *h);

#endif
