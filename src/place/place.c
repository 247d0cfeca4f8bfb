/* Placement algorithms: contiguous, roundrobin, eplb (with a same-device duplicate repair), traffic;
 * the option handling and input checks shared by all of them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"
#include "place_internal.h"

static const char *const algo_names[CARL_PLACE_NALGO] = {"contiguous", "roundrobin", "eplb", "traffic", "coactivation"};

const char *carl_place_algo_name(carl_place_algo a) {
  return (a >= 0 && (int)a < CARL_PLACE_NALGO) ? algo_names[a] : "unknown";
}

carl_status carl_place_algo_parse(const char *name, carl_place_algo *out) {
  for (int i = 0; i < CARL_PLACE_NALGO; i++)
    if (name && !strcmp(name, algo_names[i])) {
      *out = (carl_place_algo)i;
      return CARL_OK;
    }
  return carl_fail(CARL_ERR_NOT_FOUND, "algorithm '%s' is unknown (contiguous, roundrobin, eplb, traffic, coactivation)",
                   name ? name : "(null)");
}

void carl_place_opts_default(carl_place_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->algo = CARL_PLACE_CONTIGUOUS;
  o->load_bound = 1.25;
  o->refine_passes = 8;
  o->seed = 1;
}

void carl__replica_counts(const double *w, int E, int R, int cap, int32_t *cnt) {
  for (int e = 0; e < E; e++) cnt[e] = 1;
  for (int p = E; p < R; p++) {
    int best = -1;
    for (int e = 0; e < E; e++)
      if (cnt[e] < cap && (best < 0 || w[e] / cnt[e] > w[best] / cnt[best])) best = e;
    CARL_ASSERT(best >= 0);
    cnt[best]++;
  }
}

carl_status carl__pack_devices(const int32_t *item_e, const double *item_w, int n, int P, int S, int passes, int32_t *dev) {
  int32_t *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
  double *dl = calloc((size_t)P, sizeof *dl);
  int32_t *dc = calloc((size_t)P, sizeof *dc);
  carl_status st = CARL_OK;
  if (!order || !dl || !dc || carl__sort_desc(item_w, n, order) != CARL_OK) {
    st = carl_fail(CARL_ERR_NOMEM, "placement: out of memory");
    goto out;
  }
  for (int q = 0; q < n; q++) {
    int i = order[q], best = -1;
    for (int d = 0; d < P; d++) {
      if (dc[d] >= S) continue;
      int dup = 0;
      for (int j = 0; j < q && !dup; j++) dup = dev[order[j]] == d && item_e[order[j]] == item_e[i];
      if (dup) continue;
      if (best < 0 || dl[d] < dl[best]) best = d;
    }
    if (best < 0) {
      st = carl_fail(CARL_ERR_INVALID, "placement: expert %d has more replicas in one node than the node has devices with room", item_e[i]);
      goto out;
    }
    dev[i] = best;
    dc[best]++;
    dl[best] += item_w[i];
  }
  /* swaps between two devices that lower the larger of the two loads */
  for (int pass = 0; pass < passes; pass++) {
    int improved = 0;
    for (int i = 0; i < n; i++)
      for (int j = i + 1; j < n; j++) {
        int a = dev[i], b = dev[j];
        if (a == b || item_e[i] == item_e[j]) continue;
        double na = dl[a] - item_w[i] + item_w[j], nb = dl[b] - item_w[j] + item_w[i];
        double old = dl[a] > dl[b] ? dl[a] : dl[b], nw = na > nb ? na : nb;
        if (nw >= old - 1e-12 * (old > 1 ? old : 1)) continue;
        int dup = 0; /* would a or b then hold an expert twice? */
        for (int q = 0; q < n && !dup; q++) {
          if (q == i || q == j) continue;
          dup = (dev[q] == b && item_e[q] == item_e[i]) || (dev[q] == a && item_e[q] == item_e[j]);
        }
        if (dup) continue;
        dev[i] = b;
        dev[j] = a;
        dl[a] = na;
        dl[b] = nb;
        improved = 1;
      }
    if (!improved) break;
  }
out:
  free(order); free(dl); free(dc);
  return st;
}

double carl__device_cap(double bound, double mean, const double *item_w, int n, int per_device) {
  double hi = 0, lo = INFINITY;
  for (int i = 0; i < n; i++) {
    hi = item_w[i] > hi ? item_w[i] : hi;
    lo = item_w[i] < lo ? item_w[i] : lo;
  }
  double floor_load = n > 0 ? hi + (per_device - 1) * lo : 0; /* the device of the heaviest item */
  double cap = bound * mean;
  return floor_load > cap ? bound * floor_load : cap;
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

static carl_status place_eplb(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
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

/* ---- traffic ----------------------------------------------------------------------------------- */
/* Cost of serving all of expert e's traffic given how many replicas it has on each node (on: [N]). */
static double expert_cost(const double *A, const double *cn, const int32_t *on, int E, int N, int e) {
  double c = 0;
  for (int n = 0; n < N; n++) {
    double a = A[(size_t)n * E + e];
    if (a == 0) continue;
    double best = INFINITY;
    for (int m = 0; m < N; m++)
      if (on[m] && cn[n * N + m] < best) best = cn[n * N + m];
    c += a * best;
  }
  return c;
}

typedef struct {
  double a;
  int32_t e, n;
} pair_t;
static int cmp_pair(const void *x, const void *y) {
  const pair_t *p = x, *q = y;
  if (p->a > q->a) return -1;
  if (p->a < q->a) return 1;
  if (p->e != q->e) return p->e < q->e ? -1 : 1;
  return (p->n > q->n) - (p->n < q->n);
}

static carl_status place_traffic(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                                 int32_t *table) {
  const int E = in->E, N = t->nodes, P = t->devices_per_node, D = t->devices, R = D * S;
  const double *A = in->traffic, *w = in->load;
  carl_status st = CARL_OK;
  int32_t *cnt = malloc((size_t)E * sizeof *cnt);
  int32_t *on = calloc((size_t)E * N, sizeof *on);   /* [E, N] replicas of e on node n */
  int32_t *item_e = malloc((size_t)R * sizeof *item_e), *item_n = malloc((size_t)R * sizeof *item_n);
  double *item_w = malloc((size_t)R * sizeof *item_w);
  double *cn = malloc((size_t)N * N * sizeof *cn);    /* [N, N] cost node n -> node m */
  double *costE = malloc((size_t)E * N * sizeof *costE); /* [E, N] cost of e when its only replica is on m */
  double *nload = calloc((size_t)N, sizeof *nload);
  int32_t *nroom = malloc((size_t)(N > P ? N : P) * sizeof *nroom), *placed = calloc((size_t)E, sizeof *placed);
  pair_t *pairs = malloc((size_t)E * N * sizeof *pairs);
  int32_t *dev = malloc((size_t)P * S * sizeof *dev), *sub_e = malloc((size_t)P * S * sizeof *sub_e);
  double *sub_w = malloc((size_t)P * S * sizeof *sub_w);
  int32_t *item_d = NULL, *subi = NULL; /* [R] device of each item; [P*S] scratch */
  double *dload = NULL;                 /* [D] */
  unsigned char *ondev = NULL;          /* [E, D] */
  double total = 0;
  if (!cnt || !on || !item_e || !item_n || !item_w || !cn || !costE || !nload || !nroom || !placed || !pairs || !dev ||
      !sub_e || !sub_w) {
    st = carl_fail(CARL_ERR_NOMEM, "traffic: out of memory");
    goto out;
  }
  carl__replica_counts(w, E, R, D, cnt);
  for (int e = 0; e < E; e++) total += w[e];
  const double cap = o->load_bound * total / D * P; /* node load bound */
  const double c_intra = P > 1 ? carl_topo_cost(t, 0, 1) * (P - 1) / P : 0.0;
  for (int n = 0; n < N; n++)
    for (int m = 0; m < N; m++) cn[n * N + m] = n == m ? c_intra : carl_topo_cost(t, n * P, m * P);
  for (int e = 0; e < E; e++)
    for (int m = 0; m < N; m++) {
      double c = 0;
      for (int n = 0; n < N; n++) c += A[(size_t)n * E + e] * cn[n * N + m];
      costE[(size_t)e * N + m] = c;
    }
  for (int n = 0; n < N; n++) nroom[n] = P * S;
  int ni = 0;
  /* 1. greedy: (node, expert) pairs by traffic, descending */
  int np = 0;
  for (int e = 0; e < E; e++)
    for (int n = 0; n < N; n++)
      if (A[(size_t)n * E + e] > 0) pairs[np++] = (pair_t){A[(size_t)n * E + e], e, n};
  qsort(pairs, (size_t)np, sizeof *pairs, cmp_pair);
  for (int q = 0; q < np; q++) {
    int e = pairs[q].e, n = pairs[q].n;
    double we = w[e] / cnt[e];
    if (placed[e] >= cnt[e] || on[(size_t)e * N + n] || nroom[n] == 0 || nload[n] + we > cap) continue;
    on[(size_t)e * N + n]++;
    placed[e]++;
    nroom[n]--;
    nload[n] += we;
    item_e[ni] = e; item_n[ni] = n; item_w[ni] = we; ni++;
  }
  /* 2. the rest, heaviest first: a node with room, preferring one without e, then one under the
   * bound, then the most traffic to e, then the lightest */
  {
    double *rw = malloc((size_t)E * sizeof *rw);
    int32_t *order = malloc((size_t)E * sizeof *order);
    if (!rw || !order) {
      free(rw); free(order);
      st = carl_fail(CARL_ERR_NOMEM, "traffic: out of memory");
      goto out;
    }
    for (int e = 0; e < E; e++) rw[e] = w[e] / cnt[e];
    if ((st = carl__sort_desc(rw, E, order)) != CARL_OK) {
      free(rw); free(order);
      goto out;
    }
    for (int q = 0; q < E; q++) {
      int e = order[q];
      while (placed[e] < cnt[e]) {
        int best = -1, bdup = 0, bfit = 0;
        double ba = 0;
        for (int n = 0; n < N; n++) {
          if (nroom[n] == 0 || on[(size_t)e * N + n] >= P) continue;
          int dupf = on[(size_t)e * N + n] == 0, fit = nload[n] + rw[e] <= cap;
          double a = A[(size_t)n * E + e];
          if (best < 0 || dupf > bdup || (dupf == bdup && (fit > bfit || (fit == bfit && (a > ba || (a == ba && nload[n] < nload[best])))))) {
            best = n; bdup = dupf; bfit = fit; ba = a;
          }
        }
        if (best < 0) {
          free(rw); free(order);
          st = carl_fail(CARL_ERR_INVALID, "traffic: no node has room for a replica of expert %d", e);
          goto out;
        }
        on[(size_t)e * N + best]++;
        placed[e]++;
        nroom[best]--;
        nload[best] += rw[e];
        item_e[ni] = e; item_n[ni] = best; item_w[ni] = rw[e]; ni++;
      }
    }
    free(rw);
    free(order);
  }
  CARL_ASSERT(ni == R);
  /* 3. swaps of two items between nodes that lower the traffic cost without breaking the bound */
  if (N > 1)
    for (int pass = 0; pass < o->refine_passes; pass++) {
      int improved = 0;
      for (int i = 0; i < R; i++)
        for (int j = i + 1; j < R; j++) {
          int a = item_n[i], b = item_n[j], e = item_e[i], f = item_e[j];
          if (a == b || e == f || on[(size_t)e * N + b] || on[(size_t)f * N + a]) continue;
          double la = nload[a] - item_w[i] + item_w[j], lb = nload[b] - item_w[j] + item_w[i];
          double oldmax = nload[a] > nload[b] ? nload[a] : nload[b], newmax = la > lb ? la : lb;
          if (newmax > cap && newmax > oldmax) continue;
          double before, after;
          if (cnt[e] == 1 && cnt[f] == 1) {
            before = costE[(size_t)e * N + a] + costE[(size_t)f * N + b];
            after = costE[(size_t)e * N + b] + costE[(size_t)f * N + a];
          } else {
            before = expert_cost(A, cn, on + (size_t)e * N, E, N, e) + expert_cost(A, cn, on + (size_t)f * N, E, N, f);
            on[(size_t)e * N + a]--; on[(size_t)e * N + b]++; on[(size_t)f * N + b]--; on[(size_t)f * N + a]++;
            after = expert_cost(A, cn, on + (size_t)e * N, E, N, e) + expert_cost(A, cn, on + (size_t)f * N, E, N, f);
            on[(size_t)e * N + a]++; on[(size_t)e * N + b]--; on[(size_t)f * N + b]++; on[(size_t)f * N + a]--;
          }
          if (after >= before - 1e-9 * (before > 1 ? before : 1)) continue;
          on[(size_t)e * N + a]--; on[(size_t)e * N + b]++; on[(size_t)f * N + b]--; on[(size_t)f * N + a]++;
          item_n[i] = b; item_n[j] = a;
          nload[a] = la; nload[b] = lb;
          improved = 1;
        }
      if (!improved) break;
    }
  /* 4. inside each node: balance the node's items over its devices */
  item_d = malloc((size_t)R * sizeof *item_d);
  dload = calloc((size_t)D, sizeof *dload);
  ondev = calloc((size_t)E * D, 1);
  subi = malloc((size_t)P * S * sizeof *subi);
  if (!item_d || !dload || !ondev || !subi) {
    st = carl_fail(CARL_ERR_NOMEM, "traffic: out of memory");
    goto out;
  }
  for (int n = 0; n < N; n++) {
    int m = 0;
    for (int i = 0; i < R; i++)
      if (item_n[i] == n) { sub_e[m] = item_e[i]; sub_w[m] = item_w[i]; subi[m] = i; m++; }
    CARL_ASSERT(m == P * S);
    if ((st = carl__pack_devices(sub_e, sub_w, m, P, S, 4 * o->refine_passes, dev)) != CARL_OK) goto out;
    for (int q = 0; q < m; q++) {
      int i = subi[q], d = n * P + dev[q];
      item_d[i] = d;
      dload[d] += item_w[i];
      ondev[(size_t)item_e[i] * D + d] = 1;
    }
  }
  /* 5. device level: (a) while a device is over the bound, the swap with another device that lowers
   * the hotter of the two and costs the least traffic; (b) swaps that lower the traffic cost and keep
   * both devices under the bound (or no worse than before) */
  if (D > 1) {
    const double capdev = carl__device_cap(o->load_bound, total / D, item_w, R, S);
    for (int phase = 0; phase < 2; phase++)
      for (int it = 0; it < (phase == 0 ? 4 * R : o->refine_passes); it++) {
        int hot = 0;
        for (int d = 1; d < D; d++) if (dload[d] > dload[hot]) hot = d;
        if (phase == 0 && dload[hot] <= capdev) break;
        int bi = -1, bj = -1, improved = 0;
        double bdelta = INFINITY, bmax = INFINITY;
        for (int i = 0; i < R; i++) {
          if (phase == 0 && item_d[i] != hot) continue;
          for (int j = phase == 0 ? 0 : i + 1; j < R; j++) {
            int a = item_d[i], b = item_d[j], e = item_e[i], f = item_e[j];
            if (a == b || e == f || ondev[(size_t)e * D + b] || ondev[(size_t)f * D + a]) continue;
            int na = a / P, nb = b / P;
            if (phase == 1 && na == nb) continue;
            double la = dload[a] - item_w[i] + item_w[j], lb = dload[b] - item_w[j] + item_w[i];
            double oldmax = dload[a] > dload[b] ? dload[a] : dload[b], newmax = la > lb ? la : lb;
            if (phase == 0 && newmax >= dload[hot] * (1 - 1e-12)) continue;
            if (phase == 1 && newmax > capdev && newmax > oldmax) continue;
            double delta = 0;
            if (na != nb) {
              if (cnt[e] == 1 && cnt[f] == 1) {
                delta = costE[(size_t)e * N + nb] + costE[(size_t)f * N + na] - costE[(size_t)e * N + na] - costE[(size_t)f * N + nb];
              } else {
                double before = expert_cost(A, cn, on + (size_t)e * N, E, N, e) + expert_cost(A, cn, on + (size_t)f * N, E, N, f);
                on[(size_t)e * N + na]--; on[(size_t)e * N + nb]++; on[(size_t)f * N + nb]--; on[(size_t)f * N + na]++;
                delta = expert_cost(A, cn, on + (size_t)e * N, E, N, e) + expert_cost(A, cn, on + (size_t)f * N, E, N, f) - before;
                on[(size_t)e * N + na]++; on[(size_t)e * N + nb]--; on[(size_t)f * N + nb]++; on[(size_t)f * N + na]--;
              }
            }
            if (phase == 1) {
              if (delta >= -1e-9) continue;
              bi = i; bj = j; /* first improvement */
            } else if (delta < bdelta - 1e-12 || (delta <= bdelta + 1e-12 && newmax < bmax)) {
              bi = i; bj = j; bdelta = delta; bmax = newmax;
              continue;
            } else {
              continue;
            }
            /* apply (phase 1, inside the loop) */
            int ea = e, fb = f;
            on[(size_t)ea * N + na]--; on[(size_t)ea * N + nb]++; on[(size_t)fb * N + nb]--; on[(size_t)fb * N + na]++;
            ondev[(size_t)ea * D + a] = 0; ondev[(size_t)ea * D + b] = 1; ondev[(size_t)fb * D + b] = 0; ondev[(size_t)fb * D + a] = 1;
            item_d[i] = b; item_d[j] = a; item_n[i] = nb; item_n[j] = na;
            dload[a] = la; dload[b] = lb;
            improved = 1;
          }
        }
        if (phase == 1) {
          if (!improved) break;
          continue;
        }
        if (bi < 0) break;
        int a = item_d[bi], b = item_d[bj], e = item_e[bi], f = item_e[bj], na = a / P, nb = b / P;
        on[(size_t)e * N + na]--; on[(size_t)e * N + nb]++; on[(size_t)f * N + nb]--; on[(size_t)f * N + na]++;
        ondev[(size_t)e * D + a] = 0; ondev[(size_t)e * D + b] = 1; ondev[(size_t)f * D + b] = 0; ondev[(size_t)f * D + a] = 1;
        item_d[bi] = b; item_d[bj] = a; item_n[bi] = nb; item_n[bj] = na;
        dload[a] += item_w[bj] - item_w[bi];
        dload[b] += item_w[bi] - item_w[bj];
      }
  }
  {
    int32_t *used = calloc((size_t)D, sizeof *used);
    if (!used) {
      st = carl_fail(CARL_ERR_NOMEM, "traffic: out of memory");
      goto out;
    }
    for (int i = 0; i < R; i++) table[(size_t)item_d[i] * S + used[item_d[i]]++] = item_e[i];
    free(used);
  }
out:
  free(cnt); free(on); free(item_e); free(item_n); free(item_w); free(cn); free(costE); free(nload); free(nroom);
  free(placed); free(pairs); free(dev); free(sub_e); free(sub_w); free(item_d); free(dload); free(ondev); free(subi);
  return st;
}

/* ---- entry point ------------------------------------------------------------------------------- */
static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

carl_status carl_place_compute(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o,
                               carl_placement_t *out) {
  CARL_ASSERT(t != NULL && in != NULL && o != NULL && out != NULL);
  memset(out, 0, sizeof *out);
  if (t->devices < 1 || t->nodes < 1 || t->devices_per_node < 1 || t->nodes * t->devices_per_node != t->devices)
    return carl_fail(CARL_ERR_INVALID, "topology: needs at least one device (nodes %d x devices_per_node %d, devices %d)",
                     t->nodes, t->devices_per_node, t->devices);
  const int E = in->E, D = t->devices;
  if (E < 1) return carl_fail(CARL_ERR_INVALID, "stats: experts must be >= 1, got %d", E);
  if (!in->load) return carl_fail(CARL_ERR_INVALID, "stats: load is missing");
  for (int e = 0; e < E; e++)
    if (!isfinite(in->load[e]) || in->load[e] < 0)
      return carl_fail(isfinite(in->load[e]) ? CARL_ERR_INVALID : CARL_ERR_NUMERIC, "stats: load[%d] = %g (must be finite and >= 0)", e, in->load[e]);
  if (in->traffic && in->N != t->nodes)
    return carl_fail(CARL_ERR_SHAPE, "stats: traffic has %d source nodes but the topology has %d nodes", in->N, t->nodes);
  if (o->load_bound < 1.0 || !isfinite(o->load_bound))
    return carl_fail(CARL_ERR_INVALID, "load_bound must be a finite max/mean ratio >= 1, got %g", o->load_bound);
  if (o->refine_passes < 0) return carl_fail(CARL_ERR_INVALID, "refine_passes must be >= 0, got %d", o->refine_passes);
  /* slots and replicas */
  if (o->slots < 0) return carl_fail(CARL_ERR_INVALID, "slots must be >= 0 (0: derived), got %d", o->slots);
  if (o->replicas < 0) return carl_fail(CARL_ERR_INVALID, "replicas must be >= 0 (0: derived), got %d", o->replicas);
  if (o->slots > 0 && (int64_t)o->slots * D < E)
    return carl_fail(CARL_ERR_INVALID, "slots: %d devices x %d slots = %lld slots cannot hold %d experts", D, o->slots,
                     (long long)o->slots * D, E);
  if (o->replicas > 0 && o->replicas < E)
    return carl_fail(CARL_ERR_INVALID, "replicas: %d is fewer than the %d experts (each expert needs at least one slot)", o->replicas, E);
  if (o->replicas > 0 && o->replicas % D)
    return carl_fail(CARL_ERR_INVALID, "replicas: %d is not a multiple of the %d devices (every device has the same slots)", o->replicas, D);
  if (o->replicas > 0 && o->slots > 0 && o->replicas != o->slots * D)
    return carl_fail(CARL_ERR_INVALID, "replicas: %d but slots %d x %d devices = %d", o->replicas, o->slots, D, o->slots * D);
  int S = o->slots > 0 ? o->slots : o->replicas > 0 ? o->replicas / D : (E + D - 1) / D;
  if ((int64_t)S * D > (int64_t)E * D)
    return carl_fail(CARL_ERR_INVALID, "replicas: %lld physical experts over %d devices would put an expert twice on one device "
                     "(at most E x D = %lld)", (long long)S * D, D, (long long)E * D);
  const int R = S * D;
  const int baseline = o->algo == CARL_PLACE_CONTIGUOUS || o->algo == CARL_PLACE_ROUNDROBIN;
  if (baseline && S != (E + D - 1) / D)
    return carl_fail(CARL_ERR_INVALID, "replicas: algorithm '%s' places each expert once in ceil(E/D) = %d slots per device; "
                     "%d slots asked for (use eplb, traffic or coactivation for replicas)", carl_place_algo_name(o->algo), (E + D - 1) / D, S);
  if (o->algo == CARL_PLACE_TRAFFIC && !in->traffic)
    return carl_fail(CARL_ERR_INVALID, "stats: algorithm 'traffic' needs the source-node x expert traffic (traffic.npy)");
  if (o->algo == CARL_PLACE_COACTIVATION && !in->coact)
    return carl_fail(CARL_ERR_INVALID, "stats: algorithm 'coactivation' needs the co-activation counts (coact.npy)");
  if (in->traffic)
    for (size_t i = 0; i < (size_t)in->N * E; i++)
      if (!isfinite(in->traffic[i]) || in->traffic[i] < 0)
        return carl_fail(CARL_ERR_NUMERIC, "stats: traffic[%zu, %zu] = %g (must be finite and >= 0)", i / E, i % E, in->traffic[i]);
  if (in->coact)
    for (size_t i = 0; i < (size_t)E * E; i++)
      if (!isfinite(in->coact[i]) || in->coact[i] < 0)
        return carl_fail(CARL_ERR_NUMERIC, "stats: coact[%zu, %zu] = %g (must be finite and >= 0)", i / E, i % E, in->coact[i]);

  int32_t *table = malloc((size_t)R * sizeof *table);
  if (!table) return carl_fail(CARL_ERR_NOMEM, "placement: out of memory for %d slots", R);
  for (int i = 0; i < R; i++) table[i] = -1;
  carl_status st = CARL_OK;
  switch (o->algo) {
    case CARL_PLACE_CONTIGUOUS: {
      int32_t *used = calloc((size_t)D, sizeof *used);
      if (!used) { st = carl_fail(CARL_ERR_NOMEM, "placement: out of memory"); break; }
      for (int e = 0; e < E; e++) {
        int d = (int)((int64_t)e * D / E);
        table[(size_t)d * S + used[d]++] = e;
      }
      free(used);
      break;
    }
    case CARL_PLACE_ROUNDROBIN:
      for (int e = 0; e < E; e++) table[(size_t)(e % D) * S + e / D] = e;
      break;
    case CARL_PLACE_EPLB: st = place_eplb(t, in, o, S, table); break;
    case CARL_PLACE_TRAFFIC: st = place_traffic(t, in, o, S, table); break;
    case CARL_PLACE_COACTIVATION: st = carl__place_coact(t, in, o, S, table); break;
    default: st = carl_fail(CARL_ERR_NOT_FOUND, "algorithm %d is unknown", (int)o->algo);
  }
  if (st == CARL_OK && o->algo >= CARL_PLACE_TRAFFIC) /* a canonical order inside each device */
    for (int d = 0; d < D; d++) qsort(table + (size_t)d * S, (size_t)S, sizeof *table, cmp_i32);
  if (st == CARL_OK) st = carl_placement_from_table(out, E, D, S, table);
  free(table);
  return st;
}
