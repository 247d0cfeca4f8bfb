/* grouplimited: device-limited (DeepSeek-V2) and node-limited (DeepSeek-V3) routing.
 * Groups are the devices (level 0) or nodes (level 1) holding the experts (home replica), or, with
 * the option groups = G > 0, G contiguous blocks of E/G experts (Megatron's num_groups).
 * Group score = sum of the top (k/M) scores in the group (at least 1); keep the top M groups
 * (lower group index on ties); S_t = TopK(s) inside them; g = s at S_t, renormalised.
 * M = 0 (default) means M = min(number of groups, k). E not divisible by the number of groups (of
 * either kind, with or without a placement) is an error at route time. */
#include <stdlib.h>

#include "route/router_impl.h"

typedef struct {
  int level, M, groups;
} gl_t;

static carl_status gl_init(carl_router_t *r) {
  gl_t *st = calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "grouplimited: out of memory");
  r->state = st;
  CARL_TRY(carl_router_opt_int(r, "level", 0, 1, &st->level));
  CARL_TRY(carl_router_opt_int(r, "M", 0, 1 << 20, &st->M));
  CARL_TRY(carl_router_opt_int(r, "groups", 0, 1 << 20, &st->groups));
  return CARL_OK;
}

static carl_status gl_describe(carl_router_t *r, const carl_route_in_t *in, carl_select_t *sel) {
  gl_t *st = r->state;
  const int E = in->E, k = (int)r->opt[CARL_OPT_K];
  int32_t *group = carl_arena_alloc(&r->scratch, (size_t)E * sizeof *group);
  if (!group) return carl_fail(CARL_ERR_NOMEM, "grouplimited: out of memory");
  int G;
  if (st->groups > 0) {
    G = st->groups;
    if (G > E || E % G != 0)
      return carl_fail(CARL_ERR_INVALID, "groups: E = %d experts are not divisible into %d groups", E, G);
    for (int e = 0; e < E; e++) group[e] = e / (E / G);
  } else {
    /* E must split evenly over the groups whatever the placement (the command line always passes
     * one): every expert has one home group, so E % G != 0 leaves groups of different sizes */
    CARL_TRY(carl_route_expert_groups(in, st->level, group, &G));
    if (E % G != 0)
      return carl_fail(CARL_ERR_INVALID,
                       "grouplimited: E = %d experts are not divisible over %d %s (level = %d); use a multiple of %d "
                       "experts, or groups = G with G dividing E",
                       E, G, st->level ? "nodes" : "devices", st->level, G);
  }
  int M = st->M > 0 ? st->M : (G < k ? G : k);
  if (M > G)
    return carl_fail(CARL_ERR_INVALID, "M: %d groups kept but there are only %d %s", M, G,
                     st->groups > 0 ? "groups" : (st->level ? "nodes" : "devices"));
  /* the M smallest groups must hold at least k experts */
  int *cnt = carl_arena_alloc(&r->scratch, (size_t)G * sizeof *cnt);
  if (!cnt) return carl_fail(CARL_ERR_NOMEM, "grouplimited: out of memory");
  for (int e = 0; e < E; e++) cnt[group[e]]++;
  int minc = E;
  for (int g = 0; g < G; g++) minc = cnt[g] < minc ? cnt[g] : minc;
  if (minc * M < k)
    return carl_fail(CARL_ERR_INVALID, "M: %d groups of %d experts cannot hold k = %d experts", M, minc, k);
  memset(sel, 0, sizeof *sel);
  sel->group = group;
  sel->ngroups = G;
  sel->M = M;
  sel->per_group = k / M > 0 ? k / M : 1;
  return CARL_OK;
}

static carl_status gl_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  carl_select_t sel;
  CARL_TRY(gl_describe(r, in, &sel));
  return carl_route_select(r, in, out, &sel);
}

static void gl_free(carl_router_t *r) { free(r->state); }

static const carl_opt_t gl_opts[] = {
    {"level", 1, "groups: 0 devices (DeepSeek-V2 device-limited), 1 nodes (DeepSeek-V3 node-limited)"},
    {"M", 0, "groups kept per token; 0 = min(number of groups, k)"},
    {"groups", 0, "0: groups from the topology; G > 0: G contiguous blocks of E/G experts"},
};

const carl_router_impl_t carl__router_grouplimited = {
    .name = "grouplimited",
    .help = "device- or node-limited top-k: keep the M groups with the best top-(k/M) score sums (DeepSeek)",
    .opts = gl_opts,
    .nopts = 3,
    .init = gl_init,
    .route = gl_route,
    .free = gl_free,
    .describe = gl_describe,
};
