/* carl/exec.h: executors run a dispatch plan (carl/plan.h): they move the rows of a step between
 * devices and reduce them back, all-reduce statistics, and migrate expert tensors.
 *
 * Usage:
 *   carl_exec_t *ex;
 *   CARL_TRY(carl_exec_local_create(&ex));                  // or carl_exec_sim_create
 *   CARL_TRY(carl_exec_dispatch(ex, &plan, x, d, xc));      // x [T, d] -> xc [n_send + n_fwd, d]
 *   // ... experts on the rows of each device (rows read xc[plan.row_copy[r]]) -> yc per copy
 *   CARL_TRY(carl_exec_combine(ex, &plan, yc, d, y));       // y [T, d] += sum over t's copies
 *   CARL_TRY(carl_exec_allreduce(ex, load, E));             // sum over processes (identity here)
 *   carl_exec_free(ex);
 *
 * Semantics (every executor; the local one is their reference):
 *   dispatch       xc[c] = x[send_tok[c]] for first-hop copies, xc[n_send + i] = xc[fwd_parent[i]]
 *                  for forwarded ones (the second hop runs after the first).
 *   combine        the mirror: each forwarded copy is added into its parent (second hop back,
 *                  ascending forwarded index), then y[t] += xc[c] over t's first-hop copies in
 *                  ascending destination device (tok_copy). yc is used as scratch (its parents
 *                  receive the forwarded partial sums).
 *   dispatch_backward = combine of the gradients of the copies; combine_backward = dispatch of the
 *                  gradient of y. The functions of that name are these calls, kept so that a caller
 *                  reads as the math does.
 *   allreduce      v[i] = sum over processes of v[i] (one process: unchanged).
 *   migrate        for each move of m, copy the slot of the move's expert on its source device in
 *                  placement `old` into slot (dst, slot) of every registered tensor, all moves
 *                  reading the tensors as they were before the call. A tensor is [D * S, numel]
 *                  floats in slot order (device-major), or (nslots > 0, mpi executor) the block of
 *                  rank r's own slots only, [S, numel]: the move's source rank sends the slot, its
 *                  destination rank receives it, the other ranks take no part.
 * Processes (the mpi executor): one process (rank) is one device of the topology: rank r = device r.
 *                  Every rank holds the same global plan (routing is replicated: the router logits
 *                  are all-gathered first, so every rank takes the same decision) but only its own
 *                  tokens: x and y are [T_r, d], the rank's tokens [t0, t0 + T_r) of the plan's T
 *                  with t0 = r T / D (T a multiple of D). xc and yc keep the plan's copy indices;
 *                  a rank fills and reads only the copies it sends (source r) or receives
 *                  (destination r), its rows are those of device r. docs/mpi.md.
 *   allgather      all[r * bytes_each ..] is rank r's part, already in place on rank r; after the
 *                  call every rank holds every part (one process: nothing to do).
 *   allreduce_f    v[i] = sum over processes, the same bits on every process (reduce + broadcast).
 * The sim executor moves no data: x, xc, y may be NULL; it records migrated bytes only.
 * Ownership: the executor owns nothing it is given.
 */
#ifndef CARL_EXEC_H
#define CARL_EXEC_H

#include "carl/place.h"
#include "carl/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct carl_exec carl_exec_t;

carl_status carl_exec_sim_create(carl_exec_t **out);
carl_status carl_exec_local_create(carl_exec_t **out);
void carl_exec_free(carl_exec_t *ex);
const char *carl_exec_name(const carl_exec_t *ex); /* "sim", "local", ... */
/* 1 when the executor moves data (it needs plans with CARL_PLAN_ROWS). */
int carl_exec_moves_data(const carl_exec_t *ex);

carl_status carl_exec_dispatch(carl_exec_t *ex, const carl_plan_t *plan, const float *x /* [T, d] */, int d,
                               float *xc /* [n_send + n_fwd, d] */);
carl_status carl_exec_combine(carl_exec_t *ex, const carl_plan_t *plan, float *yc /* [n_send + n_fwd, d] */, int d,
                              float *y /* [T, d] */);
carl_status carl_exec_dispatch_backward(carl_exec_t *ex, const carl_plan_t *plan, float *dxc, int d, float *dx);
carl_status carl_exec_combine_backward(carl_exec_t *ex, const carl_plan_t *plan, const float *dy, int d, float *dyc);
carl_status carl_exec_allreduce(carl_exec_t *ex, double *v, int64_t n);
carl_status carl_exec_allreduce_f(carl_exec_t *ex, float *v, int64_t n);
carl_status carl_exec_allgather(carl_exec_t *ex, void *all, size_t bytes_each);
/* This process and the number of processes (0 and 1 for the local and sim executors). */
int carl_exec_rank(const carl_exec_t *ex);
int carl_exec_size(const carl_exec_t *ex);

/* The mpi executor over MPI_COMM_WORLD (initialises MPI when the program has not; its errors are
 * returned, MPI_ERRORS_RETURN). Flat and hierarchical plans of all devices (device -1). CARL_ERR_UNSUPPORTED in a build without MPI. */
carl_status carl_exec_mpi_create(carl_exec_t **out);
/* Bytes this rank's dispatch and combine calls sent to each rank since create: to[b] for
 * b < n (n = carl_exec_size; the self pair moves nothing over MPI and counts its copies as the
 * cost model does, so to[r] is the self traffic). Error for an executor other than mpi. */
carl_status carl_exec_mpi_wire_bytes(const carl_exec_t *ex, double *to, int n);
/* The node communicators of the hierarchical mode (made on the first hierarchical plan): *dpn the
 * ranks per node (0: none made yet), *shared 1 when the node communicator is the shared-memory
 * split (MPI_Comm_split_type), 0 when it is the topology's split by rank / dpn (one machine
 * standing for several nodes). Error for an executor other than mpi. */
carl_status carl_exec_mpi_nodes(const carl_exec_t *ex, int *dpn, int *shared);
/* MPI_Abort(MPI_COMM_WORLD, code) when MPI is initialised and not finalised (else nothing):
 * for a failure on one rank that the others cannot learn of (they would wait in a collective). */
void carl_exec_mpi_abort(int code);
/* MPI_Finalize when MPI was initialised by carl_exec_mpi_create (else nothing). */
void carl_exec_mpi_finalize(void);

typedef struct {
  float *base;        /* [D * S, numel] (nslots 0), or [nslots, numel]: slots first_slot.. only */
  int64_t numel;      /* floats per slot */
  int64_t first_slot; /* with nslots > 0: the physical slot of base's first row */
  int64_t nslots;     /* 0: every slot of the placement is stored here; > 0: only the slots
                         [first_slot, first_slot + nslots) (expert-parallel storage: one rank's
                         own slots, the block of device first_slot / S; mpi executor only) */
} carl_exec_tensor_t;

carl_status carl_exec_migrate(carl_exec_t *ex, const carl_placement_t *old, const carl_migration_t *m,
                              const carl_exec_tensor_t *tensors, int n);
/* Bytes moved by carl_exec_migrate since create (sim: as the migration plan counts them). */
double carl_exec_migrated_bytes(const carl_exec_t *ex);

#ifdef __cplusplus
}
#endif
#endif
