/* Placement traffic: minimise the expected inter-node copies under equal slots and a load bound,
 * with replicas (docs/placement.md, ALGORITHMS.md section 4). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"
#include "place_internal.h"

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

carl_status carl__place_traffic(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
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
          /* Every node with room already holds P replicas of e (one per device). Swap: an item i
           * of a node m with fewer than P replicas of e moves to a node n with room that holds
           * fewer than P replicas of i's expert, and e takes its place on m. One exists while e
           * has at most D replicas (m exists; if every expert on m had P replicas on n, n would
           * hold at least the P * S items of m and be full). Of the moves, the one with the lowest
           * max(node load n, node load m) afterwards (ties: first found). */
          int bi = -1, bn = -1;
          double bmax = INFINITY;
          for (int n = 0; n < N; n++) {
            if (nroom[n] == 0) continue;
            for (int i = 0; i < ni; i++) {
              int m = item_n[i], f = item_e[i];
              if (m == n || on[(size_t)e * N + m] >= P || on[(size_t)f * N + n] >= P) continue;
              double ln = nload[n] + item_w[i], lm = nload[m] - item_w[i] + rw[e], mx = ln > lm ? ln : lm;
              if (mx < bmax) { bmax = mx; bi = i; bn = n; }
            }
          }
          if (bi < 0) {
            free(rw); free(order);
            st = carl_fail(CARL_ERR_INVALID, "traffic: expert %d has more replicas than there are devices", e);
            goto out;
          }
          best = item_n[bi];
          on[(size_t)item_e[bi] * N + best]--; on[(size_t)item_e[bi] * N + bn]++;
          nroom[best]++; nroom[bn]--;
          nload[best] -= item_w[bi]; nload[bn] += item_w[bi];
          item_n[bi] = bn;
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
