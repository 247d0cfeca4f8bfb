/* Placement dispatcher: the registry of algorithms (name, code, what each needs), the option and
 * input checks shared by all of them, and the call. The algorithms live in their own files
 * (place_internal.h gives the layering). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"
#include "place_internal.h"

/* ---- registry ---------------------------------------------------------------------------------- */
enum { NEED_TRAFFIC = 1, NEED_COACT = 2 };
typedef struct {
  const char *name;
  carl__place_fn fn;
  int replicates; /* may use more slots than ceil(E/D) per device */
  int needs;      /* NEED_TRAFFIC | NEED_COACT */
  int sort_slots; /* ascending expert ids inside each device (the algorithm gives no slot order) */
} algo_entry;

/* indexed by carl_place_algo */
static const algo_entry registry[CARL_PLACE_NALGO] = {
    [CARL_PLACE_CONTIGUOUS] = {"contiguous", carl__place_contiguous, 0, 0, 0},
    [CARL_PLACE_ROUNDROBIN] = {"roundrobin", carl__place_roundrobin, 0, 0, 0},
    [CARL_PLACE_EPLB] = {"eplb", carl__place_eplb, 1, 0, 0},
    [CARL_PLACE_TRAFFIC] = {"traffic", carl__place_traffic, 1, NEED_TRAFFIC, 1},
    [CARL_PLACE_COACTIVATION] = {"coactivation", carl__place_coact, 1, NEED_COACT, 1},
    [CARL_PLACE_EPLB_NODUP] = {"eplb-nodup", carl__place_eplb_nodup, 1, 0, 0},
    [CARL_PLACE_SMARTMOE] = {"smartmoe", carl__place_smartmoe, 0, 0, 0},
};

const char *carl_place_algo_name(carl_place_algo a) {
  return (a >= 0 && (int)a < CARL_PLACE_NALGO) ? registry[a].name : "unknown";
}

carl_status carl_place_algo_parse(const char *name, carl_place_algo *out) {
  char list[256];
  size_t n = 0;
  list[0] = 0;
  for (int i = 0; i < CARL_PLACE_NALGO; i++) {
    if (name && !strcmp(name, registry[i].name)) {
      *out = (carl_place_algo)i;
      return CARL_OK;
    }
    int k = snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", registry[i].name);
    if (k > 0 && (size_t)k < sizeof list - n) n += (size_t)k;
  }
  return carl_fail(CARL_ERR_NOT_FOUND, "algorithm '%s' is unknown (%s)", name ? name : "(null)", list);
}

void carl_place_opts_default(carl_place_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->algo = CARL_PLACE_CONTIGUOUS;
  o->load_bound = 1.25;
  o->refine_passes = 8;
  o->seed = 1;
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
  if ((int)o->algo < 0 || (int)o->algo >= CARL_PLACE_NALGO)
    return carl_fail(CARL_ERR_NOT_FOUND, "algorithm %d is unknown", (int)o->algo);
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
  if (!registry[o->algo].replicates && S != (E + D - 1) / D) {
    char list[256];
    size_t n = 0;
    list[0] = 0;
    for (int i = 0; i < CARL_PLACE_NALGO; i++) {
      if (!registry[i].replicates) continue;
      int k = snprintf(list + n, sizeof list - n, "%s%s", n ? ", " : "", registry[i].name);
      if (k > 0 && (size_t)k < sizeof list - n) n += (size_t)k;
    }
    return carl_fail(CARL_ERR_INVALID, "replicas: algorithm '%s' places each expert once in ceil(E/D) = %d slots per device; "
                     "%d slots asked for (use %s for replicas)", registry[o->algo].name, (E + D - 1) / D, S, list);
  }
  if ((registry[o->algo].needs & NEED_TRAFFIC) && !in->traffic)
    return carl_fail(CARL_ERR_INVALID, "stats: algorithm '%s' needs the source-node x expert traffic (traffic.npy)", registry[o->algo].name);
  if ((registry[o->algo].needs & NEED_COACT) && !in->coact)
    return carl_fail(CARL_ERR_INVALID, "stats: algorithm '%s' needs the co-activation counts (coact.npy)", registry[o->algo].name);
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
  carl_status st = registry[o->algo].fn(t, in, o, S, table);
  if (st == CARL_OK && registry[o->algo].sort_slots) /* a canonical order inside each device */
    for (int d = 0; d < D; d++) qsort(table + (size_t)d * S, (size_t)S, sizeof *table, cmp_i32);
  if (st == CARL_OK) st = carl_placement_from_table(out, E, D, S, table);
  free(table);
  return st;
}
