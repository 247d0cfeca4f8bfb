/* The one step (carl/step.h): route -> plan -> (executor) -> statistics -> every R steps place +
 * migrate. No other file assembles these. */
#include <stdlib.h>
#include <string.h>

#include "carl/balance.h"
#include "carl/step.h"

#define STEP_MAX_TENSORS 8

typedef struct {
  carl_placement_t place;
  carl_plan_t plan;
  carl_cost_t cost;
  carl_exec_tensor_t tensors[STEP_MAX_TENSORS];
  int ntensors;
} step_layer_t;

struct carl_step {
  carl_step_opts_t o;
  carl_exec_t *exec;
  int own_exec;
  step_layer_t *layer; /* [layers] */
  carl_place_stats_t stats;
  int have_stats;
  double *load;        /* [E] scratch: global loads of the layer being observed */
  int32_t *src_node;   /* [cap] scratch */
  int64_t src_cap;
};

void carl_step_opts_default(carl_step_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->mode = CARL_PLAN_FLAT;
  o->token_bytes = 4;
  carl_place_opts_default(&o->place_opts);
  o->place_opts.algo = CARL_PLACE_TRAFFIC;
  o->stats_decay = 0.9;
}

void carl_step_free(carl_step_t *s) {
  if (!s) return;
  for (int l = 0; s->layer && l < s->o.layers; l++) {
    carl_placement_free(&s->layer[l].place);
    carl_plan_free(&s->layer[l].plan);
    carl_cost_free(&s->layer[l].cost);
  }
  if (s->have_stats) carl_place_stats_free(&s->stats);
  if (s->own_exec) carl_exec_free(s->exec);
  free(s->layer);
  free(s->load);
  free(s->src_node);
  free(s);
}

static carl_status step_copy_placement(carl_placement_t *dst, const carl_placement_t *src) {
  return carl_placement_from_table(dst, src->E, src->D, src->slots, src->slot_expert);
}

carl_status carl_step_create(const carl_step_opts_t *o, carl_step_t **out) {
  *out = NULL;
  if (!o || !o->topo) return carl_fail(CARL_ERR_INVALID, "step: no topology");
  if (o->layers < 1 || o->E < 1 || o->k < 1 || o->k > o->E)
    return carl_fail(CARL_ERR_INVALID, "step: layers %d, E %d, k %d (need layers >= 1 and 1 <= k <= E)", o->layers,
                     o->E, o->k);
  if (!o->routers) return carl_fail(CARL_ERR_INVALID, "step: no routers");
  for (int l = 0; l < o->layers; l++)
    if (!o->routers[l]) return carl_fail(CARL_ERR_INVALID, "step: layer %d has no router", l);
  if (o->token_bytes == 0) return carl_fail(CARL_ERR_INVALID, "step: token_bytes must be > 0");
  if (o->refresh_every < 0) return carl_fail(CARL_ERR_INVALID, "step: refresh_every %lld < 0", (long long)o->refresh_every);
  if (!(o->stats_decay >= 0 && o->stats_decay < 1))
    return carl_fail(CARL_ERR_INVALID, "step: stats_decay %g is outside [0, 1)", o->stats_decay);
  if (o->place && (o->place->E != o->E || o->place->D != o->topo->devices))
    return carl_fail(CARL_ERR_INVALID, "step: placement of %d experts on %d devices, the step has %d on %d", o->place->E,
                     o->place->D, o->E, o->topo->devices);
  carl_step_t *s = calloc(1, sizeof *s);
  if (!s) return carl_fail(CARL_ERR_NOMEM, "step: out of memory");
  s->o = *o;
  carl_status st = CARL_OK;
  s->layer = calloc((size_t)o->layers, sizeof *s->layer);
  s->load = malloc(sizeof(double) * (size_t)o->E);
  if (!s->layer || !s->load) {
    st = carl_fail(CARL_ERR_NOMEM, "step: out of memory");
    goto fail;
  }
  for (int l = 0; l < o->layers && st == CARL_OK; l++) {
    step_layer_t *L = &s->layer[l];
    st = o->place ? step_copy_placement(&L->place, o->place) : carl_placement_contiguous(&L->place, o->E, o->topo->devices);
    if (st == CARL_OK) st = carl_cost_init(&L->cost, o->topo);
  }
  if (st != CARL_OK) goto fail;
  if (o->exec) {
    s->exec = o->exec;
  } else {
    if ((st = carl_exec_sim_create(&s->exec)) != CARL_OK) goto fail;
    s->own_exec = 1;
  }
  if (o->refresh_every > 0) {
    if ((st = carl_place_stats_init(&s->stats, o->layers, o->E, o->topo->nodes, o->stats_decay)) != CARL_OK) goto fail;
    s->have_stats = 1;
  }
  *out = s;
  return CARL_OK;
fail:
  carl_step_free(s);
  return st;
}

carl_status carl_step_set_exec(carl_step_t *s, carl_exec_t *ex) {
  if (!s || !ex) return carl_fail(CARL_ERR_INVALID, "step: set_exec with a NULL argument");
  if (carl_exec_size(ex) != carl_exec_size(s->exec))
    return carl_fail(CARL_ERR_INVALID, "step: the executor '%s' runs %d processes, the step's '%s' %d", carl_exec_name(ex),
                     carl_exec_size(ex), carl_exec_name(s->exec), carl_exec_size(s->exec));
  if (s->own_exec) carl_exec_free(s->exec);
  s->exec = ex;
  s->own_exec = 0;
  s->o.exec = ex;
  return CARL_OK;
}

static carl_status step_layer_check(const carl_step_t *s, int layer) {
  if (layer < 0 || layer >= s->o.layers)
    return carl_fail(CARL_ERR_INVALID, "step: layer %d is outside 0..%d", layer, s->o.layers - 1);
  return CARL_OK;
}

carl_status carl_step_route(carl_step_t *s, int layer, carl_route_in_t *in, carl_route_out_t *out) {
  CARL_TRY(step_layer_check(s, layer));
  step_layer_t *L = &s->layer[layer];
  if (in->E != s->o.E) return carl_fail(CARL_ERR_SHAPE, "step: logits have %d experts, the step has %d", in->E, s->o.E);
  in->topo = s->o.topo;
  in->place = &L->place;
  CARL_TRY(carl_router_route(s->o.routers[layer], in, out));
  const carl_plan_detail detail = carl_exec_moves_data(s->exec) ? CARL_PLAN_ROWS : CARL_PLAN_COUNTS;
  CARL_TRY(carl_plan_build(s->o.topo, &L->place, out->experts, in->src, in->T, s->o.k, s->o.mode, -1, detail, &L->plan));
  carl_cost_reset(&L->cost);
  return carl_plan_cost(s->o.topo, &L->plan, s->o.token_bytes, &L->cost);
}

carl_status carl_step_observe(carl_step_t *s, int layer, const carl_route_in_t *in, carl_route_out_t *out) {
  CARL_TRY(step_layer_check(s, layer));
  const int E = s->o.E, k = s->o.k;
  const int64_t T = in->T;
  /* several processes hold the same decision of every process's tokens: each counts its own
   * tokens [t0, t0 + T / size) and the all-reduce adds them up (one process: all of them) */
  const int np = carl_exec_size(s->exec);
  const int64_t Tr = T / np, t0 = Tr * carl_exec_rank(s->exec);
  carl_load_experts(out->experts + t0 * k, Tr, k, E, s->load);
  CARL_TRY(carl_exec_allreduce(s->exec, s->load, E));
  out->global_load = s->load;
  carl_status st = carl_router_update(s->o.routers[layer], in, out);
  out->global_load = NULL;
  CARL_TRY(st);
  if (!s->have_stats) return CARL_OK;
  if (T > s->src_cap) {
    int32_t *p = realloc(s->src_node, sizeof(int32_t) * (size_t)T);
    if (!p) return carl_fail(CARL_ERR_NOMEM, "step: out of memory for %lld tokens", (long long)T);
    s->src_node = p;
    s->src_cap = T;
  }
  const carl_topo_t *t = s->o.topo;
  for (int64_t i = 0; i < T; i++)
    s->src_node[i] = carl_topo_node(t, in->src ? in->src[i] : (int)(i * t->devices / T));
  return carl_place_stats_add(&s->stats, layer, out->experts, s->src_node, T, k);
}

carl_status carl_step_end(carl_step_t *s, int64_t step, int64_t last, carl_step_refresh_t *info) {
  carl_step_refresh_t r = {0};
  const int64_t R = s->o.refresh_every;
  if (R > 0 && (step + 1) % R == 0 && (last <= 0 || step + 1 < last)) {
    for (int l = 0; l < s->o.layers; l++) {
      step_layer_t *L = &s->layer[l];
      carl_place_input_t in;
      CARL_TRY(carl_place_stats_layer(&s->stats, l, &in));
      in.prev = &L->place;
      carl_place_opts_t o = s->o.place_opts;
      o.slots = L->place.slots;
      o.replicas = 0;
      carl_placement_t np;
      CARL_TRY(carl_errctx(carl_place_compute(s->o.topo, &in, &o, &np), "refresh of layer %d", l));
      carl_migration_t mig;
      carl_status st = carl_place_migrate(s->o.topo, &L->place, &np, 1, s->o.expert_bytes, &mig);
      if (st == CARL_OK) {
        st = carl_exec_migrate(s->exec, &L->place, &mig, L->tensors, L->ntensors);
        r.migrate_s += mig.time_s;
        r.migrate_bytes += mig.total_bytes;
        r.moves += mig.n_moves;
        carl_migration_free(&mig);
      }
      if (st != CARL_OK) {
        carl_placement_free(&np);
        return carl_errctx(st, "refresh of layer %d", l);
      }
      carl_placement_free(&L->place);
      L->place = np;
    }
    r.refreshed = 1;
  }
  if (info) *info = r;
  return CARL_OK;
}

carl_status carl_step_set_tensors(carl_step_t *s, int layer, const carl_exec_tensor_t *t, int n) {
  CARL_TRY(step_layer_check(s, layer));
  if (n < 0 || n > STEP_MAX_TENSORS) return carl_fail(CARL_ERR_INVALID, "step: %d tensors (at most %d)", n, STEP_MAX_TENSORS);
  memcpy(s->layer[layer].tensors, t, sizeof *t * (size_t)n);
  s->layer[layer].ntensors = n;
  return CARL_OK;
}

carl_status carl_step_set_placement(carl_step_t *s, int layer, const carl_placement_t *p) {
  CARL_TRY(step_layer_check(s, layer));
  step_layer_t *L = &s->layer[layer];
  if (p->E != s->o.E || p->D != s->o.topo->devices || p->slots != L->place.slots)
    return carl_fail(CARL_ERR_INVALID, "placement of %d experts on %d devices x %d slots, the step has %d on %d x %d",
                     p->E, p->D, p->slots, s->o.E, s->o.topo->devices, L->place.slots);
  carl_placement_t np;
  CARL_TRY(step_copy_placement(&np, p));
  carl_placement_free(&L->place);
  L->place = np;
  return CARL_OK;
}

carl_status carl_step_stats_save(const carl_step_t *s, const char *dir) {
  if (!s->have_stats) return carl_fail(CARL_ERR_STATE, "step: no placement statistics (no refresh)");
  return carl_place_stats_save(&s->stats, dir);
}

carl_status carl_step_stats_load(carl_step_t *s, const char *dir) {
  if (!s->have_stats) return carl_fail(CARL_ERR_STATE, "step: no placement statistics (no refresh)");
  carl_place_stats_t in;
  int has_traffic = 0, has_coact = 0;
  CARL_TRY(carl_place_stats_load(dir, s->o.stats_decay, &in, &has_traffic, &has_coact));
  if (in.L != s->stats.L || in.E != s->stats.E || in.N != s->stats.N) {
    carl_status st = carl_fail(CARL_ERR_SHAPE, "%s: statistics of %d layers x %d experts x %d nodes, the step has %d x %d x %d",
                               dir, in.L, in.E, in.N, s->stats.L, s->stats.E, s->stats.N);
    carl_place_stats_free(&in);
    return st;
  }
  carl_place_stats_free(&s->stats);
  s->stats = in;
  return CARL_OK;
}

const carl_placement_t *carl_step_placement(const carl_step_t *s, int layer) {
  return layer >= 0 && layer < s->o.layers ? &s->layer[layer].place : NULL;
}
const carl_plan_t *carl_step_plan(const carl_step_t *s, int layer) {
  return layer >= 0 && layer < s->o.layers ? &s->layer[layer].plan : NULL;
}
const carl_cost_t *carl_step_cost(const carl_step_t *s, int layer) {
  return layer >= 0 && layer < s->o.layers ? &s->layer[layer].cost : NULL;
}
carl_exec_t *carl_step_exec(carl_step_t *s) { return s->exec; }
const carl_place_stats_t *carl_step_stats(const carl_step_t *s) { return s->have_stats ? &s->stats : NULL; }
