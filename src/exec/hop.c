/* The per-peer schedule of one hop of a dispatch plan, shared by the executors that cross
 * processes (src/dist/exec_mpi.c, src/nccl/exec_nccl.c): which copies of the plan's copy index
 * space rank r hands to each peer and where the peer's copies land, and the check of the counts
 * the peers announce. Plain C on the host; exec/exec_impl.h documents it. */
#include "exec/exec_impl.h"

void carl__hop_peers(const carl_plan_t *p, const int64_t *o, int64_t base, int combine, int r, const int *peer, int n,
                     carl__hop_t *out) {
  const int D = p->D;
  for (int i = 0; i < n; i++) {
    const int b = peer[i];
    const int64_t rb = o[r * D + b], rb1 = o[r * D + b + 1], br = o[b * D + r], br1 = o[b * D + r + 1];
    /* dispatch: my copies r -> b go out, b's copies b -> r come in; combine: the mirror */
    out[i].send_at = base + (combine ? br : rb);
    out[i].send_n = combine ? br1 - br : rb1 - rb;
    out[i].recv_at = base + (combine ? rb : br);
    out[i].recv_n = combine ? rb1 - rb : br1 - br;
  }
}

carl_status carl__hop_check(const char *who, int r, const int *peer, int n, const int *announced, const carl__hop_t *h) {
  for (int i = 0; i < n; i++)
    if (announced[i] != h[i].recv_n)
      return carl_fail(CARL_ERR_STATE, "%s: rank %d announces %d copies to rank %d, whose plan expects %lld "
                       "(the ranks' plans differ)", who, peer[i], announced[i], r, (long long)h[i].recv_n);
  return CARL_OK;
}
