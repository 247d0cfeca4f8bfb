/* carl/nccl.h: the nccl executor: expert parallelism over several GPUs, one process per GPU.
 *
 * Usage (under mpirun -np G, one GPU per rank):
 *   int local, nlocal;
 *   CARL_TRY(carl_exec_nccl_local_rank(&local, &nlocal));   // initialises MPI
 *   carl_cuda_t *g;
 *   CARL_TRY(carl_cuda_create(local, &g));                  // device = local rank
 *   carl_exec_t *ex;
 *   CARL_TRY(carl_exec_nccl_create(g, &ex));                // NCCL communicator of every rank
 *   CARL_TRY(carl_exec_dispatch(ex, &plan, x, d, xc));      // device arrays, the plan on the host
 *   ... experts on the rows of device r ...
 *   CARL_TRY(carl_exec_combine(ex, &plan, yc, d, y));
 *   carl_exec_free(ex);
 *   carl_cuda_free(g);
 *   carl_exec_mpi_finalize();
 *
 * Everything here is documented in docs/gpu.md, section "Several GPUs: the nccl executor".
 */
#ifndef CARL_NCCL_H
#define CARL_NCCL_H

#include "carl/cuda.h"
#include "carl/exec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the nccl executor (src/nccl/exec_nccl.c; reference: the local executor) ----------------- */
/* One process per GPU under mpirun (-np G, device = local rank): rank r = device r of the
 * topology, every rank holding the same global plan (device -1) and its own tokens, as the mpi
 * executor (carl/exec.h "Processes"). x [T_r, d], xc / yc [n_send + n_fwd, d] (a rank fills and
 * reads the copies it sends or receives), y [T_r, d], the floats of carl_exec_allreduce_f, the
 * bytes of carl_exec_allgather and the migrated tensors are device memory of g; the doubles of
 * carl_exec_allreduce (routing statistics) are host memory. Dispatch and combine move the copies
 * by grouped ncclSend / ncclRecv, flat or hierarchical (the plan's hops); results equal the local
 * executor's bit for bit. MPI is initialised when the program has not (carl_exec_mpi_finalize
 * ends it); the NCCL unique id is broadcast over MPI_COMM_WORLD. NCCL_NVLS_ENABLE is set to 0 in
 * the environment before the communicator is made, over any value it had. Errors: CARL_ERR_DEVICE
 * naming the NCCL call and NCCL's error text; CARL_ERR_UNSUPPORTED in a build without CUDA, NCCL
 * or MPI (naming what is missing). */
carl_status carl_exec_nccl_create(carl_cuda_t *g, carl_exec_t **out);
/* 1 when this build has the nccl executor (CUDA, NCCL and MPI found at configure time). */
int carl_exec_nccl_built(void);
/* This process among the processes of its machine (MPI_COMM_TYPE_SHARED): the GPU to take is
 * *local (one per rank: *nlocal must not exceed the visible devices). Initialises MPI. */
carl_status carl_exec_nccl_local_rank(int *local, int *nlocal);
/* Bytes this rank's dispatch and combine calls handed to ncclSend per destination rank since
 * create, to[b] for b < n = carl_exec_size (to[r]: the self pair's copies, which stay in place,
 * counted as the cost model counts them). Error for an executor other than nccl. */
carl_status carl_exec_nccl_wire_bytes(const carl_exec_t *ex, double *to, int n);

#ifdef __cplusplus
}
#endif
#endif
