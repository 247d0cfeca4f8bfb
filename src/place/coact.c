/* Co-activation placement (C2R groups): a METIS k-way partition of the co-activation graph into D
 * parts (vertex weight: load; edge weight C[i][j] + C[j][i]), a deterministic repair to
 * exactly the slots of each device, a load bound, swap refinement, then replicas. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef CARL_WITH_METIS
#include <metis.h>
#endif

#include "carl/place.h"
#include "place_internal.h"

#define CARL__COACT_STARTS 1 /* METIS seeds tried (then one greedy start) */
#define CARL__COACT_TOPT 16 /* partners per expert kept in the METIS graph */

#ifdef CARL_WITH_METIS
/* METIS partition into D parts; part: [E]. The graph keeps, for each expert, its CARL__COACT_TOPT
 * strongest partners (the union of both directions, so it stays symmetric), as C2R's top-T lists:
 * METIS on the dense graph costs ~100x more and the swap refinement below sees every edge anyway.
 * Vertex weight: per-replica load (METIS balances it approximately; the repair then makes the
 * counts exact). */
static carl_status metis_partition(const double *W, const double *wr, int E, int D, uint64_t seed, int32_t *part) {
  double wmax = 0, lmax = 0;
  for (size_t i = 0; i < (size_t)E * E; i++) wmax = W[i] > wmax ? W[i] : wmax;
  for (int e = 0; e < E; e++) lmax = wr[e] > lmax ? wr[e] : lmax;
  unsigned char *keep = calloc((size_t)E * E, 1);
  int32_t *order = malloc((size_t)E * sizeof *order);
  idx_t *xadj = malloc(((size_t)E + 1) * sizeof *xadj), *adj = malloc((size_t)E * E * sizeof *adj);
  idx_t *adjw = malloc((size_t)E * E * sizeof *adjw), *vw = malloc((size_t)E * sizeof *vw), *pt = malloc((size_t)E * sizeof *pt);
  carl_status st = CARL_OK;
  if (!keep || !order || !xadj || !adj || !adjw || !vw || !pt) {
    st = carl_fail(CARL_ERR_NOMEM, "coactivation: out of memory");
    goto out;
  }
  for (int i = 0; i < E; i++) {
    if ((st = carl__sort_desc(W + (size_t)i * E, E, order)) != CARL_OK) goto out;
    for (int q = 0; q < E && q < CARL__COACT_TOPT; q++) {
      int j = order[q];
      if (j == i || W[(size_t)i * E + j] <= 0) continue;
      keep[(size_t)i * E + j] = keep[(size_t)j * E + i] = 1;
    }
  }
  size_t q = 0;
  xadj[0] = 0;
  for (int i = 0; i < E; i++) {
    for (int j = 0; j < E; j++) {
      if (!keep[(size_t)i * E + j]) continue;
      adj[q] = j;
      adjw[q] = 1 + (idx_t)llround(W[(size_t)i * E + j] / wmax * 1000.0);
      q++;
    }
    xadj[i + 1] = (idx_t)q;
    vw[i] = lmax > 0 ? 1 + (idx_t)llround(wr[i] / lmax * 1000.0) : 1;
  }
  idx_t options[METIS_NOPTIONS];
  METIS_SetDefaultOptions(options);
  options[METIS_OPTION_SEED] = (idx_t)(seed & 0x7fffffff);
  options[METIS_OPTION_NUMBERING] = 0;
  idx_t nv = E, ncon = 1, np = D, obj = 0;
  int r = METIS_PartGraphKway(&nv, &ncon, xadj, adj, vw, NULL, adjw, &np, NULL, NULL, options, &obj, pt);
  if (r != METIS_OK) {
    st = carl_fail(CARL_ERR_STATE, "coactivation: METIS_PartGraphKway failed (status %d) for %d experts into %d parts", r, E, D);
    goto out;
  }
  for (int i = 0; i < E; i++) part[i] = (int32_t)pt[i];
out:
  free(keep); free(order); free(xadj); free(adj); free(adjw); free(vw); free(pt);
  return st;
}
#endif

carl_status carl__place_coact(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                              int32_t *table) {
#ifndef CARL_WITH_METIS
  (void)t; (void)in; (void)o; (void)S; (void)table;
  return carl_fail(CARL_ERR_UNSUPPORTED, "algorithm 'coactivation' needs METIS, and this build has none (configure with METIS installed and -DCARL_WITH_METIS=ON)");
#else
  const int E = in->E, D = t->devices, R = D * S;
  const double *w = in->load, *C = in->coact;
  carl_status st = CARL_OK;
  double *W = malloc((size_t)E * E * sizeof *W);         /* [E, E] symmetric edge weights */
  double *conn = calloc((size_t)E * D, sizeof *conn);     /* [E, D] weight from e to the primaries of d */
  double *wr = malloc((size_t)E * sizeof *wr), *dl = calloc((size_t)D, sizeof *dl);
  int32_t *cnt = malloc((size_t)E * sizeof *cnt), *part = malloc((size_t)E * sizeof *part);
  int32_t *size = calloc((size_t)D, sizeof *size), *capd = malloc((size_t)D * sizeof *capd);
  int32_t *used = calloc((size_t)D, sizeof *used), *best_part = malloc((size_t)E * sizeof *best_part);
  double *best_dl = malloc((size_t)D * sizeof *best_dl);
  if (!W || !conn || !wr || !dl || !cnt || !part || !size || !capd || !used || !best_part || !best_dl) {
    st = carl_fail(CARL_ERR_NOMEM, "coactivation: out of memory");
    goto out;
  }
  for (int i = 0; i < E; i++)
    for (int j = 0; j < E; j++) W[(size_t)i * E + j] = i == j ? 0.0 : C[(size_t)i * E + j] + C[(size_t)j * E + i];
  carl__replica_counts(w, E, R, D, cnt);
  double total = 0;
  for (int e = 0; e < E; e++) { wr[e] = w[e] / cnt[e]; total += w[e]; }
  for (int d = 0; d < D; d++) capd[d] = E / D + (d < E % D);
  const double cap = carl__device_cap(o->load_bound, total / D, wr, E, E / D > 0 ? E / D : 1);
  /* 1-3 from several METIS seeds (seed, seed+1, ...); the best result is kept: under the bound
   * first, then the most intra-device weight, then the earliest start */
  const int starts = (D >= E || D == 1) ? 1 : CARL__COACT_STARTS + 1; /* the last start is greedy */
  double best_score = -1;
  int best_fit = -1;
  for (int start = 0; start < starts; start++) {
  memset(conn, 0, (size_t)E * D * sizeof *conn);
  memset(dl, 0, (size_t)D * sizeof *dl);
  memset(size, 0, (size_t)D * sizeof *size);
  /* 1. partition */
  if (D >= E || D == 1) {
    for (int e = 0; e < E; e++) part[e] = D == 1 ? 0 : e;
  } else if (start == CARL__COACT_STARTS) {
    /* greedy growth: each device starts from the unassigned expert of largest total weight and adds
     * the unassigned expert most tied to it, until full */
    for (int e = 0; e < E; e++) part[e] = -1;
    for (int d = 0; d < D; d++) {
      for (int m = 0; m < capd[d]; m++) {
        int bv = -1;
        double bx = -1;
        for (int v = 0; v < E; v++) {
          if (part[v] >= 0) continue;
          double x = 0;
          if (m == 0)
            for (int u = 0; u < E; u++) x += W[(size_t)v * E + u];
          else
            for (int u = 0; u < E; u++) x += part[u] == d ? W[(size_t)v * E + u] : 0.0;
          if (x > bx) { bx = x; bv = v; }
        }
        part[bv] = d;
      }
    }
  } else if ((st = metis_partition(W, wr, E, D, o->seed + (uint64_t)start, part)) != CARL_OK) {
    goto out;
  }
  for (int e = 0; e < E; e++) {
    if (part[e] < 0 || part[e] >= D) part[e] = 0;
    size[part[e]]++;
    dl[part[e]] += wr[e];
    for (int j = 0; j < E; j++) conn[(size_t)j * D + part[e]] += W[(size_t)j * E + e];
  }
  /* 2. repair: while a part holds more than its slots, move the vertex whose move to a part with
   * room loses the least intra-part weight (ties: lower vertex, lower part) */
  for (;;) {
    int bv = -1, bt = -1;
    double bg = -INFINITY;
    for (int v = 0; v < E; v++) {
      int a = part[v];
      if (size[a] <= capd[a]) continue;
      for (int d = 0; d < D; d++) {
        if (size[d] >= capd[d]) continue;
        double g = conn[(size_t)v * D + d] - conn[(size_t)v * D + a];
        if (g > bg) { bg = g; bv = v; bt = d; }
      }
    }
    if (bv < 0) break;
    int a = part[bv];
    part[bv] = bt;
    size[a]--; size[bt]++;
    dl[a] -= wr[bv]; dl[bt] += wr[bv];
    for (int j = 0; j < E; j++) {
      conn[(size_t)j * D + a] -= W[(size_t)j * E + bv];
      conn[(size_t)j * D + bt] += W[(size_t)j * E + bv];
    }
  }
  for (int d = 0; d < D; d++) CARL_ASSERT(size[d] == capd[d]);
  /* 3. swaps: first bring every device under the load bound (losing the least co-activation
   * weight), then swaps that raise the intra-device weight without breaking the bound */
  for (int phase = 0; phase < 2 && D > 1 && D < E; phase++)
    for (int pass = 0; pass < (phase == 0 ? 4 * E : o->refine_passes); pass++) {
      int improved = 0;
      if (phase == 0) {
        int hot = 0;
        for (int d = 1; d < D; d++) if (dl[d] > dl[hot]) hot = d;
        if (dl[hot] <= cap) break;
        int bi = -1, bj = -1;
        double bg = -INFINITY;
        for (int i = 0; i < E; i++) {
          if (part[i] != hot) continue;
          for (int j = 0; j < E; j++) {
            int b = part[j];
            if (b == hot) continue;
            double la = dl[hot] - wr[i] + wr[j], lb = dl[b] - wr[j] + wr[i];
            if ((la > lb ? la : lb) >= dl[hot] - 1e-12) continue;
            double g = conn[(size_t)i * D + b] - conn[(size_t)i * D + hot] + conn[(size_t)j * D + hot] - conn[(size_t)j * D + b] -
                       2 * W[(size_t)i * E + j];
            if (g > bg) { bg = g; bi = i; bj = j; }
          }
        }
        if (bi < 0) break;
        int a = hot, b = part[bj];
        part[bi] = b; part[bj] = a;
        dl[a] += wr[bj] - wr[bi]; dl[b] += wr[bi] - wr[bj];
        for (int v = 0; v < E; v++) {
          conn[(size_t)v * D + a] += W[(size_t)v * E + bj] - W[(size_t)v * E + bi];
          conn[(size_t)v * D + b] += W[(size_t)v * E + bi] - W[(size_t)v * E + bj];
        }
        continue;
      }
      for (int i = 0; i < E; i++)
        for (int j = i + 1; j < E; j++) {
          int a = part[i], b = part[j];
          if (a == b) continue;
          double g = conn[(size_t)i * D + b] - conn[(size_t)i * D + a] + conn[(size_t)j * D + a] - conn[(size_t)j * D + b] -
                     2 * W[(size_t)i * E + j];
          if (g <= 1e-9) continue;
          double la = dl[a] - wr[i] + wr[j], lb = dl[b] - wr[j] + wr[i];
          double oldmax = dl[a] > dl[b] ? dl[a] : dl[b], newmax = la > lb ? la : lb;
          if (newmax > cap && newmax > oldmax) continue;
          part[i] = b; part[j] = a;
          dl[a] = la; dl[b] = lb;
          for (int v = 0; v < E; v++) {
            conn[(size_t)v * D + a] += W[(size_t)v * E + j] - W[(size_t)v * E + i];
            conn[(size_t)v * D + b] += W[(size_t)v * E + i] - W[(size_t)v * E + j];
          }
          improved = 1;
        }
      if (!improved) break;
    }
  double score = 0, mx = 0;
  for (int i = 0; i < E; i++)
    for (int j = i + 1; j < E; j++)
      if (part[i] == part[j]) score += W[(size_t)i * E + j];
  for (int d = 0; d < D; d++) mx = dl[d] > mx ? dl[d] : mx;
  int fit = mx <= cap * (1 + 1e-12);
  if (fit > best_fit || (fit == best_fit && score > best_score)) {
    best_fit = fit;
    best_score = score;
    memcpy(best_part, part, (size_t)E * sizeof *part);
    memcpy(best_dl, dl, (size_t)D * sizeof *dl);
  }
  } /* starts */
  memcpy(part, best_part, (size_t)E * sizeof *part);
  memcpy(dl, best_dl, (size_t)D * sizeof *dl);
  for (int e = 0; e < E; e++) {
    int d = part[e];
    table[(size_t)d * S + used[d]++] = e;
  }
  /* 4. replicas, heaviest per-replica load first: the device with a free slot, without the expert,
   * with the most co-activation weight to what it holds (ties: lighter, then lower device) */
  if (R > E) {
    int32_t *order = malloc((size_t)E * sizeof *order);
    if (!order || carl__sort_desc(wr, E, order) != CARL_OK) {
      free(order);
      st = carl_fail(CARL_ERR_NOMEM, "coactivation: out of memory");
      goto out;
    }
    for (int q = 0; q < E; q++) {
      int e = order[q];
      for (int r = 1; r < cnt[e]; r++) {
        int best = -1;
        double bc = -1;
        for (int d = 0; d < D; d++) {
          if (used[d] >= S) continue;
          double c = 0;
          int has = 0;
          for (int s = 0; s < used[d]; s++) {
            int f = table[(size_t)d * S + s];
            has |= f == e;
            c += W[(size_t)e * E + f];
          }
          if (has) continue;
          if (best < 0 || c > bc || (c == bc && dl[d] < dl[best])) { best = d; bc = c; }
        }
        if (best < 0) { /* every device with room holds e: move an item f from another device there */
          for (int d = 0; d < D && best < 0; d++) {
            if (used[d] >= S) continue;
            for (int d2 = 0; d2 < D && best < 0; d2++) {
              int has = 0;
              for (int s = 0; s < used[d2]; s++) has |= table[(size_t)d2 * S + s] == e;
              if (d2 == d || has) continue;
              for (int s = 0; s < used[d2] && best < 0; s++) {
                int f = table[(size_t)d2 * S + s], fon = 0;
                for (int s2 = 0; s2 < used[d]; s2++) fon |= table[(size_t)d * S + s2] == f;
                if (fon) continue;
                table[(size_t)d * S + used[d]++] = f;
                dl[d] += wr[f];
                dl[d2] -= wr[f];
                table[(size_t)d2 * S + s] = e; /* e takes f's slot on d2 */
                dl[d2] += wr[e];
                best = d2;
              }
            }
          }
          if (best >= 0) continue; /* placed by the move */
          free(order);
          st = carl_fail(CARL_ERR_INVALID, "coactivation: no device has room for a replica of expert %d", e);
          goto out;
        }
        if (best >= 0 && used[best] < S) {
          table[(size_t)best * S + used[best]++] = e;
          dl[best] += wr[e];
        }
      }
    }
    free(order);
  }
out:
  free(W); free(conn); free(wr); free(dl); free(cnt); free(part); free(size); free(capd); free(used);
  free(best_part); free(best_dl);
  return st;
#endif
}
