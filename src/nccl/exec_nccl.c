/* The nccl executor (carl/nccl.h, docs/gpu.md "Several GPUs: the nccl executor"): one process per
 * GPU, started by mpirun; rank r = device r of the topology, as in the mpi executor (carl/exec.h
 * "Processes"), but x, xc, y, yc, the floats of allreduce_f, the bytes of allgather and the
 * migrated tensors are device memory of this process's GPU, and the copies move by NCCL.
 *
 * Dispatch and combine run the plan's hops (the first hop; in hierarchical mode then the
 * forwarded copies) as variable-size all-to-alls of grouped ncclSend / ncclRecv
 * (ncclGroupStart .. ncclGroupEnd) over one communicator of every rank, each peer handed exactly
 * the copies of the shared per-peer schedule (carl__hop_peers, src/exec/hop.c: the same one the
 * mpi executor hands MPI_Alltoallv). The copies are sent from and received into their copy
 * indices of xc / yc (no packing: a pair's copies are contiguous). Before each hop the copy
 * counts are exchanged over MPI_COMM_WORLD (MPI_Alltoall) and checked against the plan
 * (carl__hop_check), and one MPI_Allreduce tells every rank whether any check failed: ranks
 * holding different plans all get an error, none is left in NCCL on mismatched sizes. The work on one GPU (gathering the copies from x, repeating a forwarder's
 * copies, folding forwarded copies into their parents, each token's sum) is the cuda executor's
 * (cuda/exec_internal.h), so the float sums run in the local executor's order.
 * Hierarchical plans (DeepEP style): the plan's first hop already goes to the same local index on
 * each destination node, the second hop forwards inside the node; one communicator of all ranks
 * carries both (NCCL takes NVLink inside a node and the network across nodes).
 * allreduce (doubles, host: routing statistics) is ncclAllReduce; allreduce_f (floats, device:
 * non-expert gradients) ncclReduce to rank 0 then ncclBroadcast, so every rank gets the same
 * bits; allgather ncclAllGather in place.
 * NVLink multicast (NVLS) is switched off: NCCL_NVLS_ENABLE=0 is written into the environment
 * before ncclCommInitRank, over any value the user set.
 * Every NCCL call goes through CARL_NCCL (CARL_ERR_DEVICE naming the call, ncclGetErrorString and
 * NCCL's last error text), every CUDA call through CARL_NCCL_CUDA (carl__cuda_fail), every MPI
 * call through CARL_MPI (dist/mpi_internal.h). A build without CUDA, NCCL or MPI returns
 * CARL_ERR_UNSUPPORTED naming what it lacks. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carl/nccl.h"
#include "exec/exec_impl.h"

#ifdef CARL_WITH_NCCL
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include "cuda/exec_internal.h"
#include "dist/mpi_internal.h"

static carl_status carl__nccl_fail(ncclResult_t rc, ncclComm_t comm, const char *call) {
  const char *last = ncclGetLastError(comm);
  return carl_fail(CARL_ERR_DEVICE, "NCCL: %s failed: %s%s%s%s", call, ncclGetErrorString(rc), last && *last ? " (" : "",
                   last && *last ? last : "", last && *last ? ")" : "");
}

#define CARL_NCCL(comm, call)                                                      \
  do {                                                                             \
    ncclResult_t carl__n = (call);                                                 \
    if (carl__n != ncclSuccess) return carl__nccl_fail(carl__n, (comm), #call);    \
  } while (0)
/* the first failure into st; later calls are skipped (inside a group, which must still end) */
#define CARL_NCCL_CHECK(st, comm, call)                                                  \
  do {                                                                                   \
    if ((st) == CARL_OK) {                                                               \
      ncclResult_t carl__n = (call);                                                     \
      if (carl__n != ncclSuccess) (st) = carl__nccl_fail(carl__n, (comm), #call);        \
    }                                                                                    \
  } while (0)
#define CARL_NCCL_CUDA(call)                                                                \
  do {                                                                                      \
    cudaError_t carl__e = (call);                                                           \
    if (carl__e != cudaSuccess) return carl__cuda_fail(carl__e, #call, __FILE__, __LINE__); \
  } while (0)

typedef struct {
  carl_cuda_t *g;
  cudaStream_t stream;  /* the context's stream: NCCL's work is ordered with the kernels */
  ncclComm_t comm;      /* every rank */
  carl_exec_t *mpi;     /* the mpi executor: MPI's initialisation, rank and size */
  carl__hop_t *hop;     /* [size] the schedule of the hop in progress */
  int *peer;            /* [size] identity: the communicator's ranks are the world's */
  int *scount, *ccount; /* [size] copies announced to / by each peer */
  double *wire;         /* [size] bytes handed to NCCL per destination (self: the copy in place) */
} nccl_state_t;

static nccl_state_t *ST(carl_exec_t *ex) { return ex->state; }

/* The plan must be for this rank count, of every device, with T a multiple of it. */
static carl_status nccl_check(const carl_exec_t *ex, const carl_plan_t *p) {
  if (p->D != ex->size)
    return carl_fail(CARL_ERR_INVALID, "nccl executor: the plan has %d devices, the run has %d ranks (one rank per GPU)",
                     p->D, ex->size);
  if (p->device != -1)
    return carl_fail(CARL_ERR_INVALID, "nccl executor: the plan is for device %d only; every rank needs the plan of all "
                     "devices (device -1)", p->device);
  if (p->T % p->D)
    return carl_fail(CARL_ERR_INVALID, "nccl executor: %lld tokens do not split evenly over %d ranks", (long long)p->T, p->D);
  if (p->n_send + p->n_fwd > INT32_MAX)
    return carl_fail(CARL_ERR_INVALID, "nccl executor: %lld copies exceed the int counts exchanged over MPI",
                     (long long)(p->n_send + p->n_fwd));
  return CARL_OK;
}

/* One hop (o = send_off, base 0; or fwd_off, base n_send) in place in buf [copies, d]: the counts
 * exchanged and checked, then one group of ncclSend / ncclRecv, one pair per peer with copies. */
static carl_status nccl_hop(carl_exec_t *ex, const carl_plan_t *p, const int64_t *o, int64_t base, int combine, float *buf,
                            int d) {
  nccl_state_t *s = ST(ex);
  const int D = ex->size, r = ex->rank;
  carl__hop_peers(p, o, base, combine, r, s->peer, D, s->hop);
  for (int b = 0; b < D; b++) s->scount[b] = (int)s->hop[b].send_n;
  CARL_MPI(MPI_Alltoall(s->scount, 1, MPI_INT, s->ccount, 1, MPI_INT, MPI_COMM_WORLD));
  /* every rank learns whether any rank's check failed: none goes into NCCL alone */
  carl_status chk = carl__hop_check("nccl executor", r, s->peer, D, s->ccount, s->hop);
  int ok = chk == CARL_OK;
  CARL_MPI(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  CARL_TRY(chk);
  if (!ok) return carl_fail(CARL_ERR_STATE, "nccl executor: another rank's plan differs from rank %d's (copy counts)", r);
  carl_status st = CARL_OK;
  CARL_NCCL(s->comm, ncclGroupStart());
  for (int b = 0; b < D; b++) {
    const carl__hop_t *h = &s->hop[b];
    s->wire[b] += (double)h->send_n * (double)d * sizeof(float);
    if (b == r) continue; /* the self pair stays where it is */
    if (h->send_n > 0)
      CARL_NCCL_CHECK(st, s->comm, ncclSend(buf + h->send_at * d, (size_t)h->send_n * (size_t)d, ncclFloat32, b, s->comm,
                                            s->stream));
    if (h->recv_n > 0)
      CARL_NCCL_CHECK(st, s->comm, ncclRecv(buf + h->recv_at * d, (size_t)h->recv_n * (size_t)d, ncclFloat32, b, s->comm,
                                            s->stream));
  }
  ncclResult_t end = ncclGroupEnd();
  CARL_TRY(st);
  if (end != ncclSuccess) return carl__nccl_fail(end, s->comm, "ncclGroupEnd()");
  return CARL_OK;
}

/* xc[c] = x[send_tok[c] - t0] for my copies (pairs r -> b) in place, the first hop; hierarchical:
 * then, as forwarder, xc[n_send + i] = xc[fwd_parent[i]] for my forwarded copies (pairs r -> b)
 * and the second hop. Every copy I receive lands at its copy index. */
static carl_status nccl_dispatch(carl_exec_t *ex, const carl_plan_t *p, const float *x, int d, float *xc) {
  CARL_TRY(nccl_check(ex, p));
  nccl_state_t *s = ST(ex);
  const int D = p->D, r = ex->rank;
  const int64_t Tr = p->T / D, t0 = Tr * r, *o = p->send_off;
  CARL_TRY(carl__cuda_exec_gather(s->g, p, x, t0, t0 + Tr, o[r * D], o[r * D + D], 0, 0, d, xc));
  CARL_TRY(nccl_hop(ex, p, o, 0, 0, xc, d));
  if (p->mode == CARL_PLAN_HIER) {
    const int64_t *fo = p->fwd_off;
    CARL_TRY(carl__cuda_exec_gather(s->g, p, x, t0, t0 + Tr, 0, 0, fo[r * D], fo[r * D + D], d, xc));
    CARL_TRY(nccl_hop(ex, p, fo, p->n_send, 0, xc, d));
  }
  CARL_NCCL_CUDA(cudaStreamSynchronize(s->stream));
  return CARL_OK;
}

/* The mirror: hierarchical first, the forwarded copies back to their forwarders, which fold them
 * into their parents (ascending forwarded index); then the first hop back, and y[t - t0] += the
 * copies of my token t in ascending destination. */
static carl_status nccl_combine(carl_exec_t *ex, const carl_plan_t *p, float *yc, int d, float *y) {
  CARL_TRY(nccl_check(ex, p));
  nccl_state_t *s = ST(ex);
  const int D = p->D, r = ex->rank;
  const int64_t Tr = p->T / D, t0 = Tr * r;
  if (p->mode == CARL_PLAN_HIER) {
    const int64_t *fo = p->fwd_off;
    CARL_TRY(nccl_hop(ex, p, fo, p->n_send, 1, yc, d));
    CARL_TRY(carl__cuda_exec_fold(s->g, p, fo[r * D], fo[r * D + D], d, yc));
  }
  CARL_TRY(nccl_hop(ex, p, p->send_off, 0, 1, yc, d));
  return carl__cuda_exec_sum(s->g, p, t0, t0 + Tr, d, yc, y); /* waits for the stream */
}

/* Routing statistics (host doubles): through the device, ncclAllReduce in place. */
static carl_status nccl_allreduce(carl_exec_t *ex, double *v, int64_t n) {
  nccl_state_t *s = ST(ex);
  if (n <= 0) return CARL_OK;
  const size_t bytes = sizeof(double) * (size_t)n;
  double *dv;
  CARL_TRY(carl__cuda_scratch(s->g, bytes, (void **)&dv));
  CARL_NCCL_CUDA(cudaMemcpyAsync(dv, v, bytes, cudaMemcpyHostToDevice, s->stream));
  CARL_NCCL(s->comm, ncclAllReduce(dv, dv, (size_t)n, ncclFloat64, ncclSum, s->comm, s->stream));
  CARL_NCCL_CUDA(cudaMemcpyAsync(v, dv, bytes, cudaMemcpyDeviceToHost, s->stream));
  CARL_NCCL_CUDA(cudaStreamSynchronize(s->stream));
  return CARL_OK;
}

/* Non-expert gradients (device floats): reduce to rank 0, then broadcast, the same bits on every
 * rank (replicated parameters stay equal). */
static carl_status nccl_allreduce_f(carl_exec_t *ex, float *v, int64_t n) {
  nccl_state_t *s = ST(ex);
  CARL_NCCL(s->comm, ncclReduce(v, v, (size_t)n, ncclFloat32, ncclSum, 0, s->comm, s->stream));
  CARL_NCCL(s->comm, ncclBroadcast(v, v, (size_t)n, ncclFloat32, 0, s->comm, s->stream));
  CARL_NCCL_CUDA(cudaStreamSynchronize(s->stream));
  return CARL_OK;
}

/* all [size * bytes_each] device bytes, my part at rank * bytes_each: ncclAllGather in place */
static carl_status nccl_allgather(carl_exec_t *ex, void *all, size_t bytes_each) {
  nccl_state_t *s = ST(ex);
  char *a = all;
  CARL_NCCL(s->comm, ncclAllGather(a + (size_t)ex->rank * bytes_each, a, bytes_each, ncclUint8, s->comm, s->stream));
  CARL_NCCL_CUDA(cudaStreamSynchronize(s->stream));
  return CARL_OK;
}

/* Tensors [D * S, numel] on every rank's GPU (replicated, as the mpi executor's): each move's
 * source rank sends the slot to its destination rank (one group of ncclSend / ncclRecv per
 * tensor, moves in order), every other rank copies it from its own copy; all moves read the
 * tensor as it was before the call. */
static carl_status nccl_migrate(carl_exec_t *ex, const carl_placement_t *old, const carl_migration_t *m,
                                const carl_exec_tensor_t *tensors, int n) {
  nccl_state_t *s = ST(ex);
  const int S = old->slots, r = ex->rank;
  if (old->D != ex->size)
    return carl_fail(CARL_ERR_INVALID, "nccl executor: placement on %d devices, the run has %d ranks", old->D, ex->size);
  for (int i = 0; i < n; i++)
    if (tensors[i].nslots > 0)
      return carl_fail(CARL_ERR_UNSUPPORTED, "nccl executor: migrate of tensor %d holding only this rank's slots (the mpi "
                       "executor's expert-parallel storage); the nccl executor moves tensors of every slot", i);
  int *src_slot = malloc(sizeof(int) * (size_t)(m->n_moves > 0 ? m->n_moves : 1));
  if (!src_slot) return carl_fail(CARL_ERR_NOMEM, "nccl executor: out of memory for %lld moves", (long long)m->n_moves);
  for (int64_t q = 0; q < m->n_moves; q++) {
    const carl_move_t *mv = &m->moves[q];
    int j = 0;
    while (j < S && old->slot_expert[mv->src * S + j] != mv->expert) j++;
    if (j == S) {
      free(src_slot);
      return carl_fail(CARL_ERR_INVALID, "migrate: expert %d is not on device %d in the old placement", mv->expert, mv->src);
    }
    src_slot[q] = j;
  }
  carl_status st = CARL_OK;
  for (int i = 0; i < n && st == CARL_OK; i++) {
    const carl_exec_tensor_t *tt = &tensors[i];
    const size_t slot = sizeof(float) * (size_t)tt->numel, bytes = slot * (size_t)old->D * (size_t)S;
    float *before = NULL;
    st = carl__cuda_scratch(s->g, bytes, (void **)&before);
    if (st != CARL_OK) break;
    cudaError_t e = cudaMemcpyAsync(before, tt->base, bytes, cudaMemcpyDeviceToDevice, s->stream);
    if (e != cudaSuccess) {
      st = carl__cuda_fail(e, "cudaMemcpyAsync(migration copy)", __FILE__, __LINE__);
      break;
    }
    CARL_NCCL_CHECK(st, s->comm, ncclGroupStart());
    if (st != CARL_OK) break;
    for (int64_t q = 0; q < m->n_moves && st == CARL_OK; q++) {
      const carl_move_t *mv = &m->moves[q];
      const float *from = before + ((int64_t)mv->src * S + src_slot[q]) * tt->numel;
      float *to = tt->base + ((int64_t)mv->dst * S + mv->slot) * tt->numel;
      if (mv->src != mv->dst && r == mv->src)
        CARL_NCCL_CHECK(st, s->comm, ncclSend(from, (size_t)tt->numel, ncclFloat32, mv->dst, s->comm, s->stream));
      if (mv->src != mv->dst && r == mv->dst) {
        CARL_NCCL_CHECK(st, s->comm, ncclRecv(to, (size_t)tt->numel, ncclFloat32, mv->src, s->comm, s->stream));
      } else if (st == CARL_OK) { /* the slot's replica on this rank, from this rank's copy */
        e = cudaMemcpyAsync(to, from, slot, cudaMemcpyDeviceToDevice, s->stream);
        if (e != cudaSuccess) st = carl__cuda_fail(e, "cudaMemcpyAsync(migrated slot)", __FILE__, __LINE__);
      }
    }
    ncclResult_t end = ncclGroupEnd();
    if (st == CARL_OK && end != ncclSuccess) st = carl__nccl_fail(end, s->comm, "ncclGroupEnd()");
    if (st == CARL_OK) {
      e = cudaStreamSynchronize(s->stream); /* the scratch copy is reused by the next tensor */
      if (e != cudaSuccess) st = carl__cuda_fail(e, "cudaStreamSynchronize(migration)", __FILE__, __LINE__);
    }
  }
  free(src_slot);
  CARL_TRY(st);
  ex->migrated_bytes += m->total_bytes;
  return CARL_OK;
}

static void nccl_free(carl_exec_t *ex) {
  nccl_state_t *s = ST(ex);
  if (!s) return;
  if (s->comm) ncclCommDestroy(s->comm);
  carl_exec_free(s->mpi);
  free(s->hop), free(s->peer), free(s->scount), free(s->ccount), free(s->wire);
  free(s);
  ex->state = NULL;
}

static const carl__exec_ops_t nccl_ops = {"nccl",       1,         nccl_dispatch,  nccl_combine,    nccl_allreduce,
                                          nccl_migrate, nccl_free, nccl_allgather, nccl_allreduce_f};

int carl_exec_nccl_built(void) { return 1; }

carl_status carl_exec_nccl_local_rank(int *local, int *nlocal) {
  if (!local || !nlocal) return carl_fail(CARL_ERR_INVALID, "carl_exec_nccl_local_rank: NULL argument");
  *local = 0, *nlocal = 1;
  carl_exec_t *mpi; /* initialises MPI when the program has not */
  CARL_TRY(carl_exec_mpi_create(&mpi));
  const int rank = carl_exec_rank(mpi);
  carl_exec_free(mpi);
  MPI_Comm node;
  CARL_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
  int rc = MPI_Comm_rank(node, local);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(node, nlocal);
  MPI_Comm_free(&node);
  if (rc != MPI_SUCCESS) return carl__mpi_fail(rc, "MPI_Comm_rank/MPI_Comm_size(shared-memory node)");
  return CARL_OK;
}

/* The communicator: rank 0 makes the unique id and broadcasts it (with a flag: a failure there
 * stops every rank instead of leaving them in the broadcast); every rank joins; one all-reduce of
 * a success flag, so either every rank has the communicator or every rank returns an error. */
static carl_status nccl_init(carl_exec_t *ex) {
  nccl_state_t *s = ST(ex);
  struct {
    int ok;
    ncclUniqueId id;
  } msg;
  memset(&msg, 0, sizeof msg);
  carl_status st = CARL_OK;
  if (ex->rank == 0) {
    CARL_NCCL_CHECK(st, NULL, ncclGetUniqueId(&msg.id));
    msg.ok = st == CARL_OK;
  }
  CARL_MPI(MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, MPI_COMM_WORLD));
  if (!msg.ok) return st != CARL_OK ? st : carl_fail(CARL_ERR_DEVICE, "nccl executor: rank 0 could not make the NCCL unique id");
  cudaError_t e = cudaSetDevice(carl__cuda_device_of(s->g));
  if (e != cudaSuccess) st = carl__cuda_fail(e, "cudaSetDevice", __FILE__, __LINE__);
  /* NVLink multicast off, whatever the environment said (docs/gpu.md) */
  if (st == CARL_OK && setenv("NCCL_NVLS_ENABLE", "0", 1) != 0)
    st = carl_fail(CARL_ERR_STATE, "nccl executor: could not set NCCL_NVLS_ENABLE=0 in the environment");
  CARL_NCCL_CHECK(st, NULL, ncclCommInitRank(&s->comm, ex->size, msg.id, ex->rank));
  int ok = st == CARL_OK;
  CARL_MPI(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (st != CARL_OK) return st;
  if (!ok) return carl_fail(CARL_ERR_DEVICE, "nccl executor: another rank could not join the NCCL communicator");
  return CARL_OK;
}

carl_status carl_exec_nccl_create(carl_cuda_t *g, carl_exec_t **out) {
  if (!out) return carl_fail(CARL_ERR_INVALID, "carl_exec_nccl_create: NULL argument");
  *out = NULL;
  if (!g) return carl_fail(CARL_ERR_INVALID, "carl_exec_nccl_create: NULL GPU context");
  carl_exec_t *ex;
  CARL_TRY(carl__exec_new(&nccl_ops, &ex));
  nccl_state_t *s = calloc(1, sizeof *s);
  carl_status st = s ? CARL_OK : carl_fail(CARL_ERR_NOMEM, "nccl executor: out of memory");
  if (s) {
    ex->state = s;
    s->g = g;
    s->stream = (cudaStream_t)carl_cuda_stream(g);
    st = carl_exec_mpi_create(&s->mpi);
  }
  if (st == CARL_OK) {
    ex->rank = carl_exec_rank(s->mpi);
    ex->size = carl_exec_size(s->mpi);
    const size_t z = (size_t)ex->size;
    s->hop = calloc(z, sizeof(carl__hop_t)), s->peer = calloc(z, sizeof(int)), s->scount = calloc(z, sizeof(int));
    s->ccount = calloc(z, sizeof(int)), s->wire = calloc(z, sizeof(double));
    if (!s->hop || !s->peer || !s->scount || !s->ccount || !s->wire)
      st = carl_fail(CARL_ERR_NOMEM, "nccl executor: out of memory");
    for (int i = 0; st == CARL_OK && i < ex->size; i++) s->peer[i] = i;
  }
  if (st == CARL_OK) st = nccl_init(ex);
  if (st != CARL_OK) {
    carl_exec_free(ex);
    return st;
  }
  *out = ex;
  return CARL_OK;
}

carl_status carl_exec_nccl_wire_bytes(const carl_exec_t *ex, double *to, int n) {
  if (!ex || ex->ops != &nccl_ops) return carl_fail(CARL_ERR_INVALID, "wire bytes: not an nccl executor");
  if (n != ex->size || !to) return carl_fail(CARL_ERR_INVALID, "wire bytes: %d entries for %d ranks", n, ex->size);
  memcpy(to, ((const nccl_state_t *)ex->state)->wire, sizeof(double) * (size_t)n);
  return CARL_OK;
}

#else /* no CUDA, NCCL or MPI in this build */

#ifndef CARL_NCCL_MISSING
#define CARL_NCCL_MISSING "CUDA, NCCL or MPI"
#endif
#define NO_NCCL(what)                                                                                             \
  carl_fail(CARL_ERR_UNSUPPORTED, "%s: not supported by this build (it has no " CARL_NCCL_MISSING "; the nccl " \
            "executor needs CUDA, NCCL and MPI found at configure time)", what)

int carl_exec_nccl_built(void) { return 0; }

carl_status carl_exec_nccl_local_rank(int *local, int *nlocal) {
  if (local) *local = 0;
  if (nlocal) *nlocal = 1;
  return NO_NCCL("nccl executor");
}

carl_status carl_exec_nccl_create(carl_cuda_t *g, carl_exec_t **out) {
  (void)g;
  if (out) *out = NULL;
  return NO_NCCL("nccl executor");
}

carl_status carl_exec_nccl_wire_bytes(const carl_exec_t *ex, double *to, int n) {
  (void)ex, (void)to, (void)n;
  return NO_NCCL("wire bytes");
}

#endif
