/* Migration plan between two placements: relabel the devices of each node (an optimal assignment,
 * Hungarian method) to keep the most experts in place, keep staying experts in their old slot, and
 * copy every other expert from its nearest old holder. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"

void carl_migration_free(carl_migration_t *m) {
  if (!m) return;
  free(m->moves);
  memset(m, 0, sizeof *m);
}

/* Minimum-cost perfect assignment of an n x n cost matrix (row i -> column col[i]); Hungarian
 * method with potentials, O(n^3). Scratch-free interface: allocates its own arrays. */
static carl_status hungarian(const double *cost, int n, int32_t *col) {
  double *u = calloc((size_t)n + 1, sizeof *u), *v = calloc((size_t)n + 1, sizeof *v), *minv = malloc(((size_t)n + 1) * sizeof *minv);
  int *p = calloc((size_t)n + 1, sizeof *p), *way = calloc((size_t)n + 1, sizeof *way);
  char *used = malloc((size_t)n + 1);
  if (!u || !v || !minv || !p || !way || !used) {
    free(u); free(v); free(minv); free(p); free(way); free(used);
    return carl_fail(CARL_ERR_NOMEM, "migration: out of memory");
  }
  for (int i = 1; i <= n; i++) {
    p[0] = i;
    int j0 = 0;
    for (int j = 0; j <= n; j++) { minv[j] = INFINITY; used[j] = 0; }
    do {
      used[j0] = 1;
      int i0 = p[j0], j1 = 0;
      double delta = INFINITY;
      for (int j = 1; j <= n; j++) {
        if (used[j]) continue;
        double cur = cost[(size_t)(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
        if (cur < minv[j]) { minv[j] = cur; way[j] = j0; }
        if (minv[j] < delta) { delta = minv[j]; j1 = j; }
      }
      for (int j = 0; j <= n; j++) {
        if (used[j]) { u[p[j]] += delta; v[j] -= delta; }
        else minv[j] -= delta;
      }
      j0 = j1;
    } while (p[j0] != 0);
    do {
      int j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0);
  }
  for (int j = 1; j <= n; j++) col[p[j] - 1] = j - 1;
  free(u); free(v); free(minv); free(p); free(way); free(used);
  return CARL_OK;
}

carl_status carl_place_migrate(const carl_topo_t *t, const carl_placement_t *old, carl_placement_t *nw, int relabel,
                               double expert_bytes, carl_migration_t *m) {
  CARL_ASSERT(t != NULL && old != NULL && nw != NULL && m != NULL);
  memset(m, 0, sizeof *m);
  const int D = t->devices, P = t->devices_per_node, N = t->nodes, E = nw->E;
  if (old->E != nw->E) return carl_fail(CARL_ERR_SHAPE, "old placement has %d experts, the new one %d", old->E, nw->E);
  if (old->D != D || nw->D != D)
    return carl_fail(CARL_ERR_SHAPE, "placements have %d (old) and %d (new) devices but the topology has %d", old->D, nw->D, D);
  if (!(expert_bytes >= 0) || !isfinite(expert_bytes))
    return carl_fail(CARL_ERR_INVALID, "expert_bytes must be finite and >= 0, got %g", expert_bytes);
  const int So = old->slots, Sn = nw->slots;
  carl_status st = CARL_OK;
  unsigned char *hold = calloc((size_t)D * E, 1); /* [D, E] old device holds e */
  int32_t *perm = malloc((size_t)D * sizeof *perm), *col = malloc((size_t)P * sizeof *col);
  int32_t *table = malloc((size_t)D * Sn * sizeof *table);
  double *cost = malloc((size_t)P * P * sizeof *cost), *sent = calloc((size_t)D, sizeof *sent), *recv = calloc((size_t)D, sizeof *recv);
  double *sent_t = calloc((size_t)D, sizeof *sent_t), *recv_t = calloc((size_t)D, sizeof *recv_t);
  unsigned char *take = malloc((size_t)Sn);
  if (!hold || !perm || !col || !table || !cost || !sent || !recv || !sent_t || !recv_t || !take) {
    st = carl_fail(CARL_ERR_NOMEM, "migration: out of memory");
    goto out;
  }
  for (int d = 0; d < D; d++)
    for (int s = 0; s < So; s++) {
      int e = old->slot_expert[(size_t)d * So + s];
      if (e >= 0) hold[(size_t)d * E + e] = 1;
    }
  /* 1. perm[new device] = physical device */
  for (int d = 0; d < D; d++) perm[d] = d;
  if (relabel && P > 1)
    for (int n = 0; n < N; n++) {
      for (int i = 0; i < P; i++)
        for (int j = 0; j < P; j++) {
          int kept = 0;
          for (int s = 0; s < Sn; s++) {
            int e = nw->slot_expert[(size_t)(n * P + i) * Sn + s];
            kept += e >= 0 && hold[(size_t)(n * P + j) * E + e];
          }
          cost[i * P + j] = -kept;
        }
      if ((st = hungarian(cost, P, col)) != CARL_OK) goto out;
      for (int i = 0; i < P; i++) perm[n * P + i] = n * P + col[i];
    }
  /* 2. per device: staying experts keep their old slot, the rest fill the free slots in order */
  for (int i = 0; i < D; i++) {
    int d = perm[i];
    const int32_t *row = nw->slot_expert + (size_t)i * Sn;
    int32_t *dst = table + (size_t)d * Sn;
    for (int s = 0; s < Sn; s++) { dst[s] = -1; take[s] = 0; }
    for (int so = 0; so < So && so < Sn; so++) {
      int e = old->slot_expert[(size_t)d * So + so];
      if (e < 0) continue;
      for (int s = 0; s < Sn; s++)
        if (!take[s] && row[s] == e) { dst[so] = e; take[s] = 1; break; }
    }
    for (int s = 0, f = 0; s < Sn; s++) {
      if (take[s] || row[s] < 0) continue;
      while (dst[f] >= 0) f++;
      dst[f] = row[s];
    }
  }
  /* 3. moves */
  int64_t nm = 0;
  for (int i = 0; i < D * Sn; i++) {
    int e = table[i];
    if (e >= 0 && !hold[(size_t)(i / Sn) * E + e]) nm++;
  }
  m->moves = malloc((size_t)(nm > 0 ? nm : 1) * sizeof *m->moves);
  if (!m->moves) {
    st = carl_fail(CARL_ERR_NOMEM, "migration: out of memory for %lld moves", (long long)nm);
    goto out;
  }
  for (int d = 0; d < D; d++)
    for (int s = 0; s < Sn; s++) {
      int e = table[(size_t)d * Sn + s];
      if (e < 0) continue;
      if (hold[(size_t)d * E + e]) { m->kept++; continue; }
      int src = -1;
      double bc = INFINITY;
      for (int r = old->rep_off[e]; r < old->rep_off[e + 1]; r++) {
        int a = old->rep_dev[r];
        double c = carl_topo_cost(t, a, d);
        if (src < 0 || c < bc || (c == bc && sent[a] < sent[src])) { src = a; bc = c; }
      }
      CARL_ASSERT(src >= 0);
      int cls = carl_topo_link(t, src, d);
      m->moves[m->n_moves++] = (carl_move_t){e, src, d, s, cls};
      m->bytes[cls] += expert_bytes;
      m->total_bytes += expert_bytes;
      sent[src] += expert_bytes;
      recv[d] += expert_bytes;
      double secs = t->link[cls].GBps > 0 ? expert_bytes / (t->link[cls].GBps * 1e9) : 0.0;
      sent_t[src] += secs;
      recv_t[d] += secs;
    }
  for (int d = 0; d < D; d++) {
    if (sent_t[d] > m->time_s) m->time_s = sent_t[d];
    if (recv_t[d] > m->time_s) m->time_s = recv_t[d];
  }
  /* 4. the relabelled table becomes the new placement */
  memcpy(nw->slot_expert, table, (size_t)D * Sn * sizeof *table);
  st = carl_placement_index(nw);
out:
  if (st != CARL_OK) carl_migration_free(m);
  free(hold); free(perm); free(col); free(table); free(cost); free(sent); free(recv); free(sent_t); free(recv_t); free(take);
  return st;
}
