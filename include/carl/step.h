/* carl/step.h: the one assembly of a step's decision path: route -> plan -> exec -> statistics
 * (loads all-reduced through the executor; routers update from the global loads) -> every R
 * steps place + migrate. The simulator, `carl route` and the trainer all run their steps here.
 *
 * Usage (one MoE layer per layer index; the caller owns the routers and the executor):
 *   carl_step_opts_t o;
 *   carl_step_opts_default(&o);
 *   o.topo = &topo; o.layers = L; o.E = E; o.k = k; o.routers = routers; o.exec = ex;
 *   o.refresh_every = 100;                                    // 0: static placement
 *   carl_step_t *s;
 *   CARL_TRY(carl_step_create(&o, &s));
 *   for (step ...) {
 *     for (l ...) {
 *       carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = src, .step = step};
 *       CARL_TRY(carl_step_route(s, l, &in, &out));           // sets in.topo/in.place, builds the plan
 *       // executors: carl_exec_dispatch(ex, carl_step_plan(s, l), ...), experts, combine
 *       CARL_TRY(carl_step_observe(s, l, &in, &out));         // global loads -> router update, stats
 *     }
 *     CARL_TRY(carl_step_end(s, step, &refresh));             // every R steps: place + migrate
 *   }
 *   carl_step_free(s);
 *
 * Placement refresh: every refresh_every steps (after steps R-1, 2R-1, ...) each layer's placement
 * is recomputed from its accumulated statistics (carl_place_stats_*: source-node x expert traffic,
 * loads, co-activation; EMA with stats_decay) by place_opts.algo with the current slots per device,
 * its devices relabelled inside each node to keep experts in place (carl_place_migrate, relabel
 * 1), and the registered tensors are moved through the executor (carl_exec_migrate).
 * Ownership: the step owns its placements, plans, costs and statistics; routers, executor and
 * topology are borrowed and must outlive it.
 */
#ifndef CARL_STEP_H
#define CARL_STEP_H

#include "carl/exec.h"
#include "carl/place.h"
#include "carl/plan.h"
#include "carl/route.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const carl_topo_t *topo;        /* required */
  int layers, E, k;
  carl_router_t *const *routers;  /* [layers], borrowed */
  const carl_placement_t *place;  /* initial placement of every layer (copied); NULL: contiguous */
  carl_plan_mode mode;            /* flat or hierarchical dispatch */
  size_t token_bytes;             /* bytes of one hidden row, for the cost */
  carl_exec_t *exec;              /* borrowed; NULL: a sim executor owned by the step */
  int64_t refresh_every;          /* 0: static placement */
  carl_place_opts_t place_opts;   /* refresh algorithm and its options (slots: the placement's) */
  double stats_decay;             /* EMA decay of the placement statistics, [0, 1) */
  double expert_bytes;            /* weights + optimizer state of one expert (migration cost) */
} carl_step_opts_t;

/* Defaults: flat, token_bytes 4, no refresh, the traffic algorithm, stats_decay 0.9. */
void carl_step_opts_default(carl_step_opts_t *o);

typedef struct carl_step carl_step_t;

carl_status carl_step_create(const carl_step_opts_t *o, carl_step_t **out);
void carl_step_free(carl_step_t *s);

/* Route layer l: fills in->topo and in->place (the layer's current placement), routes with the
 * layer's router, builds the plan (rows when the executor moves data) and prices it into the
 * layer's cost (reset first). */
carl_status carl_step_route(carl_step_t *s, int layer, carl_route_in_t *in, carl_route_out_t *out);
/* After the layer's route (in training: after its backward): the kept (token, slot) pairs per
 * expert are all-reduced through the executor and given to the router's update as the global
 * loads (out->global_load); the placement statistics take this step's decisions. */
carl_status carl_step_observe(carl_step_t *s, int layer, const carl_route_in_t *in, carl_route_out_t *out);

typedef struct {
  int refreshed;        /* 1 when the placements were recomputed at this step */
  double migrate_s;     /* migration time of this step, summed over layers (carl_migration_t.time_s) */
  double migrate_bytes; /* bytes moved, summed over layers */
  int64_t moves;        /* slot copies, summed over layers */
} carl_step_refresh_t;

/* End of step `step` (0-based). With refresh_every R > 0 and (step + 1) % R == 0 and
 * step + 1 < last (last: the run's step count, or 0 for no limit), recompute and migrate. */
carl_status carl_step_end(carl_step_t *s, int64_t step, int64_t last, carl_step_refresh_t *info);

/* Run the step on another executor (borrowed, one process; e.g. the same data moved to a GPU):
 * placements, plans and statistics are kept. The tensors of every layer are set again after it
 * (carl_step_set_tensors) when the new executor holds them elsewhere. */
carl_status carl_step_set_exec(carl_step_t *s, carl_exec_t *ex);

/* Tensors of layer l moved with their experts at a refresh: each [D * S, numel] in slot order. */
carl_status carl_step_set_tensors(carl_step_t *s, int layer, const carl_exec_tensor_t *t, int n);

/* Replace every layer's placement (e.g. from a checkpoint) without moving tensors. */
carl_status carl_step_set_placement(carl_step_t *s, int layer, const carl_placement_t *p);

/* The placement statistics (refresh_every > 0) to and from DIR (carl_place_stats_save/load), for
 * checkpoints: a resumed run refreshes as the uninterrupted one would. */
carl_status carl_step_stats_save(const carl_step_t *s, const char *dir);
carl_status carl_step_stats_load(carl_step_t *s, const char *dir);

const carl_placement_t *carl_step_placement(const carl_step_t *s, int layer);
const carl_plan_t *carl_step_plan(const carl_step_t *s, int layer);
const carl_cost_t *carl_step_cost(const carl_step_t *s, int layer);
carl_exec_t *carl_step_exec(carl_step_t *s);
const carl_place_stats_t *carl_step_stats(const carl_step_t *s);

/* ---- per-step metrics (ALGORITHMS.md section 3), one function for every caller --------------- */
typedef struct {
  double skew_expert, skew_device, skew_node; /* max/mean load */
  double cv_expert;                           /* std/mean of expert loads */
  double drop_rate;                           /* dropped (token, slot) pairs / (T k) */
  double retained;                            /* mean_t sum_{S_t} s / sum_{TopK(s_t)} s */
  double jaccard;                             /* mean_t |S_t & TopK(s_t)| / |S_t | TopK(s_t)| */
  double entropy;                             /* mean_t -sum_e s log s (nats) */
} carl_step_metrics_t;

/* Loads count kept (token, expert) pairs; a device's load is that of its slots (an expert with
 * replicas spreads its load equally over them), a node's the sum of its devices. score: 0 softmax,
 * 1 sigmoid (the router's score function, for retained mass, Jaccard and entropy). The loads are
 * also written to load_expert [E], load_device [D], load_node [N] when those are not NULL. */
carl_status carl_step_metrics(const carl_topo_t *topo, const carl_placement_t *pl, int64_t T, int E, int k, int score,
                              const float *z /* [T, E] */, const int32_t *experts /* [T, k] */, carl_step_metrics_t *m,
                              double *load_expert, double *load_device, double *load_node);

#ifdef __cplusplus
}
#endif
#endif
