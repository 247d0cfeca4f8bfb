/* Internal helpers shared by the seed routers (carl, locmoe, fastermoe): where each token sits,
 * which experts each node holds, and the normalised copy cost to the nearest replica. */
#ifndef CARL_SEED_INTERNAL_H
#define CARL_SEED_INTERNAL_H

#include "carl/route.h"

typedef struct {
  int D, N;          /* devices, nodes (1, 1 without a topology) */
  int32_t *src;      /* [T] device of each token (checked to lie in [0, D)) */
  int32_t *node;     /* [T] node of each token */
  uint8_t *local;    /* [N, E] 1: the expert has a replica on the node */
  int32_t *nlocal;   /* [N] experts with a replica on the node */
  float *cost;       /* [D, E] c^(a, e) to the nearest replica of e (want_cost), else NULL */
  float *cost_node;  /* [D, N, E] c^ from device a to e's nearest replica inside node n, +inf when n
                        holds none (want_node_cost), else NULL */
} carl__seed_topo_t;

/* Fills st from in (topology, placement, src), its arrays in the arena a (the router's per-route
 * scratch: valid until the next route); errors name the offending input. */
carl_status carl__seed_topo(carl_arena_t *a, const carl_route_in_t *in, int want_cost, int want_node_cost,
                            carl__seed_topo_t *st);

/* Finish a selection: renormalise each token's weights when renorm (as the fused top-k kernel does:
 * float sum in slot order, multiply by its inverse), then keep at most C pairs per expert (C > 0;
 * C = 0: dropless) dropping the lowest prio first. Sets out->capacity and out->dropped. */
carl_status carl__seed_finish(int64_t T, int k, int E, int64_t C, int renorm, int32_t *experts /* [T, k] */,
                              float *weights /* [T, k] */, const float *prio /* [T, k] */, carl_route_out_t *out);
/* Sort one token's k experts by score s[e] descending (ties: lower expert id). */
void carl__sort_by_score(int32_t *ex /* [k] */, int k, const float *s /* [E] */);
/* Sort each token's slots by weight descending (ties: lower expert id; dropped slots last). */
void carl__seed_sort_slots(int64_t T, int k, int32_t *experts /* [T, k] */, float *weights /* [T, k] */);

#endif
