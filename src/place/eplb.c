/* DeepSeek EPLB (deepseek-ai/EPLB, eplb.py): balanced packing, replication, hierarchical and global
 * rebalancing, for one layer. The semantics follow the reference (sort by weight descending, the
 * lightest pack with room, argmax of weight/count for each extra replica); ties go to the lower
 * index, as a stable sort and a first-maximum argmax give. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"
#include "place_internal.h"

carl_status carl_eplb_balanced_packing(const double *w, int n, int packs, int32_t *pack, int32_t *rank) {
  if (n < 1 || packs < 1 || n % packs != 0)
    return carl_fail(CARL_ERR_INVALID, "eplb: %d items cannot be packed into %d packs of equal count", n, packs);
  const int per = n / packs;
  if (per == 1) {
    for (int i = 0; i < n; i++) { pack[i] = i; rank[i] = 0; }
    return CARL_OK;
  }
  int32_t *order = malloc((size_t)n * sizeof *order);
  double *pw = calloc((size_t)packs, sizeof *pw);
  int32_t *pc = calloc((size_t)packs, sizeof *pc);
  if (!order || !pw || !pc) {
    free(order); free(pw); free(pc);
    return carl_fail(CARL_ERR_NOMEM, "eplb: out of memory");
  }
  if (carl__sort_desc(w, n, order) != CARL_OK) {
    free(order); free(pw); free(pc);
    return CARL_ERR_NOMEM;
  }
  for (int q = 0; q < n; q++) {
    int i = order[q], best = -1;
    for (int b = 0; b < packs; b++)
      if (pc[b] < per && (best < 0 || pw[b] < pw[best])) best = b;
    CARL_ASSERT(best >= 0);
    pack[i] = best;
    rank[i] = pc[best]++;
    pw[best] += w[i];
  }
  free(order); free(pw); free(pc);
  return CARL_OK;
}

carl_status carl_eplb_replicate(const double *w, int n, int nphy, int32_t *phy2log, int32_t *rank, int32_t *cnt) {
  if (n < 1 || nphy < n) return carl_fail(CARL_ERR_INVALID, "eplb: %d replicas are fewer than the %d experts", nphy, n);
  for (int i = 0; i < n; i++) { phy2log[i] = i; rank[i] = 0; cnt[i] = 1; }
  for (int p = n; p < nphy; p++) {
    int best = 0;
    for (int i = 1; i < n; i++)
      if (w[i] / cnt[i] > w[best] / cnt[best]) best = i;
    phy2log[p] = best;
    rank[p] = cnt[best]++;
  }
  return CARL_OK;
}

carl_status carl_eplb_rebalance(const double *w, int E, int R, int groups, int nodes, int gpus, int32_t *phy2log,
                                int32_t *logcnt) {
  if (groups < 1 || nodes < 1 || gpus < 1) return carl_fail(CARL_ERR_INVALID, "eplb: groups, nodes and gpus must be >= 1 (got %d, %d, %d)", groups, nodes, gpus);
  if (groups % nodes != 0) groups = nodes = 1; /* global policy */
  if (E % groups) return carl_fail(CARL_ERR_INVALID, "eplb: %d experts do not split into %d equal groups", E, groups);
  if (gpus % nodes) return carl_fail(CARL_ERR_INVALID, "eplb: %d gpus do not split over %d nodes", gpus, nodes);
  if (R % gpus) return carl_fail(CARL_ERR_INVALID, "eplb: %d replicas are not a multiple of the %d gpus", R, gpus);
  if (R < E) return carl_fail(CARL_ERR_INVALID, "eplb: %d replicas are fewer than the %d experts", R, E);
  const int gs = E / groups, gpn = groups / nodes, epn = E / nodes, rpn = R / nodes, gpu_pn = gpus / nodes;
  const int per_gpu = R / gpus;
  size_t need = (size_t)groups * 2 + (size_t)E * 3 + (size_t)rpn * 5 + (size_t)epn;
  int32_t *buf = malloc(need * sizeof *buf);
  double *dw = malloc(((size_t)groups + epn + rpn) * sizeof *dw);
  if (!buf || !dw) {
    free(buf); free(dw);
    return carl_fail(CARL_ERR_NOMEM, "eplb: out of memory");
  }
  int32_t *gpack = buf, *grank = gpack + groups;
  int32_t *log2mlog = grank + groups, *mlog2log = log2mlog + E, *mlogcnt_all = mlog2log + E;
  int32_t *phy2mlog = mlogcnt_all + E, *phyrank = phy2mlog + rpn, *pk = phyrank + rpn, *rk = pk + rpn;
  int32_t *pphy2phy = rk + rpn, *mlogcnt = pphy2phy + rpn;
  double *gw = dw, *wm = gw + groups, *wp = wm + epn;
  carl_status st = CARL_OK;
  /* 1. groups -> nodes */
  for (int g = 0; g < groups; g++) {
    gw[g] = 0;
    for (int j = 0; j < gs; j++) gw[g] += w[g * gs + j];
  }
  if ((st = carl_eplb_balanced_packing(gw, groups, nodes, gpack, grank)) != CARL_OK) goto out;
  for (int e = 0; e < E; e++) {
    int g = e / gs;
    log2mlog[e] = (gpack[g] * gpn + grank[g]) * gs + e % gs;
  }
  for (int e = 0; e < E; e++) mlog2log[log2mlog[e]] = e;
  /* 2, 3. per node: replicate to rpn, pack replicas to the node's gpus */
  for (int n = 0; n < nodes; n++) {
    for (int j = 0; j < epn; j++) wm[j] = w[mlog2log[n * epn + j]];
    int32_t *cnt = mlogcnt;
    if ((st = carl_eplb_replicate(wm, epn, rpn, phy2mlog, phyrank, cnt)) != CARL_OK) goto out;
    for (int p = 0; p < rpn; p++) wp[p] = wm[phy2mlog[p]] / cnt[phy2mlog[p]];
    if ((st = carl_eplb_balanced_packing(wp, rpn, gpu_pn, pk, rk)) != CARL_OK) goto out;
    for (int p = 0; p < rpn; p++) pphy2phy[pk[p] * per_gpu + rk[p]] = p;
    for (int q = 0; q < rpn; q++) phy2log[n * rpn + q] = mlog2log[phy2mlog[pphy2phy[q]] + n * epn];
    for (int j = 0; j < epn; j++) mlogcnt_all[n * epn + j] = cnt[j];
  }
  for (int e = 0; e < E; e++) logcnt[e] = mlogcnt_all[log2mlog[e]];
out:
  free(buf);
  free(dw);
  return st;
}

/* ---- eplb -------------------------------------------------------------------------------------- */
/* EPLB may put two replicas of one expert on one GPU (the reference allows it; a placement does
 * not): swap the second copy with an item of another GPU, same node first, whose per-replica load
 * is closest. */
static carl_status eplb_repair(const carl_topo_t *t, int S, const double *w, const int32_t *cnt, int32_t *table) {
  const int D = t->devices, P = t->devices_per_node;
  for (int d = 0; d < D; d++)
    for (int s = 0; s < S; s++) {
      int e = table[d * S + s], dup = 0;
      for (int s2 = 0; s2 < s; s2++) dup |= table[d * S + s2] == e;
      if (!dup) continue;
      int bd = -1, bs = -1, bsame = 0;
      double bdiff = INFINITY, we = w[e] / cnt[e];
      for (int d2 = 0; d2 < D; d2++) {
        if (d2 == d) continue;
        int same = d2 / P == d / P, has_e = 0;
        for (int s2 = 0; s2 < S; s2++) has_e |= table[d2 * S + s2] == e;
        if (has_e) continue;
        for (int s2 = 0; s2 < S; s2++) {
          int f = table[d2 * S + s2], f_on_d = 0;
          for (int s3 = 0; s3 < S; s3++) f_on_d |= table[d * S + s3] == f;
          if (f_on_d) continue;
          double diff = fabs(w[f] / cnt[f] - we);
          if (bd < 0 || same > bsame || (same == bsame && diff < bdiff)) {
            bd = d2; bs = s2; bsame = same; bdiff = diff;
          }
        }
      }
      if (bd < 0)
        return carl_fail(CARL_ERR_INVALID, "eplb: expert %d has two replicas on device %d and no swap can separate them "
                         "(EPLB gives replicas by load, uncapped; use fewer replicas)", e, d);
      table[d * S + s] = table[bd * S + bs];
      table[bd * S + bs] = e;
      CARL_DEBUG("eplb: moved a second replica of expert %d from device %d to device %d", e, d, bd);
    }
  return CARL_OK;
}

carl_status carl__place_eplb(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                             int32_t *table) {
  const int E = in->E, D = t->devices, R = D * S;
  int groups = o->groups, nodes = t->nodes;
  if (groups == 0) groups = (E % nodes == 0) ? nodes : 1;
  if (o->eplb_global) groups = nodes = 1;
  if (groups < 1) return carl_fail(CARL_ERR_INVALID, "groups must be >= 1, got %d", groups);
  if (E % groups) return carl_fail(CARL_ERR_INVALID, "groups: %d experts do not split into %d equal groups", E, groups);
  if (groups % nodes == 0 && (E / nodes) > R / nodes)
    return carl_fail(CARL_ERR_INVALID, "eplb: a node must hold its %d experts but has %d slots", E / nodes, R / nodes);
  int32_t *cnt = malloc((size_t)E * sizeof *cnt);
  if (!cnt) return carl_fail(CARL_ERR_NOMEM, "eplb: out of memory");
  carl_status st = carl_eplb_rebalance(in->load, E, R, groups, nodes, D, table, cnt);
  if (st == CARL_OK) st = eplb_repair(t, S, in->load, cnt, table);
  free(cnt);
  return st;
}
