/* Token sources, node-local expert sets and nearest-replica costs for the seed routers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "route/router_impl.h"
#include "route/seed_internal.h"

carl_status carl__seed_topo(carl_arena_t *a, const carl_route_in_t *in, int want_cost, int want_node_cost,
                             carl__seed_topo_t *st) {
  memset(st, 0, sizeof *st);
  const carl_topo_t *tp = in->topo;
  const int E = in->E;
  const int64_t T = in->T;
  int D = tp ? tp->devices : 1, N = tp ? tp->nodes : 1;
  if (tp && (D < 1 || N < 1 || tp->devices_per_node < 1 || D != N * tp->devices_per_node))
    return carl_fail(CARL_ERR_INVALID, "topo: %d devices, %d nodes x %d devices per node is inconsistent", D, N,
                     tp->devices_per_node);
  const carl_placement_t *pl = in->place;
  if (pl) {
    if (pl->E != E) return carl_fail(CARL_ERR_SHAPE, "place: the placement has E=%d but the logits have E=%d", pl->E, E);
    if (pl->D != D) return carl_fail(CARL_ERR_SHAPE, "place: the placement has %d devices but the topology has %d", pl->D, D);
  }
  st->D = D;
  st->N = N;
  st->src = carl_arena_alloc(a, (size_t)(T ? T : 1) * sizeof *st->src);
  st->node = carl_arena_alloc(a, (size_t)(T ? T : 1) * sizeof *st->node);
  st->local = carl_arena_alloc(a, (size_t)N * E);
  st->nlocal = carl_arena_alloc(a, (size_t)N * sizeof *st->nlocal);
  if (want_cost) st->cost = carl_arena_alloc(a, (size_t)D * E * sizeof *st->cost);
  if (want_node_cost) st->cost_node = carl_arena_alloc(a, (size_t)D * N * E * sizeof *st->cost_node);
  int32_t *node_of = carl_arena_alloc(a, (size_t)D * sizeof *node_of);
  if (!st->src || !st->node || !st->local || !st->nlocal || (want_cost && !st->cost) ||
      (want_node_cost && !st->cost_node) || !node_of)
    return carl_fail(CARL_ERR_NOMEM, "routing topology: T=%lld D=%d E=%d", (long long)T, D, E);
  for (int d = 0; d < D; d++) node_of[d] = tp ? carl_topo_node(tp, d) : 0;
  if (in->src) {
    for (int64_t t = 0; t < T; t++) {
      const int32_t d = in->src[t];
      if (d < 0 || d >= D)
        return carl_fail(CARL_ERR_INVALID, "src[%lld]: device %d out of range [0, %d)", (long long)t, d, D);
      st->src[t] = d;
      st->node[t] = node_of[d];
    }
  } else { /* t * D / T = a for t in [ceil(a T / D), ceil((a + 1) T / D)) */
    for (int d = 0; d < D; d++)
      for (int64_t t = ((int64_t)d * T + D - 1) / D; t < ((int64_t)(d + 1) * T + D - 1) / D; t++) {
        st->src[t] = d;
        st->node[t] = node_of[d];
      }
  }
  /* (device, expert) pairs of the placement: replicas allowed */
  int slots = pl ? pl->slots : 1;
  for (int d = 0; d < D; d++)
    for (int j = 0; j < slots; j++) {
      int e;
      if (pl) e = pl->slot_expert[(size_t)d * slots + j];
      else e = -1; /* contiguous: filled below */
      if (e < -1 || e >= E)
        return carl_fail(CARL_ERR_INVALID, "place: device %d slot %d holds expert %d, out of range [0, %d)", d, j, e, E);
      if (e >= 0) st->local[(size_t)(tp ? carl_topo_node(tp, d) : 0) * E + e] = 1;
    }
  if (!pl)
    for (int e = 0; e < E; e++) {
      int d = (int)((int64_t)e * D / E);
      st->local[(size_t)(tp ? carl_topo_node(tp, d) : 0) * E + e] = 1;
    }
  for (int n = 0; n < N; n++)
    for (int e = 0; e < E; e++) st->nlocal[n] += st->local[(size_t)n * E + e];
  if (!want_cost && !want_node_cost) return CARL_OK;
  for (size_t i = 0; want_cost && i < (size_t)D * E; i++) st->cost[i] = INFINITY;
  for (size_t i = 0; want_node_cost && i < (size_t)D * N * E; i++) st->cost_node[i] = INFINITY;
  for (int a = 0; a < D; a++) {
    if (!pl) { /* contiguous placement: expert x sits on device x * D / E only */
      for (int x = 0; x < E; x++) {
        const int b = (int)((int64_t)x * D / E);
        const float c = tp ? (float)carl_topo_cost(tp, a, b) : 0.0f;
        if (want_cost) st->cost[(size_t)a * E + x] = c;
        if (want_node_cost) st->cost_node[((size_t)a * N + node_of[b]) * E + x] = c;
      }
      continue;
    }
    for (int b = 0; b < D; b++) {
      const float c = tp ? (float)carl_topo_cost(tp, a, b) : 0.0f;
      for (int j = 0; j < slots; j++) {
        const int e = pl->slot_expert[(size_t)b * slots + j];
        if (e < 0) continue;
        if (want_cost && c < st->cost[(size_t)a * E + e]) st->cost[(size_t)a * E + e] = c;
        float *cn = want_node_cost ? &st->cost_node[((size_t)a * N + node_of[b]) * E + e] : NULL;
        if (cn && c < *cn) *cn = c;
      }
    }
  }
  for (int e = 0; want_cost && e < E; e++)
    if (isinf(st->cost[e])) return carl_fail(CARL_ERR_INVALID, "place: expert %d has no device", e);
  return CARL_OK;
}

carl_status carl__seed_finish(int64_t T, int k, int E, int64_t C, int renorm, int32_t *experts, float *weights,
                              const float *prio, carl_route_out_t *out) {
  if (renorm)
    for (int64_t t = 0; t < T; t++) {
      float *w = weights + t * k, a = 0;
      for (int j = 0; j < k; j++) a += w[j];
      if (a > 0) {
        float inv = 1.0f / a;
        for (int j = 0; j < k; j++) w[j] *= inv;
      }
    }
  out->capacity = C;
  if (C <= 0) return CARL_OK;
  return carl_kern_apply_capacity(T, k, E, C, experts, prio, weights, renorm, &out->dropped);
}

void carl__sort_by_score(int32_t *ex, int k, const float *s) {
  for (int i = 1; i < k; i++) {
    int32_t e = ex[i];
    int p = i;
    while (p > 0 && (s[ex[p - 1]] < s[e] || (s[ex[p - 1]] == s[e] && ex[p - 1] > e))) {
      ex[p] = ex[p - 1];
      p--;
    }
    ex[p] = e;
  }
}

void carl__seed_sort_slots(int64_t T, int k, int32_t *experts, float *weights) {
  for (int64_t t = 0; t < T; t++) carl_kern_slots_by_gate(k, experts + t * k, weights + t * k, NULL);
}
