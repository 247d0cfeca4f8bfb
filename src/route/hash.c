/* hash: Hash layers (Roller et al. 2021). Each token goes to one expert fixed by its vocabulary id;
 * gate g = 1 (no router parameters, no gradient to the logits, which are not read).
 *   balanced = 0: random table, expert(id) = floor(U(hash_seed, id) * E) (Philox, stream HASH);
 *   balanced = 1: frequency-balanced table, built from the token counts of the first routed batch
 *     (or from carl_router_hash_build / a loaded state): ids in decreasing count go greedily to
 *     the least-loaded expert. Ids the table has not seen use the random hash.
 * Needs in->token_ids. k must be 1. State: the table [V] int32 (-1 = not in the table). */
#include <stdlib.h>

#include "route/router_impl.h"

typedef struct {
  int balanced;
  uint64_t seed;
  int E;          /* experts the table was built for (0: no table) */
  int64_t V;
  int32_t *table; /* [V] */
} hash_t;

static carl_status hash_init(carl_router_t *r) {
  hash_t *st = calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "hash: out of memory");
  r->state = st;
  int seed;
  CARL_TRY(carl_router_opt_int(r, "balanced", 0, 1, &st->balanced));
  CARL_TRY(carl_router_opt_int(r, "hash_seed", 0, 2147483647, &seed));
  st->seed = (uint64_t)seed;
  if ((int)r->opt[CARL_OPT_K] != 1)
    return carl_fail(CARL_ERR_INVALID, "hash: k = %d, must be 1 (a hash layer sends each token to one expert)",
                     (int)r->opt[CARL_OPT_K]);
  return CARL_OK;
}

static inline int32_t hash_random(const hash_t *st, int64_t id, int E) {
  int32_t e = (int32_t)(carl_rng_uniform64(st->seed, CARL_STREAM_HASH, (uint64_t)id) * E);
  return e < E ? e : E - 1;
}

typedef struct {
  int64_t count, id;
} hash_item_t;

static int hash_item_cmp(const void *a, const void *b) {
  const hash_item_t *x = a, *y = b;
  if (x->count != y->count) return x->count > y->count ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

carl_status carl_router_hash_build(carl_router_t *r, const int64_t *counts, int64_t V, int E) {
  if (!r || strcmp(r->impl->name, "hash") != 0) return carl_fail(CARL_ERR_INVALID, "hash table: not a hash router");
  if (!counts || V < 1 || E < 1) return carl_fail(CARL_ERR_INVALID, "hash table: counts NULL, V = %lld or E = %d", (long long)V, E);
  hash_t *st = r->state;
  hash_item_t *items = malloc((size_t)V * sizeof *items);
  double *load = calloc((size_t)E, sizeof *load);
  int32_t *table = malloc((size_t)V * sizeof *table);
  if (!items || !load || !table) {
    free(items);
    free(load);
    free(table);
    return carl_fail(CARL_ERR_NOMEM, "hash table: out of memory (V = %lld)", (long long)V);
  }
  int64_t n = 0;
  for (int64_t i = 0; i < V; i++) {
    table[i] = -1;
    if (counts[i] < 0) {
      free(items);
      free(load);
      free(table);
      return carl_fail(CARL_ERR_INVALID, "hash table: count of id %lld is negative", (long long)i);
    }
    if (counts[i] > 0) items[n++] = (hash_item_t){counts[i], i};
  }
  qsort(items, (size_t)n, sizeof *items, hash_item_cmp);
  for (int64_t i = 0; i < n; i++) {
    int best = 0;
    for (int e = 1; e < E; e++)
      if (load[e] < load[best]) best = e;
    table[items[i].id] = best;
    load[best] += (double)items[i].count;
  }
  free(items);
  free(load);
  free(st->table);
  st->table = table;
  st->V = V;
  st->E = E;
  return CARL_OK;
}

static carl_status hash_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  hash_t *st = r->state;
  const int64_t T = in->T;
  const int E = in->E;
  if (!in->token_ids) return carl_fail(CARL_ERR_INVALID, "token_ids: NULL (the hash router routes by token id)");
  int64_t maxid = -1;
  for (int64_t t = 0; t < T; t++) {
    if (in->token_ids[t] < 0) return carl_fail(CARL_ERR_INVALID, "token_ids: token %lld has id %d < 0", (long long)t, in->token_ids[t]);
    if (in->token_ids[t] > maxid) maxid = in->token_ids[t];
  }
  if (st->balanced && !st->table) {
    int64_t *counts = calloc((size_t)maxid + 1, sizeof *counts);
    if (!counts) return carl_fail(CARL_ERR_NOMEM, "hash: out of memory");
    for (int64_t t = 0; t < T; t++) counts[in->token_ids[t]]++;
    carl_status rc = carl_router_hash_build(r, counts, maxid + 1, E);
    free(counts);
    CARL_TRY(rc);
  }
  if (st->table && st->E != E)
    return carl_fail(CARL_ERR_STATE, "hash: table built for E = %d experts, the logits have E = %d", st->E, E);
  for (int64_t t = 0; t < T; t++) {
    int64_t id = in->token_ids[t];
    int32_t e = st->table && id < st->V ? st->table[id] : -1;
    out->experts[t] = e >= 0 ? e : hash_random(st, id, E);
    out->weights[t] = 1.0f;
  }
  int64_t C = carl_kern_capacity(r->opt[CARL_OPT_CF], T, 1, E);
  if (C > 0) {
    float *prio = malloc((size_t)T * sizeof *prio);
    if (!prio) return carl_fail(CARL_ERR_NOMEM, "hash: out of memory");
    for (int64_t t = 0; t < T; t++) prio[t] = 1; /* equal: the later tokens are dropped first */
    out->capacity = C;
    carl_status rc = carl_kern_apply_capacity(T, 1, E, C, out->experts, prio, out->weights, 0, &out->dropped);
    free(prio);
    CARL_TRY(rc);
  }
  return CARL_OK;
}

/* Gates are constant 1: no gradient to the logits. */
static carl_status hash_backward(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out,
                                 const float *dweights, float *dlogits) {
  (void)r, (void)in, (void)out, (void)dweights, (void)dlogits;
  return CARL_OK;
}

static carl_status hash_init_all(carl_router_t *r) {
  r->backward = hash_backward;
  return hash_init(r);
}

static carl_status hash_save(const carl_router_t *r, const char *path) {
  const hash_t *st = r->state;
  if (!st->table) return carl_fail(CARL_ERR_STATE, "hash: no table to save (random hash, or no batch routed yet)");
  /* layout: [E, table[0..V-1]] */
  int32_t *buf = malloc((size_t)(st->V + 1) * sizeof *buf);
  if (!buf) return carl_fail(CARL_ERR_NOMEM, "hash: out of memory");
  buf[0] = st->E;
  memcpy(buf + 1, st->table, (size_t)st->V * sizeof *buf);
  carl_status rc = carl_route_state_save(path, "hash", CARL_STATE_I32, st->V + 1, buf);
  free(buf);
  return rc;
}

static carl_status hash_load(carl_router_t *r, const char *path) {
  hash_t *st = r->state;
  void *a = NULL;
  int64_t n = 0;
  CARL_TRY(carl_route_state_load(path, "hash", CARL_STATE_I32, -1, NULL, &a, &n));
  int32_t *buf = a;
  if (n < 2 || buf[0] < 1) {
    int32_t e0 = n > 0 ? buf[0] : 0;
    free(a);
    return carl_fail(CARL_ERR_STATE, "%s: hash table is empty or has E = %d", path, e0);
  }
  for (int64_t i = 1; i < n; i++)
    if (buf[i] < -1 || buf[i] >= buf[0]) {
      int32_t v = buf[i], e0 = buf[0];
      free(a);
      return carl_fail(CARL_ERR_STATE, "%s: table entry %lld is %d, outside -1..%d", path, (long long)(i - 1), v, e0 - 1);
    }
  int32_t *table = malloc((size_t)(n - 1) * sizeof *table);
  if (!table) {
    free(a);
    return carl_fail(CARL_ERR_NOMEM, "hash: out of memory");
  }
  memcpy(table, buf + 1, (size_t)(n - 1) * sizeof *table);
  free(st->table);
  st->table = table;
  st->V = n - 1;
  st->E = buf[0];
  free(a);
  return CARL_OK;
}

static void hash_free(carl_router_t *r) {
  hash_t *st = r->state;
  if (st) free(st->table);
  free(st);
}

static const carl_opt_t hash_opts[] = {
    {"k", 1, "experts per token (hash layers: 1)"},
    {"z_loss", 0, "router z-loss coefficient (the hash router has no router logits to regularise)"},
    {"balanced", 1, "1: frequency-balanced table from the first batch's token counts; 0: random table"},
    {"hash_seed", 0, "seed of the random table"},
};

const carl_router_impl_t carl__router_hash = {
    .name = "hash",
    .help = "Hash layers: expert fixed by the token id (random or frequency-balanced table), gate 1",
    .opts = hash_opts,
    .nopts = 4,
    .init = hash_init_all,
    .route = hash_route,
    .save = hash_save,
    .load = hash_load,
    .free = hash_free,
};
