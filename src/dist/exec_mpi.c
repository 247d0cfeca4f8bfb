/* The mpi executor (carl/exec.h, docs/mpi.md): one rank per device over MPI_COMM_WORLD. Every
 * rank holds the same global plan and its own tokens; dispatch and combine are one
 * MPI_Alltoallv each (the copy counts are exchanged first with MPI_Alltoall and checked against
 * the plan), all-reduce of doubles is MPI_Allreduce, of floats MPI_Reduce + MPI_Bcast (the same
 * bits on every rank), migration sends each moved slot from its source rank to its destination
 * rank. Hierarchical plans: the first hop goes across nodes over a communicator of the ranks of
 * one local index and inside the node over the node communicator (MPI_Comm_split_type, or the
 * topology's split where the shared-memory split is not the topology's node), the second hop
 * (each forwarder to its node's destination devices) over the node communicator. Every MPI
 * call goes through CARL_MPI (dist/mpi_internal.h), which turns a failure into a carl_status naming
 * the call. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exec/exec_impl.h"

#ifdef CARL_WITH_MPI
#include <mpi.h>

#include "dist/mpi_internal.h"

carl_status carl__mpi_fail(int rc, const char *call) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
  msg[len] = '\0';
  return carl_fail(CARL_ERR_IO, "MPI: %s failed: %s", call, len ? msg : "unknown error");
}

static int carl__mpi_we_initialised;

typedef struct {
  MPI_Comm comm;
  int *scount, *sdispl, *rcount, *rdispl; /* [size] in floats */
  int *ccount;                            /* [size] copies per peer, exchanged */
  float *sbuf;
  size_t sbuf_cap;                        /* floats */
  double *wire;                           /* [size] bytes sent to each rank (dispatch + combine) */
  int64_t *spos;                          /* [size] first copy in sbuf of each peer's pair */
  carl__hop_t *hop;                       /* [size] the schedule of the hop in progress */
  int *peer_world;                        /* [size] world rank of each MPI_COMM_WORLD rank: identity */
  /* hierarchical mode (mpi_nodes): made on the first hierarchical plan */
  int dpn;                                /* devices per node the communicators are for; 0: none */
  int node_shared;                        /* 1: the node communicator is the shared-memory split */
  MPI_Comm node, inter;                   /* ranks of my node; ranks of my local index, one per node */
  int *peer_node, *peer_inter;            /* [size] world rank of each rank of node / inter */
} mpi_state_t;

static mpi_state_t *ST(carl_exec_t *ex) { return ex->state; }

static carl_status mpi_sbuf(mpi_state_t *s, size_t floats) {
  if (floats <= s->sbuf_cap) return CARL_OK;
  float *p = realloc(s->sbuf, sizeof(float) * (floats ? floats : 1));
  if (!p) return carl_fail(CARL_ERR_NOMEM, "mpi executor: out of memory for %zu floats", floats);
  s->sbuf = p;
  s->sbuf_cap = floats;
  return CARL_OK;
}

/* The plan must be for this rank count, with T a multiple of it. */
static carl_status mpi_check(const carl_exec_t *ex, const carl_plan_t *p, int d) {
  if (p->D != ex->size)
    return carl_fail(CARL_ERR_INVALID, "mpi executor: the plan has %d devices, the run has %d ranks (one rank per device)",
                     p->D, ex->size);
  if (p->device != -1)
    return carl_fail(CARL_ERR_INVALID, "mpi executor: the plan is for device %d only; every rank needs the plan of all "
                     "devices (device -1)", p->device);
  if (p->T % p->D)
    return carl_fail(CARL_ERR_INVALID, "mpi executor: %lld tokens do not split evenly over %d ranks", (long long)p->T,
                     p->D);
  if ((int64_t)(p->n_send + p->n_fwd) * d > INT32_MAX)
    return carl_fail(CARL_ERR_INVALID, "mpi executor: %lld copies x %d floats exceed MPI's int counts",
                     (long long)p->n_send, d);
  return CARL_OK;
}

/* Node communicators of the hierarchical mode, made on the first hierarchical plan (every rank
 * calls dispatch with the same plan, so the collectives below meet). The node of the topology is
 * ranks [n dpn, (n + 1) dpn). MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) gives the ranks that share
 * memory; where on every rank that is exactly its topology node, it is the node communicator.
 * Otherwise (one machine standing for several nodes: the shared split is one node) the node
 * communicator is MPI_Comm_split by rank / dpn. The inter-node communicator holds the ranks of one
 * local index (rank % dpn), one per node, in node order. */
static carl_status mpi_nodes(carl_exec_t *ex, int dpn) {
  mpi_state_t *s = ST(ex);
  const int r = ex->rank, D = ex->size;
  if (s->dpn == dpn) return CARL_OK;
  if (dpn < 1 || D % dpn)
    return carl_fail(CARL_ERR_INVALID, "mpi executor: %d devices per node do not divide %d ranks", dpn, D);
  if (s->dpn) {
    CARL_MPI(MPI_Comm_free(&s->node));
    CARL_MPI(MPI_Comm_free(&s->inter));
    s->dpn = 0;
  }
  MPI_Comm shared;
  CARL_MPI(MPI_Comm_split_type(s->comm, MPI_COMM_TYPE_SHARED, r, MPI_INFO_NULL, &shared));
  int ns = 0, ok = 1, rc = MPI_Comm_size(shared, &ns);
  int *members = rc == MPI_SUCCESS ? malloc(sizeof(int) * (size_t)(ns > 0 ? ns : 1)) : NULL;
  if (rc == MPI_SUCCESS && !members) {
    MPI_Comm_free(&shared);
    return carl_fail(CARL_ERR_NOMEM, "mpi executor: out of memory for %d node members", ns);
  }
  if (rc == MPI_SUCCESS) rc = MPI_Allgather(&r, 1, MPI_INT, members, 1, MPI_INT, shared);
  if (rc == MPI_SUCCESS) {
    ok = ns == dpn;
    for (int i = 0; ok && i < ns; i++) ok = members[i] == r / dpn * dpn + i;
  }
  free(members);
  if (rc == MPI_SUCCESS) rc = MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, s->comm);
  if (rc != MPI_SUCCESS) {
    MPI_Comm_free(&shared);
    return carl__mpi_fail(rc, "MPI_Comm_size/MPI_Allgather/MPI_Allreduce(shared-memory node)");
  }
  if (ok) {
    s->node = shared;
  } else {
    CARL_MPI(MPI_Comm_free(&shared));
    CARL_MPI(MPI_Comm_split(s->comm, r / dpn, r, &s->node));
  }
  CARL_MPI(MPI_Comm_split(s->comm, r % dpn, r, &s->inter));
  CARL_MPI(MPI_Comm_set_errhandler(s->node, MPI_ERRORS_RETURN));
  CARL_MPI(MPI_Comm_set_errhandler(s->inter, MPI_ERRORS_RETURN));
  int nr = -1, ir = -1;
  CARL_MPI(MPI_Comm_rank(s->node, &nr));
  CARL_MPI(MPI_Comm_rank(s->inter, &ir));
  if (nr != r % dpn || ir != r / dpn)
    return carl_fail(CARL_ERR_STATE, "mpi executor: rank %d is %d in its node and %d across nodes, not %d and %d", r, nr,
                     ir, r % dpn, r / dpn);
  for (int i = 0; i < dpn; i++) s->peer_node[i] = r / dpn * dpn + i;
  for (int n = 0; n < D / dpn; n++) s->peer_inter[n] = n * dpn + r % dpn;
  s->dpn = dpn;
  s->node_shared = ok;
  return CARL_OK;
}

/* A hierarchical plan has data only between ranks of one node and ranks of one local index:
 * anything else would not be moved by the two communicators. */
static carl_status mpi_reach(const carl_plan_t *p, const int64_t *o, int r, int dpn, int fwd) {
  const int D = p->D;
  for (int b = 0; b < D; b++) {
    const int same_node = b / dpn == r / dpn, same_local = b % dpn == r % dpn;
    if (same_node || (same_local && !fwd)) continue;
    if (o[r * D + b + 1] != o[r * D + b] || o[b * D + r + 1] != o[b * D + r])
      return carl_fail(CARL_ERR_STATE, "mpi executor: the hierarchical plan has %s copies between ranks %d and %d, which "
                       "share neither a node nor a local index", fwd ? "forwarded" : "first-hop", r, b);
  }
  return CARL_OK;
}

/* One hop over comm, whose ranks are the world ranks peer[0 .. n-1] (this rank among them), by
 * the shared per-peer schedule (carl__hop_peers, src/exec/hop.c). Dispatch: I send my copies to
 * b (packed in sbuf from copy spos[b]) and receive those of a at their copy indices in buf.
 * Combine, the mirror: I send back the copies I received from a (packed from spos[a]) and
 * receive mine at their copy indices. The copy counts are exchanged first (MPI_Alltoall) and
 * checked against the plan (carl__hop_check): a mismatch means the ranks hold different plans.
 * The self pair is left to the caller. */
static carl_status mpi_hop(carl_exec_t *ex, const carl_plan_t *p, MPI_Comm comm, const int *peer, int n, const int64_t *o,
                           int64_t base, int combine, float *buf, int d) {
  mpi_state_t *s = ST(ex);
  const int r = ex->rank;
  carl__hop_peers(p, o, base, combine, r, peer, n, s->hop);
  for (int i = 0; i < n; i++) s->scount[i] = (int)s->hop[i].send_n;
  CARL_MPI(MPI_Alltoall(s->scount, 1, MPI_INT, s->ccount, 1, MPI_INT, comm));
  CARL_TRY(carl__hop_check("mpi executor", r, peer, n, s->ccount, s->hop));
  for (int i = 0; i < n; i++) {
    const int b = peer[i], self = b == r;
    s->scount[i] = self ? 0 : (int)(s->hop[i].send_n * d);
    s->sdispl[i] = (int)(s->spos[b] * d);
    s->rcount[i] = self ? 0 : (int)(s->hop[i].recv_n * d);
    s->rdispl[i] = (int)(s->hop[i].recv_at * d);
    s->wire[b] += (double)s->scount[i] * sizeof(float);
  }
  CARL_MPI(MPI_Alltoallv(s->sbuf, s->scount, s->sdispl, MPI_FLOAT, buf, s->rcount, s->rdispl, MPI_FLOAT, comm));
  return CARL_OK;
}

/* The hops of one phase: over MPI_COMM_WORLD (flat), or across nodes over the inter-node
 * communicator and inside the node over the node communicator (hierarchical first hop; fwd: the
 * forwarded copies, inside the node only). */
static carl_status mpi_hops(carl_exec_t *ex, const carl_plan_t *p, const int64_t *o, int64_t base, int combine, int fwd,
                            float *buf, int d) {
  mpi_state_t *s = ST(ex);
  if (p->mode != CARL_PLAN_HIER) return mpi_hop(ex, p, s->comm, s->peer_world, ex->size, o, base, combine, buf, d);
  CARL_TRY(mpi_reach(p, o, ex->rank, s->dpn, fwd));
  if (!fwd) CARL_TRY(mpi_hop(ex, p, s->inter, s->peer_inter, ex->size / s->dpn, o, base, combine, buf, d));
  return mpi_hop(ex, p, s->node, s->peer_node, s->dpn, o, base, combine, buf, d);
}

/* xc[c] = x[send_tok[c] - t0] for the copies I send; the copies I receive arrive from their
 * sources; the self pair is copied in place. Hierarchical: then, as forwarder, I repeat the
 * copies I received to my node's other destination devices; the forwarded copies for me arrive
 * at n_send + fwd_off[f D + r]. */
static carl_status mpi_dispatch(carl_exec_t *ex, const carl_plan_t *p, const float *x, int d, float *xc) {
  CARL_TRY(mpi_check(ex, p, d));
  mpi_state_t *s = ST(ex);
  const int D = p->D, r = ex->rank;
  const int64_t t0 = p->T / D * r, *o = p->send_off;
  const size_t row = sizeof(float) * (size_t)d;
  if (p->mode == CARL_PLAN_HIER) CARL_TRY(mpi_nodes(ex, p->dpn));
  const int64_t c0 = o[r * D], c1 = o[r * D + D];
  CARL_TRY(mpi_sbuf(s, (size_t)(c1 - c0) * (size_t)d));
  for (int64_t c = c0; c < c1; c++) {
    const int64_t t = p->send_tok[c] - t0;
    if (t < 0 || t >= p->T / D)
      return carl_fail(CARL_ERR_STATE, "mpi executor: copy %lld of rank %d is of token %d, not one of its tokens", (long long)c,
                       r, p->send_tok[c]);
    memcpy(s->sbuf + (c - c0) * d, x + t * d, row);
  }
  for (int b = 0; b < D; b++) s->spos[b] = o[r * D + b] - c0;
  CARL_TRY(mpi_hops(ex, p, o, 0, 0, 0, xc, d));
  const int64_t ks = o[r * D + r + 1] - o[r * D + r]; /* the self pair: a copy, counted as the cost model does */
  s->wire[r] += (double)ks * (double)row;
  memcpy(xc + o[r * D + r] * d, s->sbuf + (o[r * D + r] - c0) * d, row * (size_t)ks);
  if (p->mode != CARL_PLAN_HIER) return CARL_OK;
  const int64_t *fo = p->fwd_off, f0 = fo[r * D], f1 = fo[r * D + D];
  CARL_TRY(mpi_sbuf(s, (size_t)(f1 - f0) * (size_t)d));
  for (int64_t i = f0; i < f1; i++) {
    const int64_t par = p->fwd_parent[i];
    if (par < 0) return carl_fail(CARL_ERR_STATE, "mpi executor: forwarded copy %lld has no parent in the plan", (long long)i);
    memcpy(s->sbuf + (i - f0) * d, xc + par * d, row);
  }
  for (int b = 0; b < D; b++) s->spos[b] = fo[r * D + b] - f0;
  CARL_TRY(mpi_hops(ex, p, fo, p->n_send, 0, 1, xc, d));
  const int64_t kf = fo[r * D + r + 1] - fo[r * D + r];
  s->wire[r] += (double)kf * (double)row;
  memcpy(xc + (p->n_send + fo[r * D + r]) * d, s->sbuf + (fo[r * D + r] - f0) * d, row * (size_t)kf);
  return CARL_OK;
}

/* Pack the copies I received in phase o (pairs a -> r, ascending a) from buf + base into sbuf for
 * their way back; the self pair is counted on the wire (a copy in place). */
static carl_status mpi_pack_back(carl_exec_t *ex, const carl_plan_t *p, const int64_t *o, int64_t base, const float *buf,
                                 int d) {
  mpi_state_t *s = ST(ex);
  const int D = p->D, r = ex->rank;
  const size_t row = sizeof(float) * (size_t)d;
  int64_t n = 0;
  for (int a = 0; a < D; a++) n += o[a * D + r + 1] - o[a * D + r];
  CARL_TRY(mpi_sbuf(s, (size_t)n * (size_t)d));
  int64_t at = 0;
  for (int a = 0; a < D; a++) {
    const int64_t k = o[a * D + r + 1] - o[a * D + r];
    memcpy(s->sbuf + at * d, buf + (base + o[a * D + r]) * d, row * (size_t)k);
    s->spos[a] = at;
    at += k;
  }
  s->wire[r] += (double)(o[r * D + r + 1] - o[r * D + r]) * (double)row;
  return CARL_OK;
}

/* The copies I received go back to their sources; y[t - t0] += the copies of my token t in
 * ascending destination (tok_copy), as the local executor adds them. Hierarchical: first the
 * forwarded copies go back to their forwarders inside the node, which add them into their
 * parents in ascending forwarded index. */
static carl_status mpi_combine(carl_exec_t *ex, const carl_plan_t *p, float *yc, int d, float *y) {
  CARL_TRY(mpi_check(ex, p, d));
  const int D = p->D, r = ex->rank;
  const int64_t Tr = p->T / D, t0 = Tr * r;
  if (p->mode == CARL_PLAN_HIER) {
    CARL_TRY(mpi_nodes(ex, p->dpn));
    const int64_t *fo = p->fwd_off, ns = p->n_send;
    CARL_TRY(mpi_pack_back(ex, p, fo, ns, yc, d));
    CARL_TRY(mpi_hops(ex, p, fo, ns, 1, 1, yc, d));
    for (int64_t i = fo[r * D]; i < fo[r * D + D]; i++) {
      const int64_t par = p->fwd_parent[i];
      if (par < 0) return carl_fail(CARL_ERR_STATE, "mpi executor: forwarded copy %lld has no parent in the plan", (long long)i);
      float *dst = yc + par * d;
      const float *src = yc + (ns + i) * d;
      for (int j = 0; j < d; j++) dst[j] += src[j];
    }
  }
  CARL_TRY(mpi_pack_back(ex, p, p->send_off, 0, yc, d));
  CARL_TRY(mpi_hops(ex, p, p->send_off, 0, 1, 0, yc, d));
  for (int64_t t = t0; t < t0 + Tr; t++) {
    float *yt = y + (t - t0) * d;
    for (int64_t q = p->tok_off[t]; q < p->tok_off[t + 1]; q++) {
      const float *c = yc + p->tok_copy[q] * d;
      for (int j = 0; j < d; j++) yt[j] += c[j];
    }
  }
  return CARL_OK;
}

static carl_status mpi_allreduce(carl_exec_t *ex, double *v, int64_t n) {
  for (int64_t i = 0; i < n; i += INT32_MAX) {
    const int m = (int)(n - i < INT32_MAX ? n - i : INT32_MAX);
    CARL_MPI(MPI_Allreduce(MPI_IN_PLACE, v + i, m, MPI_DOUBLE, MPI_SUM, ST(ex)->comm));
  }
  return CARL_OK;
}

/* Reduce to rank 0, then broadcast: every rank gets the same bits (an MPI_Allreduce may round
 * differently on different ranks, and replicated parameters must stay equal). */
static carl_status mpi_allreduce_f(carl_exec_t *ex, float *v, int64_t n) {
  mpi_state_t *s = ST(ex);
  for (int64_t i = 0; i < n; i += INT32_MAX) {
    const int m = (int)(n - i < INT32_MAX ? n - i : INT32_MAX);
    if (ex->rank == 0)
      CARL_MPI(MPI_Reduce(MPI_IN_PLACE, v + i, m, MPI_FLOAT, MPI_SUM, 0, s->comm));
    else
      CARL_MPI(MPI_Reduce(v + i, NULL, m, MPI_FLOAT, MPI_SUM, 0, s->comm));
    CARL_MPI(MPI_Bcast(v + i, m, MPI_FLOAT, 0, s->comm));
  }
  return CARL_OK;
}

static carl_status mpi_allgather(carl_exec_t *ex, void *all, size_t bytes_each) {
  if (bytes_each > INT32_MAX) return carl_fail(CARL_ERR_INVALID, "mpi executor: all-gather of %zu bytes per rank", bytes_each);
  CARL_MPI(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, all, (int)bytes_each, MPI_BYTE, ST(ex)->comm));
  return CARL_OK;
}

/* Each move: the source rank sends its slot of the expert to the destination rank, which writes
 * it into (dst, slot). A tensor of every slot (nslots 0: replicated storage) is updated on the
 * other ranks from their own copy, reading the tensors as before the call; a tensor of the rank's
 * own slots only (nslots = S, expert-parallel storage, docs/mpi.md) takes part in the moves from
 * or to its rank only: a slot that stays on its rank is a copy from the block as it was before. */
static carl_status mpi_migrate(carl_exec_t *ex, const carl_placement_t *old, const carl_migration_t *m,
                               const carl_exec_tensor_t *tensors, int n) {
  mpi_state_t *s = ST(ex);
  const int S = old->slots, r = ex->rank;
  if (old->D != ex->size)
    return carl_fail(CARL_ERR_INVALID, "mpi executor: placement on %d devices, the run has %d ranks", old->D, ex->size);
  for (int i = 0; i < n; i++) {
    const carl_exec_tensor_t *tt = &tensors[i];
    const int own = tt->nslots > 0;               /* rows are this rank's slots r S .. r S + S - 1 */
    const int64_t row0 = own ? (int64_t)r * S : 0; /* slot of the first row of base */
    const size_t slot = sizeof(float) * (size_t)tt->numel,
                 bytes = slot * (own ? (size_t)S : (size_t)old->D * (size_t)S);
    if ((size_t)tt->numel > INT32_MAX) return carl_fail(CARL_ERR_INVALID, "mpi executor: slot of %lld floats", (long long)tt->numel);
    float *before = malloc(bytes);
    if (!before) return carl_fail(CARL_ERR_NOMEM, "mpi executor: out of memory for migration (%zu bytes)", bytes);
    memcpy(before, tt->base, bytes);
    carl_status st = CARL_OK;
    for (int64_t q = 0; q < m->n_moves && st == CARL_OK; q++) {
      const carl_move_t *mv = &m->moves[q];
      int j = 0;
      while (j < S && old->slot_expert[mv->src * S + j] != mv->expert) j++;
      if (j == S) {
        st = carl_fail(CARL_ERR_INVALID, "migrate: expert %d is not on device %d in the old placement", mv->expert, mv->src);
        break;
      }
      if (own && r != mv->src && r != mv->dst) continue; /* neither end: nothing of it is stored here */
      /* pointers computed only for slots this rank stores (own: the rows of device r) */
      const float *from = r == mv->src || !own ? before + ((int64_t)mv->src * S + j - row0) * tt->numel : NULL;
      float *to = r == mv->dst || !own ? tt->base + ((int64_t)mv->dst * S + mv->slot - row0) * tt->numel : NULL;
      const int tag = (int)(q % 32768);
      int rc = MPI_SUCCESS;
      if (mv->src == mv->dst || (r != mv->src && r != mv->dst)) {
        memcpy(to, from, slot);
      } else if (r == mv->src) {
        rc = MPI_Send(from, (int)tt->numel, MPI_FLOAT, mv->dst, tag, s->comm);
        if (rc == MPI_SUCCESS && !own) memcpy(to, from, slot); /* the replica of the destination slot */
      } else {
        rc = MPI_Recv(to, (int)tt->numel, MPI_FLOAT, mv->src, tag, s->comm, MPI_STATUS_IGNORE);
      }
      if (rc != MPI_SUCCESS) st = carl__mpi_fail(rc, r == mv->src ? "MPI_Send(expert slot)" : "MPI_Recv(expert slot)");
    }
    free(before);
    CARL_TRY(st);
  }
  ex->migrated_bytes += m->total_bytes;
  return CARL_OK;
}

static void mpi_free(carl_exec_t *ex) {
  mpi_state_t *s = ST(ex);
  if (!s) return;
  int finalized = 1;
  if (s->dpn && MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Comm_free(&s->node), MPI_Comm_free(&s->inter);
  free(s->scount), free(s->sdispl), free(s->rcount), free(s->rdispl), free(s->ccount), free(s->sbuf), free(s->wire);
  free(s->spos), free(s->hop), free(s->peer_world), free(s->peer_node), free(s->peer_inter);
  free(s);
  ex->state = NULL;
}

static const carl__exec_ops_t mpi_ops = {"mpi",        1,        mpi_dispatch,  mpi_combine,    mpi_allreduce,
                                         mpi_migrate, mpi_free, mpi_allgather, mpi_allreduce_f};

carl_status carl_exec_mpi_create(carl_exec_t **out) {
  *out = NULL;
  int inited = 0, finalized = 0;
  CARL_MPI(MPI_Initialized(&inited));
  CARL_MPI(MPI_Finalized(&finalized));
  if (finalized) return carl_fail(CARL_ERR_STATE, "mpi executor: MPI is already finalised");
  if (!inited) {
    int provided = 0;
    CARL_MPI(MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided));
    carl__mpi_we_initialised = 1;
  }
  CARL_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  carl_exec_t *ex;
  CARL_TRY(carl__exec_new(&mpi_ops, &ex));
  mpi_state_t *s = calloc(1, sizeof *s);
  int rank = 0, size = 1;
  carl_status st = s ? CARL_OK : carl_fail(CARL_ERR_NOMEM, "mpi executor: out of memory");
  if (s) {
    ex->state = s;
    s->comm = MPI_COMM_WORLD;
    int rc = MPI_Comm_rank(s->comm, &rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(s->comm, &size);
    if (rc != MPI_SUCCESS) st = carl__mpi_fail(rc, "MPI_Comm_rank/MPI_Comm_size(MPI_COMM_WORLD)");
  }
  if (st == CARL_OK) {
    ex->rank = rank;
    ex->size = size;
    const size_t z = (size_t)size;
    s->scount = calloc(z, sizeof(int)), s->sdispl = calloc(z, sizeof(int)), s->rcount = calloc(z, sizeof(int));
    s->rdispl = calloc(z, sizeof(int)), s->ccount = calloc(z, sizeof(int)), s->wire = calloc(z, sizeof(double));
    s->spos = calloc(z, sizeof(int64_t)), s->peer_world = calloc(z, sizeof(int)), s->hop = calloc(z, sizeof(carl__hop_t));
    s->peer_node = calloc(z, sizeof(int)), s->peer_inter = calloc(z, sizeof(int));
    if (!s->scount || !s->sdispl || !s->rcount || !s->rdispl || !s->ccount || !s->wire || !s->spos || !s->hop || !s->peer_world ||
        !s->peer_node || !s->peer_inter)
      st = carl_fail(CARL_ERR_NOMEM, "mpi executor: out of memory");
    for (int i = 0; st == CARL_OK && i < size; i++) s->peer_world[i] = i;
  }
  if (st != CARL_OK) {
    carl_exec_free(ex);
    return st;
  }
  *out = ex;
  return CARL_OK;
}

carl_status carl_exec_mpi_wire_bytes(const carl_exec_t *ex, double *to, int n) {
  if (!ex || ex->ops != &mpi_ops) return carl_fail(CARL_ERR_INVALID, "wire bytes: not an mpi executor");
  if (n != ex->size || !to) return carl_fail(CARL_ERR_INVALID, "wire bytes: %d entries for %d ranks", n, ex->size);
  memcpy(to, ((const mpi_state_t *)ex->state)->wire, sizeof(double) * (size_t)n);
  return CARL_OK;
}

carl_status carl_exec_mpi_nodes(const carl_exec_t *ex, int *dpn, int *shared) {
  if (!ex || ex->ops != &mpi_ops || !dpn || !shared) return carl_fail(CARL_ERR_INVALID, "node split: not an mpi executor");
  *dpn = ((const mpi_state_t *)ex->state)->dpn;
  *shared = ((const mpi_state_t *)ex->state)->node_shared;
  return CARL_OK;
}

void carl_exec_mpi_abort(int code) {
  int inited = 0, finalized = 0;
  if (MPI_Initialized(&inited) != MPI_SUCCESS || MPI_Finalized(&finalized) != MPI_SUCCESS) return;
  if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

void carl_exec_mpi_finalize(void) {
  int finalized = 0;
  if (carl__mpi_we_initialised && MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Finalize();
}

#else /* no MPI in this build */

carl_status carl_exec_mpi_create(carl_exec_t **out) {
  *out = NULL;
  return carl_fail(CARL_ERR_UNSUPPORTED, "mpi executor: this build has no MPI (install libopenmpi-dev, configure with "
                   "-DCARL_WITH_MPI=ON)");
}

carl_status carl_exec_mpi_wire_bytes(const carl_exec_t *ex, double *to, int n) {
  (void)ex, (void)to, (void)n;
  return carl_fail(CARL_ERR_UNSUPPORTED, "wire bytes: this build has no MPI");
}

carl_status carl_exec_mpi_nodes(const carl_exec_t *ex, int *dpn, int *shared) {
  (void)ex, (void)dpn, (void)shared;
  return carl_fail(CARL_ERR_UNSUPPORTED, "node split: this build has no MPI");
}

void carl_exec_mpi_abort(int code) { (void)code; }
void carl_exec_mpi_finalize(void) {}

#endif
