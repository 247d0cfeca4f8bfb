/* DeepSeek EPLB (deepseek-ai/EPLB, eplb.py) for one layer, and the placements `eplb` and
 * `eplb-nodup`.
 *
 * The reference computes in float32 (weight.float()): weights are rounded to float, group sums,
 * per-replica weights w / count and the running pack loads are float sums and quotients, as here.
 * Its choices: items sorted by weight descending, each to the lightest pack (first of equals) with
 * fewer than n/packs items; each extra replica to argmax w / count (first of equals). Equal weights
 * keep index order here (a stable sort, torch's sort(stable=True)); torch's default CPU sort may
 * order them otherwise (docs/placement.md, "Parity with eplb.py").
 *
 * The no-duplicate variant is the same computation with two rules added: an expert gets at most
 * as many replicas as the GPUs it can be spread over (the node's GPUs in the hierarchical policy),
 * and a replica never goes to a GPU that already holds its expert. Where the reference puts no
 * expert twice on a GPU, neither rule ever changes a choice, so both give the same result. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"
#include "place_internal.h"

#define CARL__EPLB_PASSES 32 /* eplb-nodup: swap passes after a no-duplicate rule changed a choice */

/* ---- balanced packing ---------------------------------------------------------------------------- */
/* Does pack b hold expert e? slot: [packs, per] item ids (-1 free); item_e: [n]. */
static int pack_holds(const int32_t *slot, const int32_t *pc, int per, const int32_t *item_e, int b, int e) {
  for (int r = 0; r < pc[b]; r++)
    if (item_e[slot[b * per + r]] == e) return 1;
  return 0;
}

/* Pack n float items into `packs` packs of n/packs items. item_e == NULL: the reference. Else item i
 * is a replica of expert item_e[i] and no pack takes an expert twice: a pack that holds the item's
 * expert is skipped; when every pack with room holds it, an item j of a pack b without the expert
 * moves to a pack a with room that lacks j's expert, and i takes j's rank in b. Such a move exists
 * while an expert has at most `packs` items (b exists because fewer packs than that hold the
 * expert so far; a holds fewer than per items, one of them the expert, so it lacks at least two of
 * b's per distinct experts). Of the moves, the lowest max(load a, load b) afterwards wins (ties:
 * lower a, then lower b, then lower rank). When this rule changed a choice (the reference's pack
 * held the expert) or `changed` says the items already differ from the reference's, swaps then
 * lower the packs' loads (below). pack, rank: [n]. */
static carl_status pack_f32(const float *w, const int32_t *item_e, int n, int packs, int changed, int32_t *pack,
                            int32_t *rank) {
  const int per = n / packs;
  if (per == 1) { /* the reference: one item per pack is the identity */
    for (int i = 0; i < n; i++) { pack[i] = i; rank[i] = 0; }
    return CARL_OK;
  }
  double *wd = calloc((size_t)n, sizeof *wd);
  int32_t *order = malloc((size_t)n * sizeof *order), *slot = malloc((size_t)n * sizeof *slot);
  float *pw = calloc((size_t)packs, sizeof *pw);
  int32_t *pc = calloc((size_t)packs, sizeof *pc);
  carl_status st = CARL_OK;
  int fired = changed;
  if (!wd || !order || !slot || !pw || !pc) {
    st = carl_fail(CARL_ERR_NOMEM, "eplb: out of memory");
    goto out;
  }
  for (int i = 0; i < n; i++) wd[i] = w[i]; /* exact: the order of the floats */
  if ((st = carl__sort_desc(wd, n, order)) != CARL_OK) goto out;
  for (int q = 0; q < n; q++) {
    const int i = order[q];
    int best = -1, ref = -1;
    for (int b = 0; b < packs; b++) {
      if (pc[b] >= per) continue;
      if (ref < 0 || pw[b] < pw[ref]) ref = b;
      if (item_e && pack_holds(slot, pc, per, item_e, b, item_e[i])) continue;
      if (best < 0 || pw[b] < pw[best]) best = b;
    }
    if (best != ref) fired = 1;
    if (best < 0 && item_e) {
      int ba = -1, bb = -1, br = -1;
      float bmax = INFINITY;
      for (int a = 0; a < packs; a++) {
        if (pc[a] >= per) continue;
        for (int b = 0; b < packs; b++) {
          if (b == a || pack_holds(slot, pc, per, item_e, b, item_e[i])) continue;
          for (int r = 0; r < pc[b]; r++) {
            const int j = slot[b * per + r];
            if (pack_holds(slot, pc, per, item_e, a, item_e[j])) continue;
            const float la = pw[a] + w[j], lb = pw[b] - w[j] + w[i], mx = la > lb ? la : lb;
            if (mx < bmax) { bmax = mx; ba = a; bb = b; br = r; }
          }
        }
      }
      if (ba < 0) {
        st = carl_fail(CARL_ERR_INVALID, "eplb: expert %d has more replicas than there are GPUs to spread them over", item_e[i]);
        goto out;
      }
      const int j = slot[bb * per + br];
      slot[ba * per + pc[ba]] = j; /* j moves to a */
      pack[j] = ba;
      rank[j] = pc[ba]++;
      pw[ba] += w[j];
      pw[bb] -= w[j];
      slot[bb * per + br] = i; /* i takes j's rank in b */
      pack[i] = bb;
      rank[i] = br;
      pw[bb] += w[i];
      continue;
    }
    CARL_ASSERT(best >= 0);
    slot[best * per + pc[best]] = i;
    pack[i] = best;
    rank[i] = pc[best]++;
    pw[best] += w[i];
  }
  /* a rule changed a choice: swaps of two items between packs that lower the larger of the two
   * loads and keep every expert at most once per pack, in scan order (lower pack, then rank, first),
   * until a pass finds none (at most CARL__EPLB_PASSES passes) */
  if (item_e && fired)
    for (int pass = 0; pass < CARL__EPLB_PASSES; pass++) {
      int improved = 0;
      for (int a = 0; a < packs; a++)
        for (int ra = 0; ra < per; ra++)
          for (int b = a + 1; b < packs; b++)
            for (int rb = 0; rb < per; rb++) {
              const int i = slot[a * per + ra], j = slot[b * per + rb];
              if (item_e[i] == item_e[j] || pack_holds(slot, pc, per, item_e, b, item_e[i]) ||
                  pack_holds(slot, pc, per, item_e, a, item_e[j]))
                continue;
              const float la = pw[a] - w[i] + w[j], lb = pw[b] - w[j] + w[i];
              const float old = pw[a] > pw[b] ? pw[a] : pw[b], nw = la > lb ? la : lb;
              if (!(nw < old)) continue;
              slot[a * per + ra] = j; slot[b * per + rb] = i;
              pack[j] = a; rank[j] = ra; pack[i] = b; rank[i] = rb;
              pw[a] = la; pw[b] = lb;
              improved = 1;
            }
      if (!improved) break;
    }
out:
  free(wd); free(order); free(slot); free(pw); free(pc);
  return st;
}

carl_status carl_eplb_balanced_packing(const double *w, int n, int packs, int32_t *pack, int32_t *rank) {
  if (n < 1 || packs < 1 || n % packs != 0)
    return carl_fail(CARL_ERR_INVALID, "eplb: %d items cannot be packed into %d packs of equal count", n, packs);
  float *wf = malloc((size_t)n * sizeof *wf);
  if (!wf) return carl_fail(CARL_ERR_NOMEM, "eplb: out of memory");
  for (int i = 0; i < n; i++) wf[i] = (float)w[i];
  carl_status st = pack_f32(wf, NULL, n, packs, 0, pack, rank);
  free(wf);
  return st;
}

/* ---- replication --------------------------------------------------------------------------------- */
/* Each extra replica to argmax w / cnt in float (first of equals) among experts with cnt < cap
 * (cap <= 0: no cap, the reference). Needs n <= nphy and, with a cap, nphy <= n * cap. Returns 1
 * when the cap changed a choice. */
static int replicate_f32(const float *w, int n, int nphy, int cap, int32_t *phy2log, int32_t *rank, int32_t *cnt) {
  int capped = 0;
  for (int i = 0; i < n; i++) { phy2log[i] = i; rank[i] = 0; cnt[i] = 1; }
  for (int p = n; p < nphy; p++) {
    int best = -1, ref = -1;
    float bv = 0, rv = 0;
    for (int i = 0; i < n; i++) {
      const float v = w[i] / (float)cnt[i];
      if (ref < 0 || v > rv) { ref = i; rv = v; }
      if (cap > 0 && cnt[i] >= cap) continue;
      if (best < 0 || v > bv) { best = i; bv = v; }
    }
    CARL_ASSERT(best >= 0);
    capped |= best != ref;
    phy2log[p] = best;
    rank[p] = cnt[best]++;
  }
  return capped;
}

carl_status carl_eplb_replicate(const double *w, int n, int nphy, int32_t *phy2log, int32_t *rank, int32_t *cnt) {
  if (n < 1 || nphy < n) return carl_fail(CARL_ERR_INVALID, "eplb: %d replicas are fewer than the %d experts", nphy, n);
  float *wf = malloc((size_t)n * sizeof *wf);
  if (!wf) return carl_fail(CARL_ERR_NOMEM, "eplb: out of memory");
  for (int i = 0; i < n; i++) wf[i] = (float)w[i];
  replicate_f32(wf, n, nphy, 0, phy2log, rank, cnt);
  free(wf);
  return CARL_OK;
}

/* ---- rebalance ----------------------------------------------------------------------------------- */
static carl_status rebalance(const double *w_in, int E, int R, int groups, int nodes, int gpus, int nodup,
                             int32_t *phy2log, int32_t *logcnt) {
  if (groups < 1 || nodes < 1 || gpus < 1) return carl_fail(CARL_ERR_INVALID, "eplb: groups, nodes and gpus must be >= 1 (got %d, %d, %d)", groups, nodes, gpus);
  if (groups % nodes != 0) groups = nodes = 1; /* global policy */
  /* nodup: a node holds only its own experts, at most once per GPU; when its R/nodes slots are
   * more than that (R > E x gpus/nodes), the hierarchical policy has no valid table: global */
  if (nodup && nodes > 1 && gpus % nodes == 0 && R % nodes == 0 && E % nodes == 0 &&
      (int64_t)(R / nodes) > (int64_t)(E / nodes) * (gpus / nodes))
    groups = nodes = 1;
  if (E < 1 || E % groups) return carl_fail(CARL_ERR_INVALID, "eplb: %d experts do not split into %d equal groups", E, groups);
  if (gpus % nodes) return carl_fail(CARL_ERR_INVALID, "eplb: %d gpus do not split over %d nodes", gpus, nodes);
  if (R % gpus) return carl_fail(CARL_ERR_INVALID, "eplb: %d replicas are not a multiple of the %d gpus", R, gpus);
  if (R < E) return carl_fail(CARL_ERR_INVALID, "eplb: %d replicas are fewer than the %d experts", R, E);
  const int gs = E / groups, gpn = groups / nodes, epn = E / nodes, rpn = R / nodes, gpu_pn = gpus / nodes;
  const int per_gpu = R / gpus;
  if (nodup && (int64_t)rpn > (int64_t)epn * gpu_pn)
    return carl_fail(CARL_ERR_INVALID, "eplb: %d replicas over %d gpus would put an expert twice on one gpu (at most experts x gpus = %lld)",
                     R, gpus, (long long)E * gpus);
  size_t need = (size_t)groups * 2 + (size_t)E * 3 + (size_t)rpn * 5 + (size_t)epn;
  int32_t *buf = malloc(need * sizeof *buf);
  float *fw = malloc(((size_t)E + groups + epn + rpn) * sizeof *fw);
  if (!buf || !fw) {
    free(buf); free(fw);
    return carl_fail(CARL_ERR_NOMEM, "eplb: out of memory");
  }
  int32_t *gpack = buf, *grank = gpack + groups;
  int32_t *log2mlog = grank + groups, *mlog2log = log2mlog + E, *mlogcnt_all = mlog2log + E;
  int32_t *phy2mlog = mlogcnt_all + E, *phyrank = phy2mlog + rpn, *pk = phyrank + rpn, *rk = pk + rpn;
  int32_t *pphy2phy = rk + rpn, *cnt = pphy2phy + rpn;
  float *w = fw, *gw = w + E, *wm = gw + groups, *wp = wm + epn;
  carl_status st = CARL_OK;
  for (int e = 0; e < E; e++) w[e] = (float)w_in[e];
  /* 1. groups -> nodes (group loads: float sums in index order) */
  for (int g = 0; g < groups; g++) {
    gw[g] = 0;
    for (int j = 0; j < gs; j++) gw[g] += w[g * gs + j];
  }
  if ((st = pack_f32(gw, NULL, groups, nodes, 0, gpack, grank)) != CARL_OK) goto out;
  for (int e = 0; e < E; e++) {
    int g = e / gs;
    log2mlog[e] = (gpack[g] * gpn + grank[g]) * gs + e % gs;
  }
  for (int e = 0; e < E; e++) mlog2log[log2mlog[e]] = e;
  /* 2, 3. per node: replicate to rpn (nodup: at most one replica per GPU of the node), pack the
   * replicas (weight w / count) onto the node's GPUs */
  for (int n = 0; n < nodes; n++) {
    for (int j = 0; j < epn; j++) wm[j] = w[mlog2log[n * epn + j]];
    const int capped = replicate_f32(wm, epn, rpn, nodup ? gpu_pn : 0, phy2mlog, phyrank, cnt);
    for (int p = 0; p < rpn; p++) wp[p] = wm[phy2mlog[p]] / (float)cnt[phy2mlog[p]];
    if ((st = pack_f32(wp, nodup ? phy2mlog : NULL, rpn, gpu_pn, capped, pk, rk)) != CARL_OK) goto out;
    for (int p = 0; p < rpn; p++) pphy2phy[pk[p] * per_gpu + rk[p]] = p;
    for (int q = 0; q < rpn; q++) phy2log[n * rpn + q] = mlog2log[phy2mlog[pphy2phy[q]] + n * epn];
    for (int j = 0; j < epn; j++) mlogcnt_all[n * epn + j] = cnt[j];
  }
  for (int e = 0; e < E; e++) logcnt[e] = mlogcnt_all[log2mlog[e]];
out:
  free(buf);
  free(fw);
  return st;
}

carl_status carl_eplb_rebalance(const double *w, int E, int R, int groups, int nodes, int gpus, int32_t *phy2log,
                                int32_t *logcnt) {
  return rebalance(w, E, R, groups, nodes, gpus, 0, phy2log, logcnt);
}

carl_status carl_eplb_rebalance_nodup(const double *w, int E, int R, int groups, int nodes, int gpus, int32_t *phy2log,
                                      int32_t *logcnt) {
  return rebalance(w, E, R, groups, nodes, gpus, 1, phy2log, logcnt);
}

/* ---- placements ---------------------------------------------------------------------------------- */
/* The groups and nodes EPLB is called with: --groups, else one group per node when the nodes divide
 * the experts, else the global policy; --global forces it. */
static carl_status eplb_policy(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o,
                               int *groups, int *nodes) {
  const int E = in->E;
  *groups = o->groups;
  *nodes = t->nodes;
  if (*groups == 0) *groups = (E % *nodes == 0) ? *nodes : 1;
  if (o->eplb_global) *groups = *nodes = 1;
  if (*groups < 1) return carl_fail(CARL_ERR_INVALID, "groups must be >= 1, got %d", *groups);
  if (E % *groups) return carl_fail(CARL_ERR_INVALID, "groups: %d experts do not split into %d equal groups", E, *groups);
  return CARL_OK;
}

/* eplb: the reference's GPU contents. A placement holds an expert at most once per device, so where
 * the reference puts two replicas of an expert on one GPU the second becomes an empty slot (-1). */
carl_status carl__place_eplb(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                             int32_t *table) {
  const int E = in->E, D = t->devices, R = D * S;
  int groups, nodes;
  CARL_TRY(eplb_policy(t, in, o, &groups, &nodes));
  int32_t *cnt = malloc((size_t)E * sizeof *cnt);
  if (!cnt) return carl_fail(CARL_ERR_NOMEM, "eplb: out of memory");
  carl_status st = carl_eplb_rebalance(in->load, E, R, groups, nodes, D, table, cnt);
  free(cnt);
  if (st != CARL_OK) return st;
  for (int d = 0; d < D; d++)
    for (int s = 1; s < S; s++)
      for (int s2 = 0; s2 < s; s2++)
        if (table[(size_t)d * S + s2] == table[(size_t)d * S + s]) {
          CARL_DEBUG("eplb: the reference puts expert %d twice on device %d; slot %d left empty", table[(size_t)d * S + s], d, s);
          table[(size_t)d * S + s] = -1;
          break;
        }
  return CARL_OK;
}

carl_status carl__place_eplb_nodup(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o,
                                   int S, int32_t *table) {
  const int E = in->E, D = t->devices, R = D * S;
  int groups, nodes;
  CARL_TRY(eplb_policy(t, in, o, &groups, &nodes));
  int32_t *cnt = malloc((size_t)E * sizeof *cnt);
  if (!cnt) return carl_fail(CARL_ERR_NOMEM, "eplb-nodup: out of memory");
  carl_status st = carl_eplb_rebalance_nodup(in->load, E, R, groups, nodes, D, table, cnt);
  free(cnt);
  return st;
}
