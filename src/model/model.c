/* The MoE transformer: parameter layout, init, forward, backward, clipping, AdamW (carl/model.h). */
#include "carl/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/exec.h"
#include "carl/step.h"
#include "model/model_internal.h"
#include "model/moe.h"

/* ---- config ------------------------------------------------------------------------------- */
void carl_model_config_default(carl_model_config_t *c) {
  memset(c, 0, sizeof *c);
  c->vocab = 256;
  c->max_seq = 128;
  c->d_model = 128;
  c->n_layers = 2;
  c->n_heads = 4;
  c->d_ff = 256;
  c->n_experts = 8;
  c->top_k = 2;
  c->d_shared = 0;
  c->n_slots = 0;
  c->init_std = 0.02f;
  c->norm_eps = 1e-5f;
  c->seed = 1234;
  snprintf(c->router, sizeof c->router, "%s", "topk");
}

carl_status carl_model_config_check(const carl_model_config_t *c) {
  if (!c) return carl_fail(CARL_ERR_INVALID, "model config: NULL");
#define CHK(cond, ...) \
  if (!(cond)) return carl_fail(CARL_ERR_INVALID, __VA_ARGS__)
  CHK(c->vocab >= 2 && c->vocab <= CARL_MODEL_MAX_VOCAB, "model config: vocab = %d, must be in 2..%d", c->vocab,
      CARL_MODEL_MAX_VOCAB);
  CHK(c->max_seq >= 1 && c->max_seq <= CARL_MODEL_MAX_SEQ, "model config: max_seq = %d, must be in 1..%d", c->max_seq,
      CARL_MODEL_MAX_SEQ);
  CHK(c->d_model >= 1 && c->d_model <= CARL_MODEL_MAX_D, "model config: d_model = %d, must be in 1..%d", c->d_model,
      CARL_MODEL_MAX_D);
  CHK(c->n_layers >= 1 && c->n_layers <= CARL_MODEL_MAX_LAYERS, "model config: n_layers = %d, must be in 1..%d", c->n_layers,
      CARL_MODEL_MAX_LAYERS);
  CHK(c->n_heads >= 1 && c->d_model % c->n_heads == 0, "model config: n_heads = %d must be >= 1 and divide d_model = %d",
      c->n_heads, c->d_model);
  CHK(c->d_ff >= 1 && c->d_ff <= CARL_MODEL_MAX_FF, "model config: d_ff = %d, must be in 1..%d", c->d_ff, CARL_MODEL_MAX_FF);
  CHK(c->n_experts >= 1 && c->n_experts <= CARL_MODEL_MAX_EXPERTS, "model config: n_experts = %d, must be in 1..%d",
      c->n_experts, CARL_MODEL_MAX_EXPERTS);
  CHK(c->top_k >= 1 && c->top_k <= c->n_experts, "model config: top_k = %d, must be in 1..n_experts (%d)", c->top_k,
      c->n_experts);
  CHK(c->n_slots == 0 || (c->n_slots >= c->n_experts && c->n_slots <= CARL_MODEL_MAX_SLOTS),
      "model config: slots = %d, must be 0 (one per expert) or in n_experts (%d)..%d", c->n_slots, c->n_experts,
      CARL_MODEL_MAX_SLOTS);
  CHK(c->d_shared >= 0 && c->d_shared <= CARL_MODEL_MAX_FF, "model config: d_shared = %d, must be in 0..%d", c->d_shared,
      CARL_MODEL_MAX_FF);
  CHK(isfinite(c->init_std) && c->init_std > 0, "model config: init_std = %g, must be > 0", (double)c->init_std);
  CHK(isfinite(c->norm_eps) && c->norm_eps > 0, "model config: norm_eps = %g, must be > 0", (double)c->norm_eps);
  CHK(c->n_router_opts >= 0 && c->n_router_opts <= CARL_MODEL_MAX_ROUTER_OPTS,
      "model config: n_router_opts = %d, must be in 0..%d", c->n_router_opts, CARL_MODEL_MAX_ROUTER_OPTS);
  CHK(memchr(c->router, 0, sizeof c->router) && c->router[0], "model config: router name is empty or too long");
  CHK(carl_router_find(c->router), "model config: router '%s' is not a registered router", c->router);
#undef CHK
  return CARL_OK;
}

carl_status carl_model_config_set_router_opt(carl_model_config_t *c, const char *key, double val) {
  if (!key || !key[0] || strlen(key) >= sizeof c->router_keys[0])
    return carl_fail(CARL_ERR_INVALID, "router option: key empty or longer than %zu", sizeof c->router_keys[0] - 1);
  for (int i = 0; i < c->n_router_opts; i++)
    if (strcmp(c->router_keys[i], key) == 0) {
      c->router_vals[i] = val;
      return CARL_OK;
    }
  if (c->n_router_opts >= CARL_MODEL_MAX_ROUTER_OPTS)
    return carl_fail(CARL_ERR_INVALID, "router option '%s': at most %d options", key, CARL_MODEL_MAX_ROUTER_OPTS);
  snprintf(c->router_keys[c->n_router_opts], sizeof c->router_keys[0], "%s", key);
  c->router_vals[c->n_router_opts++] = val;
  return CARL_OK;
}

/* ---- layout --------------------------------------------------------------------------------- */
static int carl__add(carl_model_t *m, int cap, const char *name, int ndim, int64_t s0, int64_t s1, int64_t s2,
                     int decay) {
  CARL_ASSERT(m->ntensors < cap);
  carl_tensor_info_t *t = &m->tensors[m->ntensors];
  size_t len = strlen(name);
  CARL_ASSERT(len < sizeof t->name);
  memcpy(t->name, name, len + 1);
  t->ndim = ndim;
  t->shape[0] = s0;
  t->shape[1] = ndim > 1 ? s1 : 0;
  t->shape[2] = ndim > 2 ? s2 : 0;
  t->numel = s0 * (ndim > 1 ? s1 : 1) * (ndim > 2 ? s2 : 1);
  t->offset = m->nparams;
  t->decay = decay;
  m->nparams += t->numel;
  return m->ntensors++;
}

static float *P(carl_model_t *m, int i) { return i < 0 ? NULL : m->params + m->tensors[i].offset; }
static float *G(carl_model_t *m, int i) { return i < 0 ? NULL : m->grads + m->tensors[i].offset; }

void carl__moe_of(const carl_model_t *m, int l, carl__moe_t *L) {
  const carl_model_config_t *c = &m->cfg;
  L->d = c->d_model;
  L->f = c->d_ff;
  L->E = c->n_experts;
  L->k = c->top_k;
  L->fs = c->d_shared;
  L->router = m->routers[l];
  L->step = m->dstep;
  L->layer = l;
}

static void carl__moe_w(carl_model_t *m, int l, int grads, carl__moe_w_t *w) {
  float *(*get)(carl_model_t *, int) = grads ? G : P;
  const carl__layer_idx_t *x = &m->li[l];
  w->router = get(m, x->router);
  w->w13 = get(m, x->w13);
  w->w2 = get(m, x->w2);
  w->sw13 = get(m, x->sw13);
  w->sw2 = get(m, x->sw2);
  w->slot0 = m->slot0;
}

/* ---- expert slots and the step ------------------------------------------------------------ */
/* The expert tensors of layer l that move with their experts: parameters and both AdamW moments
 * of w13 and w2, each [P, numel] in slot order. */
static int carl__slot_tensors(carl_model_t *m, int l, carl_exec_tensor_t *t) {
  const carl__layer_idx_t *x = &m->li[l];
  float *bases[3] = {m->params, m->adam_m, m->adam_v};
  if (m->dev) /* on the GPU the step's executor moves the device copies */
    for (int b = 0; b < 3; b++) bases[b] = carl__mdev_array(m->dev, b == 0 ? 0 : b + 1);
  const int idx[2] = {x->w13, x->w2};
  int n = 0;
  for (int b = 0; b < 3; b++)
    for (int i = 0; i < 2; i++) {
      const carl_tensor_info_t *ti = &m->tensors[idx[i]];
      t[n++] = (carl_exec_tensor_t){bases[b] + ti->offset, ti->numel / m->nlocal, m->slot0,
                                    m->nlocal < m->P ? m->nlocal : 0};
    }
  return n;
}

static carl_status carl__check_placement(const carl_model_t *m, const carl_topo_t *t, const carl_placement_t *p) {
  if (p->E != m->cfg.n_experts)
    return carl_fail(CARL_ERR_INVALID, "placement: %d experts, the model has %d", p->E, m->cfg.n_experts);
  if (p->D != t->devices)
    return carl_fail(CARL_ERR_INVALID, "placement: %d devices, the topology has %d", p->D, t->devices);
  if ((int64_t)p->D * p->slots != m->P)
    return carl_fail(CARL_ERR_INVALID, "placement: %d devices x %d slots = %d expert slots, the model has %d (model.slots)",
                     p->D, p->slots, p->D * p->slots, m->P);
  return CARL_OK;
}

/* Initial values of expert `e` in one slot of expert tensor i: [numel / P] floats. */
static void carl__init_expert(const carl_model_t *m, int i, int e, float *dst) {
  const carl_tensor_info_t *tf = m->tensors_full ? &m->tensors_full[i] : &m->tensors[i];
  const int64_t per = tf->numel / m->P, key = m->init_key[i] + (int64_t)e * per;
  const float s = m->init_scale[i];
  if (e < 0) {
    memset(dst, 0, sizeof(float) * (size_t)per);
    return;
  }
#pragma omp parallel for schedule(static) if (per >= CARL_OMP_MIN_WORK)
  for (int64_t j = 0; j < per; j++) dst[j] = s * carl_rng_normal(m->cfg.seed, CARL_STREAM_INIT, (uint64_t)(key + j));
}

/* Move layer l's expert tensors from layout `from` to layout `to` (both D x S = P slots): every
 * slot of `to` takes the weights and moments of its expert's first slot in `from`; empty slots
 * are zero. Replicas hold bitwise the same values, so any replica would do. */
static carl_status carl__relayout(carl_model_t *m, int l, const carl_placement_t *from, const carl_placement_t *to) {
  const int P = m->P;
  if (from->D == to->D && !memcmp(from->slot_expert, to->slot_expert, sizeof(int32_t) * (size_t)P)) return CARL_OK;
  if (m->nlocal < P && m->fresh) { /* own slots only, still the initial values: each slot takes its new expert's */
    const int idx[2] = {m->li[l].w13, m->li[l].w2};
    for (int i = 0; i < 2; i++) {
      const int64_t per = m->tensors[idx[i]].numel / m->nlocal;
      for (int g = 0; g < m->nlocal; g++)
        carl__init_expert(m, idx[i], to->slot_expert[m->slot0 + g], m->params + m->tensors[idx[i]].offset + g * per);
    }
    return CARL_OK; /* the moments are still zero */
  }
  if (m->nlocal < P)
    return carl_fail(CARL_ERR_STATE, "model: the expert slots are stored per rank (expert parallel, %d of %d here): the "
                     "layout of layer %d can change only by a placement refresh once the parameters are written", m->nlocal,
                     P, l);
  int32_t *first = malloc(sizeof(int32_t) * (size_t)m->cfg.n_experts);
  if (!first) return carl_fail(CARL_ERR_NOMEM, "model: out of memory");
  for (int e = 0; e < m->cfg.n_experts; e++) first[e] = -1;
  for (int g = P - 1; g >= 0; g--)
    if (from->slot_expert[g] >= 0) first[from->slot_expert[g]] = g;
  carl_exec_tensor_t t[6];
  const int n = carl__slot_tensors(m, l, t);
  carl_status st = CARL_OK;
  for (int i = 0; i < n && st == CARL_OK; i++) {
    const size_t row = sizeof(float) * (size_t)t[i].numel;
    float *old = malloc(row * (size_t)P);
    if (!old) {
      st = carl_fail(CARL_ERR_NOMEM, "model: out of memory for the expert layout");
      break;
    }
    memcpy(old, t[i].base, row * (size_t)P);
    for (int g = 0; g < P; g++) {
      const int e = to->slot_expert[g];
      float *dst = t[i].base + (int64_t)g * t[i].numel;
      if (e < 0)
        memset(dst, 0, row);
      else
        memcpy(dst, old + (int64_t)first[e] * t[i].numel, row);
    }
    free(old);
  }
  free(first);
  return st;
}

/* first_slot[l, g]: the first slot of layer l holding slot g's expert (g itself for a first copy,
 * -1 for an empty slot); has_replicas: some slot is not a first copy. */
static void carl__note_replicas(carl_model_t *m) {
  const int P = m->P;
  m->has_replicas = 0;
  for (int l = 0; l < m->cfg.n_layers; l++) {
    const carl_placement_t *p = carl_step_placement(m->dstep, l);
    int32_t *first = m->first_slot + (int64_t)l * P;
    for (int g = 0; g < P; g++) {
      const int e = p->slot_expert[g];
      int f = e < 0 ? -1 : g;
      for (int q = 0; e >= 0 && q < g; q++)
        if (p->slot_expert[q] == e) {
          f = q;
          break;
        }
      first[g] = f;
      if (f >= 0 && f != g) m->has_replicas = 1;
    }
  }
}

/* (Re)build the step: every layer on `place`, the model's topology, executor and refresh. */
static carl_status carl__step_build(carl_model_t *m, const carl_placement_t *place) {
  const carl_model_config_t *c = &m->cfg;
  carl_step_free(m->dstep);
  m->dstep = NULL;
  carl_step_opts_t o;
  carl_step_opts_default(&o);
  o.topo = m->topo;
  o.layers = c->n_layers;
  o.E = c->n_experts;
  o.k = c->top_k;
  o.routers = m->routers;
  o.place = place;
  o.token_bytes = sizeof(float) * (size_t)c->d_model;
  o.exec = m->dev ? carl__mdev_exec(m->dev) : m->exec_user ? m->exec_user : m->exec;
  o.mode = m->mode;
  o.refresh_every = m->refresh_every;
  o.place_opts = m->place_opts;
  o.stats_decay = m->stats_decay;
  o.expert_bytes = 3.0 * 3.0 * c->d_model * c->d_ff * sizeof(float); /* w13 + w2, and both moments */
  CARL_TRY(carl_step_create(&o, &m->dstep));
  for (int l = 0; l < c->n_layers; l++) {
    carl_exec_tensor_t t[6];
    const int n = carl__slot_tensors(m, l, t);
    CARL_TRY(carl_step_set_tensors(m->dstep, l, t, n));
  }
  carl__note_replicas(m);
  return CARL_OK;
}

/* Expert-parallel storage (docs/mpi.md): with several processes and no replicated expert, rank r
 * keeps only its own expert slots (physical slots r S .. r S + S - 1) up to date: their gradients
 * are not all-reduced (they are non-zero on r only) and AdamW updates them on r only. Without
 * replicas (n_slots = E) rank r stores only those slots (nlocal = S, carl__shard_storage or
 * carl_model_create_ep) and carl_model_full gathers a copy of the whole model on rank 0 for a
 * checkpoint; with every slot stored, block r of each expert tensor [P, n] is rank r's and
 * carl_model_gather_experts brings the blocks together. Returns the layer of expert tensor i,
 * else -1. */
static int carl__expert_layer(const carl_model_t *m, int i) {
  for (int l = 0; l < m->cfg.n_layers; l++)
    if (i == m->li[l].w13 || i == m->li[l].w2) return l;
  return -1;
}

static carl_exec_t *carl__sharded(const carl_model_t *m) {
  carl_exec_t *ex = m->dstep ? carl_step_exec(m->dstep) : NULL;
  return ex && carl_exec_size(ex) > 1 && !m->has_replicas ? ex : NULL;
}

/* Rank r's own slots of expert tensor t (of np ranks), as (offset, floats) in the storage: all of
 * it when only the own slots are stored, else its block r. */
static void carl__own_block(const carl_model_t *m, const carl_tensor_info_t *t, int np, int r, int64_t *o, int64_t *n) {
  if (m->nlocal < m->P) {
    *o = t->offset, *n = t->numel;
  } else {
    *n = t->numel / np, *o = t->offset + *n * r;
  }
}

/* Expert-parallel storage: from here on rank r stores only its own expert slots, r S .. r S + S - 1
 * (S = P / np) of every expert tensor and of its gradients and moments; the non-expert tensors
 * stay whole. The tensor table then gives the expert tensors as [S, ...] at their offsets in the
 * smaller buffers, and the one-process table is kept for carl_model_full. Only without replicas
 * (P = E: no placement can hold an expert twice): replicated experts are updated by every rank.
 * On failure nothing changes. */
static carl_tensor_info_t *carl__local_table(const carl_model_t *m, int np, int64_t *nparams) {
  const int S = m->P / np;
  carl_tensor_info_t *tab = malloc(sizeof *tab * (size_t)m->ntensors);
  if (!tab) return NULL;
  int64_t n = 0;
  for (int i = 0; i < m->ntensors; i++) {
    tab[i] = m->tensors[i];
    if (carl__expert_layer(m, i) >= 0) {
      tab[i].shape[0] = S;
      tab[i].numel = m->tensors[i].numel / m->P * S;
    }
    tab[i].offset = n;
    n += tab[i].numel;
  }
  *nparams = n;
  return tab;
}

static carl_status carl__shard_storage(carl_model_t *m, int np, int r) {
  const int S = m->P / np;
  int64_t n = 0;
  carl_tensor_info_t *tab = carl__local_table(m, np, &n);
  if (!tab) return carl_fail(CARL_ERR_NOMEM, "model: out of memory");
  float *arr[4] = {malloc(sizeof(float) * (size_t)n), malloc(sizeof(float) * (size_t)n), malloc(sizeof(float) * (size_t)n),
                   malloc(sizeof(float) * (size_t)n)};
  if (!arr[0] || !arr[1] || !arr[2] || !arr[3]) {
    for (int a = 0; a < 4; a++) free(arr[a]);
    free(tab);
    return carl_fail(CARL_ERR_NOMEM, "model: cannot allocate the %lld parameters of rank %d", (long long)n, r);
  }
  float *old[4] = {m->params, m->grads, m->adam_m, m->adam_v};
  for (int i = 0; i < m->ntensors; i++) {
    const int64_t from = m->tensors[i].offset + (carl__expert_layer(m, i) >= 0 ? tab[i].numel * r : 0);
    for (int a = 0; a < 4; a++) memcpy(arr[a] + tab[i].offset, old[a] + from, sizeof(float) * (size_t)tab[i].numel);
  }
  for (int a = 0; a < 4; a++) free(old[a]);
  m->params = arr[0], m->grads = arr[1], m->adam_m = arr[2], m->adam_v = arr[3];
  m->tensors_full = m->tensors;
  m->nparams_full = m->nparams;
  m->tensors = tab;
  m->nparams = n;
  m->slot0 = (int64_t)r * S;
  m->nlocal = S;
  return CARL_OK;
}

/* Rebuild the step after a change of its options (mode, executor, refresh), every layer keeping
 * its current placement (nothing moves); the statistics gathered so far are dropped. */
static carl_status carl__step_rebuild(carl_model_t *m) {
  const int L = m->cfg.n_layers;
  carl_placement_t *keep = calloc((size_t)L, sizeof *keep);
  if (!keep) return carl_fail(CARL_ERR_NOMEM, "model: out of memory");
  carl_status st = CARL_OK;
  for (int l = 0; l < L && st == CARL_OK; l++) {
    const carl_placement_t *p = carl_step_placement(m->dstep, l);
    st = carl_placement_from_table(&keep[l], p->E, p->D, p->slots, p->slot_expert);
  }
  if (st == CARL_OK) st = carl__step_build(m, &keep[0]);
  for (int l = 1; l < L && st == CARL_OK; l++) st = carl_step_set_placement(m->dstep, l, &keep[l]);
  if (st == CARL_OK) carl__note_replicas(m);
  for (int l = 0; l < L; l++) carl_placement_free(&keep[l]);
  free(keep);
  return st;
}

/* Replicas of one expert: their gradients are summed (slot order) and every replica gets the
 * sum, so that AdamW keeps them bitwise equal. */
static void carl__sync_replicas(carl_model_t *m) {
  if (!m->has_replicas) return;
  const int P = m->P;
  for (int l = 0; l < m->cfg.n_layers; l++) {
    const int32_t *first = m->first_slot + (int64_t)l * P;
    const int idx[2] = {m->li[l].w13, m->li[l].w2};
    for (int i = 0; i < 2; i++) {
      const carl_tensor_info_t *ti = &m->tensors[idx[i]];
      const int64_t n = ti->numel / P;
      float *g0 = m->grads + ti->offset;
      for (int g = 0; g < P; g++) /* each replica into its first copy, in slot order */
        if (first[g] >= 0 && first[g] != g) {
          float *a = g0 + (int64_t)first[g] * n;
          const float *b = g0 + (int64_t)g * n;
          for (int64_t j = 0; j < n; j++) a[j] += b[j];
        }
      for (int g = 0; g < P; g++)
        if (first[g] >= 0 && first[g] != g) memcpy(g0 + (int64_t)g * n, g0 + (int64_t)first[g] * n, sizeof(float) * (size_t)n);
    }
  }
}

/* np > 1: rank r of np stores only its own expert slots from the start (carl_model_create_ep). */
static carl_status carl__create(const carl_model_config_t *cfg, int np, int r, carl_model_t **out) {
  if (!out) return carl_fail(CARL_ERR_INVALID, "carl_model_create: out is NULL");
  *out = NULL;
  CARL_TRY(carl_model_config_check(cfg));
  carl_model_t *m = calloc(1, sizeof *m);
  if (!m) return carl_fail(CARL_ERR_NOMEM, "model: out of memory");
  m->cfg = *cfg;
  const carl_model_config_t *c = &m->cfg;
  const int L = c->n_layers, d = c->d_model, f = c->d_ff, E = c->n_experts, fs = c->d_shared;
  const int P = m->P = c->n_slots ? c->n_slots : E;
  m->nlocal = P;
  int cap = 3 + 9 * L;
  m->tensors = calloc((size_t)cap, sizeof *m->tensors);
  m->li = calloc((size_t)L, sizeof *m->li);
  m->routers = calloc((size_t)L, sizeof *m->routers);
  m->la = calloc((size_t)L, sizeof *m->la);
  if (!m->tensors || !m->li || !m->routers || !m->la) {
    carl_model_free(m);
    return carl_fail(CARL_ERR_NOMEM, "model: out of memory");
  }
  char nm[64];
  m->tok_emb = carl__add(m, cap, "tok_emb", 2, c->vocab, d, 0, 1);
  m->pos_emb = carl__add(m, cap, "pos_emb", 2, c->max_seq, d, 0, 0);
  for (int l = 0; l < L; l++) {
    carl__layer_idx_t *x = &m->li[l];
#define NAME(s) (snprintf(nm, sizeof nm, "layers.%d.%s", l, s), nm)
    x->attn_norm = carl__add(m, cap, NAME("attn_norm"), 1, d, 0, 0, 0);
    x->wqkv = carl__add(m, cap, NAME("attn.wqkv"), 2, 3 * d, d, 0, 1);
    x->wo = carl__add(m, cap, NAME("attn.wo"), 2, d, d, 0, 1);
    x->moe_norm = carl__add(m, cap, NAME("moe_norm"), 1, d, 0, 0, 0);
    x->router = carl__add(m, cap, NAME("moe.router"), 2, E, d, 0, 1);
    x->w13 = carl__add(m, cap, NAME("moe.w13"), 3, P, 2 * f, d, 1);
    x->w2 = carl__add(m, cap, NAME("moe.w2"), 3, P, d, f, 1);
    x->sw13 = fs ? carl__add(m, cap, NAME("moe.shared_w13"), 2, 2 * fs, d, 0, 1) : -1;
    x->sw2 = fs ? carl__add(m, cap, NAME("moe.shared_w2"), 2, d, fs, 0, 1) : -1;
#undef NAME
  }
  m->final_norm = carl__add(m, cap, "final_norm", 1, d, 0, 0, 0);
  m->init_key = malloc(sizeof(int64_t) * (size_t)m->ntensors);
  m->init_scale = malloc(sizeof(float) * (size_t)m->ntensors);
  if (!m->init_key || !m->init_scale) {
    carl_model_free(m);
    return carl_fail(CARL_ERR_NOMEM, "model: out of memory");
  }
  if (np > 1) { /* expert parallel: the one-process table is kept, the storage holds own slots */
    int64_t n = 0;
    carl_tensor_info_t *tab = carl__local_table(m, np, &n);
    if (!tab) {
      carl_model_free(m);
      return carl_fail(CARL_ERR_NOMEM, "model: out of memory");
    }
    m->tensors_full = m->tensors;
    m->nparams_full = m->nparams;
    m->tensors = tab;
    m->nparams = n;
    m->slot0 = (int64_t)r * (P / np);
    m->nlocal = P / np;
  }
  size_t bytes = sizeof(float) * (size_t)m->nparams;
  m->params = malloc(bytes);
  m->grads = calloc((size_t)m->nparams, sizeof(float));
  m->adam_m = calloc((size_t)m->nparams, sizeof(float));
  m->adam_v = calloc((size_t)m->nparams, sizeof(float));
  m->first_slot = malloc(sizeof(int32_t) * (size_t)L * (size_t)P);
  if (!m->params || !m->grads || !m->adam_m || !m->adam_v || !m->first_slot) {
    carl_model_free(m);
    return carl_fail(CARL_ERR_NOMEM, "model: cannot allocate %lld parameters", (long long)m->nparams);
  }
  /* init: norms 1; matrices N(0, std) from Philox keyed by (seed, INIT, global offset);
   * residual output projections (wo, w2, shared_w2) scaled by 1/sqrt(2L) (GPT-2). Expert slots:
   * slot g holds expert g (g < E) until a placement is set, slots >= E are empty (zero); the key
   * is the offset in the model with one slot per expert, so the init does not depend on n_slots. */
  const float resid = 1.0f / sqrtf(2.0f * (float)L);
  int64_t key = 0; /* offset of the tensor in the model with one slot per expert */
  for (int i = 0; i < m->ntensors; i++) {
    const carl_tensor_info_t *t = &m->tensors[i], *tf = m->tensors_full ? &m->tensors_full[i] : t;
    float *p = m->params + t->offset;
    const int64_t n = t->ndim == 3 ? tf->numel / P * E : t->numel; /* expert tensors: the first E slots */
    float s = c->init_std;
    const char *dot = strrchr(t->name, '.');
    if (dot && (!strcmp(dot, ".wo") || !strcmp(dot, ".w2") || !strcmp(dot, ".shared_w2"))) s *= resid;
    m->init_key[i] = key;
    m->init_scale[i] = s;
    if (t->ndim == 1) {
      for (int64_t j = 0; j < n; j++) p[j] = 1.0f;
    } else if (t->ndim == 3) { /* the stored slots g: expert g, or empty (g >= E) */
      const int64_t per = tf->numel / P;
      for (int g = 0; g < m->nlocal; g++) {
        const int64_t gg = m->slot0 + g;
        carl__init_expert(m, i, gg < E ? (int)gg : -1, p + g * per);
      }
    } else {
#pragma omp parallel for schedule(static) if (n >= CARL_OMP_MIN_WORK)
      for (int64_t j = 0; j < n; j++) p[j] = s * carl_rng_normal(c->seed, CARL_STREAM_INIT, (uint64_t)(key + j));
    }
    key += n;
  }
  m->fresh = 1;
  /* one router per layer (each owns its state); "k" = top_k unless the options set it */
  const char *keys[CARL_MODEL_MAX_ROUTER_OPTS + 1];
  double vals[CARL_MODEL_MAX_ROUTER_OPTS + 1];
  int n = 0, has_k = 0;
  for (int i = 0; i < c->n_router_opts; i++) {
    keys[n] = c->router_keys[i];
    vals[n++] = c->router_vals[i];
    if (!strcmp(c->router_keys[i], "k")) has_k = 1;
  }
  if (!has_k) {
    keys[n] = "k";
    vals[n++] = c->top_k;
  }
  for (int l = 0; l < L; l++) {
    carl_status st = carl_router_create(c->router, n, keys, vals, &m->routers[l]);
    if (st != CARL_OK) {
      carl_model_free(m);
      return carl_errctx(st, "model config");
    }
    double k = carl_router_get(m->routers[l], "k");
    if (k != c->top_k) {
      const int top_k = c->top_k; /* c points into m */
      carl_model_free(m);
      return carl_fail(CARL_ERR_INVALID, "model config: router option k = %g differs from top_k = %d", k, top_k);
    }
  }
  /* one device, slot g = expert g, until carl_model_set_topology */
  carl_status st = carl_topo_make(&m->topo1, 1, 1, 1, 0, 1, 0);
  if (st == CARL_OK) st = carl_exec_local_create(&m->exec);
  carl_placement_t pl = {0};
  if (st == CARL_OK) {
    int32_t *tab = malloc(sizeof(int32_t) * (size_t)P);
    if (!tab) st = carl_fail(CARL_ERR_NOMEM, "model: out of memory");
    for (int g = 0; tab && g < P; g++) tab[g] = g < E ? g : -1;
    if (tab) st = carl_placement_from_table(&pl, E, 1, P, tab);
    free(tab);
  }
  m->topo = &m->topo1;
  carl_place_opts_default(&m->place_opts);
  m->place_opts.algo = CARL_PLACE_TRAFFIC;
  m->stats_decay = 0.9;
  if (st == CARL_OK) st = carl__step_build(m, &pl);
  carl_placement_free(&pl);
  if (st != CARL_OK) {
    carl_model_free(m);
    return st;
  }
  *out = m;
  return CARL_OK;
}

carl_status carl_model_create(const carl_model_config_t *cfg, carl_model_t **out) { return carl__create(cfg, 1, 0, out); }

carl_status carl_model_create_ep(const carl_model_config_t *cfg, int ranks, int rank, carl_model_t **out) {
  if (!out) return carl_fail(CARL_ERR_INVALID, "carl_model_create_ep: out is NULL");
  *out = NULL;
  CARL_TRY(carl_model_config_check(cfg));
  const int P = cfg->n_slots ? cfg->n_slots : cfg->n_experts;
  if (ranks < 1 || rank < 0 || rank >= ranks)
    return carl_fail(CARL_ERR_INVALID, "expert-parallel model: rank %d of %d ranks", rank, ranks);
  if (P != cfg->n_experts)
    return carl_fail(CARL_ERR_INVALID, "expert-parallel model: %d slots for %d experts (replicated experts are stored on "
                     "every rank: carl_model_create)", P, cfg->n_experts);
  if (P % ranks)
    return carl_fail(CARL_ERR_INVALID, "expert-parallel model: %d expert slots do not split evenly over %d ranks", P, ranks);
  return carl__create(cfg, ranks, rank, out);
}

static void carl__free_acts(carl_model_t *m) {
  for (int l = 0; m->la && l < m->cfg.n_layers; l++) {
    carl__layer_act_t *a = &m->la[l];
    free(a->h_in); free(a->n1); free(a->rstd1); free(a->qkv); free(a->att); free(a->ao); free(a->h_mid);
    free(a->n2); free(a->rstd2);
    carl__moe_act_free(&a->moe);
    memset(a, 0, sizeof *a);
  }
  free(m->tokens); free(m->targets); free(m->h_final); free(m->nf); free(m->rstdf); free(m->logits);
  free(m->dlogits); free(m->lse); free(m->dh); free(m->dtmp); free(m->dtmp2); free(m->dqkv); free(m->datt);
  m->tokens = m->targets = NULL;
  m->h_final = m->nf = m->rstdf = m->logits = m->dlogits = m->lse = m->dh = m->dtmp = m->dtmp2 = m->dqkv = m->datt = NULL;
  m->cap_T = m->cap_att = 0;
}

void carl_model_free(carl_model_t *m) {
  if (!m) return;
  carl_step_free(m->dstep); /* before the device half: it borrows the device executor */
  m->dstep = NULL;
  carl__mdev_free(m->dev);
  carl__free_acts(m);
  for (int l = 0; m->routers && l < m->cfg.n_layers; l++) carl_router_free(m->routers[l]);
  carl_step_free(m->dstep);
  carl_exec_free(m->exec);
  free(m->routers); free(m->la); free(m->li); free(m->tensors); free(m->tensors_full); free(m->init_key);
  free(m->init_scale);
  free(m->params); free(m->grads); free(m->adam_m); free(m->adam_v); free(m->first_slot);
  free(m);
}

const carl_model_config_t *carl_model_config(const carl_model_t *m) { return &m->cfg; }
int carl_model_ntensors(const carl_model_t *m) { return m->ntensors; }
const carl_tensor_info_t *carl_model_tensor(const carl_model_t *m, int i) {
  return i >= 0 && i < m->ntensors ? &m->tensors[i] : NULL;
}
int carl_model_find_tensor(const carl_model_t *m, const char *name) {
  for (int i = 0; name && i < m->ntensors; i++)
    if (!strcmp(m->tensors[i].name, name)) return i;
  return -1;
}
int64_t carl_model_nparams(const carl_model_t *m) { return m->nparams; }
float *carl_model_params(carl_model_t *m) {
  m->fresh = 0; /* the caller may write them */
  return m->params;
}
float *carl_model_grads(carl_model_t *m) { return m->grads; }
float *carl_model_adam_m(carl_model_t *m) {
  m->fresh = 0; /* the caller may write them */
  return m->adam_m;
}
float *carl_model_adam_v(carl_model_t *m) {
  m->fresh = 0; /* the caller may write them */
  return m->adam_v;
}
int64_t *carl_model_adam_t(carl_model_t *m) { return &m->adam_t; }
void carl_model_set_step(carl_model_t *m, int64_t step) { m->step = step; }
carl_router_t *carl_model_router(carl_model_t *m, int layer) {
  return layer >= 0 && layer < m->cfg.n_layers ? m->routers[layer] : NULL;
}

carl_status carl_model_set_dispatch(carl_model_t *m, carl_plan_mode mode) {
  if (mode != CARL_PLAN_FLAT && mode != CARL_PLAN_HIER) return carl_fail(CARL_ERR_INVALID, "dispatch mode %d", (int)mode);
  const carl_plan_mode before = m->mode;
  m->mode = mode;
  carl_status st = carl__step_rebuild(m);
  if (st != CARL_OK) m->mode = before;
  return st;
}

/* Changes that move expert tensors in host memory, or another executor, once the model is on the GPU. */
static carl_status carl__host_only(const carl_model_t *m, const char *what) {
  if (m->dev) return carl_fail(CARL_ERR_STATE, "model: %s after carl_model_to_device (the model lives on the GPU)", what);
  return CARL_OK;
}

carl_status carl_model_set_executor(carl_model_t *m, carl_exec_t *ex) {
  CARL_TRY(carl__host_only(m, "set_executor"));
  const int np = ex ? carl_exec_size(ex) : 1;
  if (np > 1 && np != m->topo->devices)
    return carl_fail(CARL_ERR_INVALID, "executor '%s' runs %d processes, the topology has %d devices (one process per "
                     "device)", carl_exec_name(ex), np, m->topo->devices);
  if (np > m->P)
    return carl_fail(CARL_ERR_INVALID, "executor '%s': %d processes for %d expert slots", carl_exec_name(ex), np, m->P);
  if (m->nlocal < m->P && (np != m->P / m->nlocal || carl_exec_rank(ex) != m->slot0 / m->nlocal))
    return carl_fail(CARL_ERR_STATE, "executor '%s': the expert slots are stored per rank for %d ranks (slots %lld..%lld "
                     "here); a model keeps that split", ex ? carl_exec_name(ex) : "local", m->P / m->nlocal,
                     (long long)m->slot0, (long long)(m->slot0 + m->nlocal - 1));
  carl_exec_t *before = m->exec_user;
  m->exec_user = ex;
  carl_status st = carl__step_rebuild(m);
  if (st != CARL_OK) {
    m->exec_user = before;
    return st;
  }
  /* expert parallel without replicas: keep only this rank's slots */
  if (np > 1 && m->nlocal == m->P && m->P == m->cfg.n_experts && !m->has_replicas) {
    CARL_TRY(carl__shard_storage(m, np, carl_exec_rank(ex)));
    for (int l = 0; l < m->cfg.n_layers; l++) {
      carl_exec_tensor_t t[6];
      const int n = carl__slot_tensors(m, l, t);
      CARL_TRY(carl_step_set_tensors(m->dstep, l, t, n));
    }
  }
  return CARL_OK;
}

carl_status carl_model_set_topology(carl_model_t *m, const carl_topo_t *topo, const carl_placement_t *place) {
  CARL_TRY(carl__host_only(m, "set_topology"));
  const carl_model_config_t *c = &m->cfg;
  if (place && !topo) return carl_fail(CARL_ERR_INVALID, "placement given without a topology");
  const carl_topo_t *t = topo ? topo : &m->topo1;
  carl_placement_t contig = {0};
  if (!place) {
    CARL_TRY(carl_placement_contiguous(&contig, c->n_experts, t->devices));
    place = &contig;
  }
  carl_status st = carl__check_placement(m, t, place);
  if (st == CARL_OK) {
    /* experts move from the current layout of every layer to the new placement */
    for (int l = 0; l < c->n_layers && st == CARL_OK; l++) st = carl__relayout(m, l, carl_step_placement(m->dstep, l), place);
  }
  if (st == CARL_OK) {
    m->topo = t;
    m->user_topo = topo != NULL;
    st = carl__step_build(m, place);
  }
  carl_placement_free(&contig);
  return st;
}

carl_status carl_model_set_placement(carl_model_t *m, int layer, const carl_placement_t *place) {
  CARL_TRY(carl__host_only(m, "set_placement"));
  if (layer < 0 || layer >= m->cfg.n_layers)
    return carl_fail(CARL_ERR_INVALID, "layer %d: outside 0..%d", layer, m->cfg.n_layers - 1);
  CARL_TRY(carl__check_placement(m, m->topo, place));
  CARL_TRY(carl__relayout(m, layer, carl_step_placement(m->dstep, layer), place));
  CARL_TRY(carl_step_set_placement(m->dstep, layer, place));
  carl__note_replicas(m);
  return CARL_OK;
}

carl_status carl_model_import_layout(carl_model_t *m, int layer, const carl_placement_t *from) {
  CARL_TRY(carl__host_only(m, "import_layout"));
  if (layer < 0 || layer >= m->cfg.n_layers)
    return carl_fail(CARL_ERR_INVALID, "layer %d: outside 0..%d", layer, m->cfg.n_layers - 1);
  if (from->E != m->cfg.n_experts || (int64_t)from->D * from->slots != m->P)
    return carl_fail(CARL_ERR_INVALID, "layout of layer %d: %d experts on %d x %d slots, the model has %d experts on %d slots",
                     layer, from->E, from->D, from->slots, m->cfg.n_experts, m->P);
  return carl__relayout(m, layer, from, carl_step_placement(m->dstep, layer));
}

const carl_placement_t *carl_model_placement(const carl_model_t *m, int layer) {
  return carl_step_placement(m->dstep, layer);
}

carl_status carl_model_set_refresh(carl_model_t *m, int64_t every, const carl_place_opts_t *po, double stats_decay) {
  if (every < 0) return carl_fail(CARL_ERR_INVALID, "refresh every %lld steps: must be >= 0", (long long)every);
  if (!(stats_decay >= 0 && stats_decay < 1))
    return carl_fail(CARL_ERR_INVALID, "refresh: statistics decay %g is outside [0, 1)", stats_decay);
  const int64_t every0 = m->refresh_every;
  const carl_place_opts_t po0 = m->place_opts;
  const double decay0 = m->stats_decay;
  m->refresh_every = every;
  if (po) m->place_opts = *po;
  m->stats_decay = stats_decay;
  carl_status st = carl__step_rebuild(m);
  if (st != CARL_OK) m->refresh_every = every0, m->place_opts = po0, m->stats_decay = decay0;
  return st;
}

carl_status carl_model_end_step(carl_model_t *m, int64_t step, int64_t last, carl_step_refresh_t *info) {
  CARL_TRY(carl_step_end(m->dstep, step, last, info));
  carl__note_replicas(m);
  return CARL_OK;
}

const carl_step_t *carl_model_dispatch(const carl_model_t *m) { return m->dstep; }
carl_step_t *carl_model_dispatch_mut(carl_model_t *m) { return m->dstep; }
const carl_topo_t *carl_model_topology(const carl_model_t *m) { return m->topo; }

/* ---- activations ---------------------------------------------------------------------------- */
static carl_status carl__reserve(carl_model_t *m, int B, int S) {
  const carl_model_config_t *c = &m->cfg;
  const int64_t T = (int64_t)B * S, d = c->d_model, V = c->vocab, H = c->n_heads;
  const int64_t natt = (int64_t)B * H * S * S;
  if (T <= m->cap_T && natt <= m->cap_att) return CARL_OK;
  carl__free_acts(m);
  int ok = 1;
#define ALLOC(p, n) ok = ok && ((p) = malloc(sizeof *(p) * (size_t)(n))) != NULL
  for (int l = 0; l < c->n_layers; l++) {
    carl__layer_act_t *a = &m->la[l];
    ALLOC(a->h_in, T * d); ALLOC(a->n1, T * d); ALLOC(a->rstd1, T); ALLOC(a->qkv, T * 3 * d);
    ALLOC(a->att, natt); ALLOC(a->ao, T * d); ALLOC(a->h_mid, T * d); ALLOC(a->n2, T * d); ALLOC(a->rstd2, T);
    if (ok) {
      carl__moe_t L;
      carl__moe_of(m, l, &L);
      ok = carl__moe_reserve(&L, &a->moe, T) == CARL_OK;
    }
  }
  ALLOC(m->tokens, T); ALLOC(m->targets, T); ALLOC(m->h_final, T * d); ALLOC(m->nf, T * d); ALLOC(m->rstdf, T);
  ALLOC(m->logits, T * V); ALLOC(m->dlogits, T * V); ALLOC(m->lse, T); ALLOC(m->dh, T * d);
  ALLOC(m->dtmp, T * d); ALLOC(m->dtmp2, T * d); ALLOC(m->dqkv, T * 3 * d); ALLOC(m->datt, natt);
#undef ALLOC
  if (!ok) {
    carl__free_acts(m);
    return carl_fail(CARL_ERR_NOMEM, "model: cannot allocate activations for B = %d, S = %d", B, S);
  }
  m->cap_T = T;
  m->cap_att = natt;
  return CARL_OK;
}

/* ---- forward -------------------------------------------------------------------------------- */
carl_status carl_model_forward(carl_model_t *m, const int32_t *tokens, const int32_t *targets, int B, int S,
                               carl_model_loss_t *loss) {
  const carl_model_config_t *c = &m->cfg;
  m->can_backward = 0;
  if (!tokens) return carl_fail(CARL_ERR_INVALID, "tokens: NULL");
  if (m->nlocal < m->P && carl_exec_size(carl_step_exec(m->dstep)) != m->P / m->nlocal)
    return carl_fail(CARL_ERR_STATE, "model: this process stores expert slots %lld..%lld of %d only: it runs under an "
                     "executor of %d processes (carl_model_set_executor)", (long long)m->slot0,
                     (long long)(m->slot0 + m->nlocal - 1), m->P, m->P / m->nlocal);
  if (B < 1 || S < 1 || S > c->max_seq)
    return carl_fail(CARL_ERR_SHAPE, "tokens: shape [%d, %d], need B >= 1 and 1 <= S <= max_seq = %d", B, S, c->max_seq);
  const int64_t T = (int64_t)B * S;
  const int d = c->d_model, V = c->vocab, H = c->n_heads;
  for (int64_t i = 0; i < T; i++) {
    if (tokens[i] < 0 || tokens[i] >= V)
      return carl_fail(CARL_ERR_INVALID, "tokens: entry %lld is %d, outside 0..%d", (long long)i, tokens[i], V - 1);
    if (targets && targets[i] >= V)
      return carl_fail(CARL_ERR_INVALID, "targets: entry %lld is %d, outside -1..%d", (long long)i, targets[i], V - 1);
  }
  if (m->dev) return carl__mdev_forward(m, tokens, targets, B, S, loss);
  CARL_TRY(carl__reserve(m, B, S));
  m->B = B;
  m->S = S;
  memcpy(m->tokens, tokens, sizeof(int32_t) * (size_t)T);
  m->have_targets = targets != NULL;
  if (targets) memcpy(m->targets, targets, sizeof(int32_t) * (size_t)T);

  double router_loss = 0;
  carl_embed_fwd(m->la[0].h_in, tokens, P(m, m->tok_emb), P(m, m->pos_emb), B, S, d);
  for (int l = 0; l < c->n_layers; l++) {
    carl__layer_act_t *a = &m->la[l];
    const carl__layer_idx_t *x = &m->li[l];
    float *h_out = l + 1 < c->n_layers ? m->la[l + 1].h_in : m->h_final;
    /* attention block */
    carl_rmsnorm_fwd(a->n1, a->rstd1, a->h_in, P(m, x->attn_norm), T, d, c->norm_eps);
    carl_linear_fwd(a->qkv, a->n1, P(m, x->wqkv), T, d, 3 * d);
    carl_attention_fwd(a->ao, a->att, a->qkv, B, S, d, H);
    carl_linear_fwd(a->h_mid, a->ao, P(m, x->wo), T, d, d);
    for (int64_t i = 0; i < T * d; i++) a->h_mid[i] += a->h_in[i];
    /* MoE block */
    carl_rmsnorm_fwd(a->n2, a->rstd2, a->h_mid, P(m, x->moe_norm), T, d, c->norm_eps);
    carl__moe_t L;
    carl__moe_of(m, l, &L);
    carl__moe_w_t W;
    carl__moe_w(m, l, 0, &W);
    memset(&a->in, 0, sizeof a->in);
    a->in.T = T;
    a->in.E = c->n_experts;
    a->in.src = NULL; /* tokens split evenly over the devices in order */
    a->in.token_ids = m->tokens;
    a->in.step = m->step;
    a->in.seed = c->seed + (uint64_t)l * 0x9E3779B97F4A7C15ull;
    carl_status st = carl__moe_forward(&L, &W, &a->moe, &a->in, a->n2, h_out);
    if (st != CARL_OK) return carl_errctx(st, "layer %d", l);
    for (int64_t i = 0; i < T * d; i++) h_out[i] += a->h_mid[i];
    router_loss += a->moe.out.loss_total;
  }
  carl_rmsnorm_fwd(m->nf, m->rstdf, m->h_final, P(m, m->final_norm), T, d, c->norm_eps);
  carl_linear_fwd(m->logits, m->nf, P(m, m->tok_emb), T, d, V); /* tied head */
  double ce = 0;
  m->ntargets = 0;
  if (targets) {
    ce = carl_xent_fwd(m->lse, m->logits, targets, T, V, &m->ntargets);
    if (!isfinite(ce)) return carl_fail(CARL_ERR_NUMERIC, "model: cross-entropy is not finite");
    carl_exec_t *ex = carl_step_exec(m->dstep);
    if (carl_exec_size(ex) > 1) { /* data parallel: the mean over every rank's targets */
      double v[2] = {ce * (double)m->ntargets, (double)m->ntargets};
      CARL_TRY(carl_exec_allreduce(ex, v, 2));
      m->ntargets = (int64_t)v[1];
      ce = v[1] > 0 ? v[0] / v[1] : 0;
    }
  }
  if (loss) {
    loss->ce = ce;
    loss->router = router_loss;
    loss->total = ce + router_loss;
    loss->ntargets = m->ntargets;
  }
  m->can_backward = targets != NULL;
  return CARL_OK;
}

const float *carl_model_logits(const carl_model_t *m) { return m->dev ? carl__mdev_logits(m->dev) : m->logits; }

void carl_model_zero_grad(carl_model_t *m) {
  if (m->dev) {
    (void)carl__mdev_zero_grad(m); /* a failure is kept and reported by the next backward */
    return;
  }
  memset(m->grads, 0, sizeof(float) * (size_t)m->nparams);
}

/* ---- backward ------------------------------------------------------------------------------- */
carl_status carl_model_backward(carl_model_t *m) {
  if (!m->can_backward) return carl_fail(CARL_ERR_STATE, "model backward: no forward with targets before it");
  if (m->dev) return carl__mdev_backward(m);
  const carl_model_config_t *c = &m->cfg;
  const int B = m->B, S = m->S, d = c->d_model, V = c->vocab, H = c->n_heads;
  const int64_t T = (int64_t)B * S;
  /* head: d(mean CE)/dlogits; tied embedding gets the head gradient */
  float scale = m->ntargets ? 1.0f / (float)m->ntargets : 0.0f;
  carl_xent_bwd(m->dlogits, m->logits, m->lse, m->targets, T, V, scale);
  carl_linear_bwd(m->dtmp, G(m, m->tok_emb), m->dlogits, m->nf, P(m, m->tok_emb), T, d, V, 0);
  carl_rmsnorm_bwd(m->dh, G(m, m->final_norm), m->dtmp, m->h_final, P(m, m->final_norm), m->rstdf, T, d, 0);
  for (int l = c->n_layers - 1; l >= 0; l--) {
    carl__layer_act_t *a = &m->la[l];
    const carl__layer_idx_t *x = &m->li[l];
    /* MoE block: dh_mid = dh + norm2'(moe'(dh)) */
    carl__moe_t L;
    carl__moe_of(m, l, &L);
    carl__moe_w_t W, Gw;
    carl__moe_w(m, l, 0, &W);
    carl__moe_w(m, l, 1, &Gw);
    carl_status st = carl__moe_backward(&L, &W, &Gw, &a->moe, &a->in, a->n2, m->dh, m->dtmp);
    if (st != CARL_OK) return carl_errctx(st, "layer %d backward", l);
    carl_rmsnorm_bwd(m->dh, G(m, x->moe_norm), m->dtmp, a->h_mid, P(m, x->moe_norm), a->rstd2, T, d, 1);
    /* attention block: dh_in = dh_mid + norm1'(attn'(dh_mid)) */
    carl_linear_bwd(m->dtmp, G(m, x->wo), m->dh, a->ao, P(m, x->wo), T, d, d, 0);
    carl_attention_bwd(m->dqkv, m->datt, m->dtmp, a->qkv, a->att, B, S, d, H);
    carl_linear_bwd(m->dtmp2, G(m, x->wqkv), m->dqkv, a->n1, P(m, x->wqkv), T, d, 3 * d, 0);
    carl_rmsnorm_bwd(m->dh, G(m, x->attn_norm), m->dtmp2, a->h_in, P(m, x->attn_norm), a->rstd1, T, d, 1);
  }
  carl_embed_bwd(G(m, m->tok_emb), G(m, m->pos_emb), m->dh, m->tokens, B, S, d);
  /* data parallel: the sum over ranks of every gradient, the same bits on every rank (an expert
   * slot's gradient is non-zero on its own rank only), so the replicated parameters stay equal */
  carl_exec_t *ex = carl_step_exec(m->dstep);
  if (carl__sharded(m)) { /* the runs of non-expert tensors only: expert slots stay on their rank */
    int64_t r0 = 0, r1 = 0;
    for (int i = 0; i <= m->ntensors; i++) {
      const int cut = i == m->ntensors || carl__expert_layer(m, i) >= 0 || m->tensors[i].offset != r1;
      if (cut && r1 > r0) CARL_TRY(carl_errctx(carl_exec_allreduce_f(ex, m->grads + r0, r1 - r0), "gradient all-reduce"));
      if (i == m->ntensors) break;
      if (cut) r0 = r1 = m->tensors[i].offset + (carl__expert_layer(m, i) >= 0 ? m->tensors[i].numel : 0);
      if (carl__expert_layer(m, i) < 0) r1 = m->tensors[i].offset + m->tensors[i].numel;
    }
  } else if (carl_exec_size(ex) > 1) {
    CARL_TRY(carl_errctx(carl_exec_allreduce_f(ex, m->grads, m->nparams), "gradient all-reduce"));
  }
  carl__sync_replicas(m);
  return CARL_OK;
}

carl_status carl_model_gather_experts(carl_model_t *m) {
  /* the owner's slots are right in either mode (with replicas every rank updates every slot, but
   * only the owner's came from the start state by the owner's own migrations), so always gather */
  carl_exec_t *ex = m->dstep ? carl_step_exec(m->dstep) : NULL;
  if (!ex || carl_exec_size(ex) < 2) return CARL_OK;
  if (m->nlocal < m->P)
    return carl_fail(CARL_ERR_STATE, "gather of the expert slots: this rank stores its own %d of %d only "
                     "(carl_model_full gathers a copy)", m->nlocal, m->P);
  const int np = carl_exec_size(ex);
  float *arr[3] = {m->params, m->adam_m, m->adam_v};
  for (int i = 0; i < m->ntensors; i++) {
    if (carl__expert_layer(m, i) < 0) continue;
    const carl_tensor_info_t *t = &m->tensors[i];
    for (int a = 0; a < 3; a++)
      CARL_TRY(carl_errctx(carl_exec_allgather(ex, arr[a] + t->offset, sizeof(float) * (size_t)(t->numel / np)),
                           "gather of the expert slots"));
  }
  return CARL_OK;
}

carl_status carl_model_full(carl_model_t *m, carl_model_full_t *out) {
  memset(out, 0, sizeof *out);
  if (m->nlocal == m->P) { /* every slot stored here: gather the owners' slots in place, then views */
    CARL_TRY(carl_model_gather_experts(m));
    *out = (carl_model_full_t){m->ntensors, m->tensors, m->nparams, m->params, m->adam_m, m->adam_v, NULL};
    return CARL_OK;
  }
  carl_exec_t *ex = carl_step_exec(m->dstep);
  const int r = carl_exec_rank(ex);
  int64_t big = 0; /* the largest expert tensor, for the other ranks' scratch */
  for (int i = 0; i < m->ntensors; i++)
    if (carl__expert_layer(m, i) >= 0 && m->tensors_full[i].numel > big) big = m->tensors_full[i].numel;
  const size_t nf = r == 0 ? 3 * (size_t)m->nparams_full : (size_t)big;
  float *buf = malloc(sizeof(float) * (nf ? nf : 1));
  /* every rank goes on to the all-gathers or none does (the others would wait in them) */
  double bad = buf ? 0 : 1;
  carl_status st = carl_exec_allreduce(ex, &bad, 1);
  if (st == CARL_OK && bad > 0)
    st = buf ? carl_fail(CARL_ERR_NOMEM, "model: another rank is out of memory for the full model")
             : carl_fail(CARL_ERR_NOMEM, "model: out of memory for the full model (%zu floats)", nf);
  const float *arr[3] = {m->params, m->adam_m, m->adam_v};
  for (int a = 0; a < 3 && st == CARL_OK; a++)
    for (int i = 0; i < m->ntensors && st == CARL_OK; i++) {
      const carl_tensor_info_t *t = &m->tensors[i], *tf = &m->tensors_full[i];
      float *dst = r == 0 ? buf + (size_t)a * (size_t)m->nparams_full + tf->offset : NULL;
      if (carl__expert_layer(m, i) < 0) {
        if (dst) memcpy(dst, arr[a] + t->offset, sizeof(float) * (size_t)t->numel);
        continue;
      }
      float *all = dst ? dst : buf; /* [P, ...]: block r is this rank's */
      memcpy(all + t->numel * r, arr[a] + t->offset, sizeof(float) * (size_t)t->numel);
      st = carl_errctx(carl_exec_allgather(ex, all, sizeof(float) * (size_t)t->numel), "gather of the expert slots");
    }
  if (st != CARL_OK) {
    free(buf);
    return st;
  }
  if (r != 0) { /* the checkpoint is rank 0's: the others hold no copy */
    free(buf);
    return CARL_OK;
  }
  const size_t F = (size_t)m->nparams_full;
  *out = (carl_model_full_t){m->ntensors, m->tensors_full, m->nparams_full, buf, buf + F, buf + 2 * F, buf};
  return CARL_OK;
}

void carl_model_full_free(carl_model_full_t *f) {
  if (!f) return;
  free(f->owned);
  memset(f, 0, sizeof *f);
}

void carl_model_expert_slots(const carl_model_t *m, int64_t *first, int *count) {
  *first = m->slot0;
  *count = m->nlocal;
}

carl_status carl_model_router_update(carl_model_t *m) {
  if (!m->cap_T) return carl_fail(CARL_ERR_STATE, "router update: no forward before it");
  for (int l = 0; l < m->cfg.n_layers; l++) {
    carl_status st = carl_step_observe(m->dstep, l, &m->la[l].in, &m->la[l].moe.out);
    if (st != CARL_OK) return carl_errctx(st, "layer %d router update", l);
  }
  return CARL_OK;
}

/* Sum of squared gradients with each expert counted once (its first slot): replicas of an expert
 * are one parameter. Without replicas: one fixed-order pass over all gradients. */
static double carl__grad_sumsq(const carl_model_t *m) {
  carl_exec_t *ex = carl__sharded(m);
  if (ex) { /* non-expert tensors here (the same on every rank), expert slots on their rank */
    const int np = carl_exec_size(ex), r = carl_exec_rank(ex);
    double s = 0, *own = calloc((size_t)np, sizeof(double));
    if (!own) return NAN;
    for (int i = 0; i < m->ntensors; i++) {
      const carl_tensor_info_t *t = &m->tensors[i];
      if (carl__expert_layer(m, i) < 0)
        s += carl_sumsq(m->grads + t->offset, t->numel);
      else {
        int64_t o, n;
        carl__own_block(m, t, np, r, &o, &n);
        own[r] += carl_sumsq(m->grads + o, n);
      }
    }
    const int ok = carl_exec_allreduce(ex, own, np) == CARL_OK; /* one contribution per entry: exact */
    for (int a = 0; a < np; a++) s += own[a];
    free(own);
    return ok ? s : NAN;
  }
  if (!m->has_replicas) return carl_sumsq(m->grads, m->nparams);
  double s = 0;
  for (int i = 0; i < m->ntensors; i++) {
    const carl_tensor_info_t *t = &m->tensors[i];
    const float *g = m->grads + t->offset;
    int layer = -1;
    for (int l = 0; l < m->cfg.n_layers; l++)
      if (i == m->li[l].w13 || i == m->li[l].w2) layer = l;
    if (layer < 0) {
      s += carl_sumsq(g, t->numel);
      continue;
    }
    const int32_t *first = m->first_slot + (int64_t)layer * m->P;
    const int64_t n = t->numel / m->P;
    for (int gi = 0; gi < m->P; gi++)
      if (first[gi] == gi) s += carl_sumsq(g + (int64_t)gi * n, n);
  }
  return s;
}

float carl_model_clip_grad(carl_model_t *m, float max_norm) {
  if (m->dev) {
    double n = NAN;
    return carl__mdev_clip(m, max_norm, &n) == CARL_OK ? (float)n : NAN;
  }
  double norm = sqrt(carl__grad_sumsq(m));
  if (max_norm > 0 && norm > max_norm) {
    float s = (float)(max_norm / norm);
#pragma omp parallel for schedule(static) if (m->nparams >= CARL_OMP_MIN_WORK)
    for (int64_t i = 0; i < m->nparams; i++) m->grads[i] *= s;
  }
  return (float)norm;
}

carl_status carl_model_adamw_step(carl_model_t *m, const carl_adamw_cfg_t *opt, float lr) {
  if (!opt) return carl_fail(CARL_ERR_INVALID, "AdamW: options are NULL");
  if (!isfinite(lr) || lr < 0) return carl_fail(CARL_ERR_INVALID, "AdamW: learning rate %g", (double)lr);
  if (!(opt->beta1 >= 0 && opt->beta1 < 1 && opt->beta2 >= 0 && opt->beta2 < 1 && opt->eps > 0 && opt->weight_decay >= 0))
    return carl_fail(CARL_ERR_INVALID, "AdamW: need 0 <= beta1, beta2 < 1, eps > 0, weight_decay >= 0");
  m->adam_t++;
  m->fresh = 0;
  if (m->dev) return carl__mdev_adamw(m, opt, lr);
  carl_exec_t *ex = carl__sharded(m);
  for (int i = 0; i < m->ntensors; i++) {
    const carl_tensor_info_t *t = &m->tensors[i];
    int64_t o = t->offset, n = t->numel;
    if (ex && carl__expert_layer(m, i) >= 0) /* my expert slots only */
      carl__own_block(m, t, carl_exec_size(ex), carl_exec_rank(ex), &o, &n);
    carl_adamw_update(m->params + o, m->grads + o, m->adam_m + o, m->adam_v + o, n, opt, lr, m->adam_t, t->decay);
  }
  return CARL_OK;
}

carl_status carl_model_layer_stats(const carl_model_t *m, int layer, carl_moe_stats_t *st) {
  if (layer < 0 || layer >= m->cfg.n_layers)
    return carl_fail(CARL_ERR_INVALID, "layer %d: outside 0..%d", layer, m->cfg.n_layers - 1);
  if (!m->cap_T) return carl_fail(CARL_ERR_STATE, "layer stats: no forward yet");
  const carl__layer_act_t *a = &m->la[layer];
  memset(st, 0, sizeof *st);
  st->T = a->moe.T;
  st->E = m->cfg.n_experts;
  st->k = m->cfg.top_k;
  st->logits = a->moe.logits;
  st->experts = a->moe.experts;
  st->weights = a->moe.weights;
  st->load = a->moe.load;
  st->dropped = a->moe.out.dropped;
  st->nloss = a->moe.out.nloss;
  memcpy(st->loss, a->moe.out.loss, sizeof st->loss);
  st->loss_total = a->moe.out.loss_total;
  if (m->user_topo) {
    const carl_cost_t *c = carl_step_cost(m->dstep, layer);
    memcpy(st->bytes, c->bytes, sizeof st->bytes);
    st->inter_fraction = c->inter_fraction;
    st->a2a_s = c->a2a_s;
  }
  return CARL_OK;
}

/* ---- the GPU (the device half: src/cuda/model.cu) --------------------------------------------- */
carl_status carl_model_device_bytes(const carl_model_t *m, int B, int S, size_t *bytes) {
  return carl__mdev_bytes(m, B, S, bytes);
}

carl_status carl_model_to_device(carl_model_t *m, carl_cuda_t *g, int B, int S) {
  if (!m || !g) return carl_fail(CARL_ERR_INVALID, "carl_model_to_device: NULL argument");
  if (m->dev) return carl_fail(CARL_ERR_STATE, "model: already on the GPU");
  if (m->exec_user && carl_exec_size(m->exec_user) > 1)
    return carl_fail(CARL_ERR_UNSUPPORTED, "model on the GPU: one process only (the executor '%s' runs %d)",
                     carl_exec_name(m->exec_user), carl_exec_size(m->exec_user));
  if (B < 1 || S < 1 || S > m->cfg.max_seq)
    return carl_fail(CARL_ERR_SHAPE, "model on the GPU: batches of [%d, %d], need B >= 1 and 1 <= S <= max_seq = %d", B, S,
                     m->cfg.max_seq);
  carl__mdev_t *d = NULL;
  CARL_TRY(carl__mdev_create(m, g, B, S, &d));
  m->dev = d;
  /* the step keeps its placements and statistics; the device executor moves the device copies */
  carl_status st = carl_step_set_exec(m->dstep, carl__mdev_exec(d));
  for (int l = 0; l < m->cfg.n_layers && st == CARL_OK; l++) {
    carl_exec_tensor_t t[6];
    const int n = carl__slot_tensors(m, l, t);
    st = carl_step_set_tensors(m->dstep, l, t, n);
  }
  if (st != CARL_OK) { /* back to the host executor and tensors */
    m->dev = NULL;
    (void)carl_step_set_exec(m->dstep, m->exec_user ? m->exec_user : m->exec);
    for (int l = 0; l < m->cfg.n_layers; l++) {
      carl_exec_tensor_t t[6];
      const int n = carl__slot_tensors(m, l, t);
      (void)carl_step_set_tensors(m->dstep, l, t, n);
    }
    carl__mdev_free(d);
    return st;
  }
  carl__free_acts(m); /* host activations: the device forward keeps only what the decisions need */
  return CARL_OK;
}

int carl_model_on_device(const carl_model_t *m) { return m && m->dev != NULL; }

carl_status carl_model_sync_host(carl_model_t *m) { return m->dev ? carl__mdev_download(m) : CARL_OK; }
