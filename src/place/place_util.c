/* Helpers shared by the placement algorithms: a stable descending sort, EPLB-style replica counts
 * capped per expert, packing one node's items onto its devices, the device load bound. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"
#include "place_internal.h"


/* order[0..n) = indices sorted by w descending, ties by lower index (a stable sort). */
typedef struct {
  double w;
  int32_t i;
} wi_t;
static int cmp_desc(const void *a, const void *b) {
  const wi_t *x = a, *y = b;
  if (x->w > y->w) return -1;
  if (x->w < y->w) return 1;
  return (x->i > y->i) - (x->i < y->i);
}
carl_status carl__sort_desc(const double *w, int n, int32_t *order) {
  wi_t *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
  if (!v) return carl_fail(CARL_ERR_NOMEM, "placement: out of memory");
  for (int i = 0; i < n; i++) { v[i].w = w[i]; v[i].i = i; }
  qsort(v, (size_t)n, sizeof *v, cmp_desc);
  for (int i = 0; i < n; i++) order[i] = v[i].i;
  free(v);
  return CARL_OK;
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

/* Does device d hold expert e among the first q items of order (those placed so far)? */
static int holds(const int32_t *dev, const int32_t *item_e, const int32_t *order, int q, int d, int e) {
  for (int k = 0; k < q; k++)
    if (dev[order[k]] == d && item_e[order[k]] == e) return 1;
  return 0;
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
      if (holds(dev, item_e, order, q, d, item_e[i])) continue;
      if (best < 0 || dl[d] < dl[best]) best = d;
    }
    if (best < 0) {
      /* Every device with room already holds this expert. Swap: an item j of a full device b that
       * lacks the expert moves to a device a with room whose experts do not include j's, and i
       * takes j's place on b. Such a move exists whenever the expert has at most P items here
       * (b exists because fewer than P devices hold it so far; a holds at most S - 1 items, one
       * of them this expert, so at most S - 2 of b's S distinct experts). Of the moves, the one
       * with the lowest max(load a, load b) afterwards (ties: first found). */
      int bj = -1, ba = -1;
      double bmax = INFINITY;
      for (int a = 0; a < P; a++) {
        if (dc[a] >= S) continue;
        for (int qj = 0; qj < q; qj++) {
          int j = order[qj], b = dev[j];
          if (b == a || holds(dev, item_e, order, q, b, item_e[i]) || holds(dev, item_e, order, q, a, item_e[j])) continue;
          double la = dl[a] + item_w[j], lb = dl[b] - item_w[j] + item_w[i], mx = la > lb ? la : lb;
          if (mx < bmax) { bmax = mx; bj = j; ba = a; }
        }
      }
      if (bj < 0) {
        st = carl_fail(CARL_ERR_INVALID, "placement: expert %d has more replicas in one node than the node has devices", item_e[i]);
        goto out;
      }
      best = dev[bj];
      dc[best]--; dl[best] -= item_w[bj];
      dev[bj] = ba;
      dc[ba]++; dl[ba] += item_w[bj];
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
