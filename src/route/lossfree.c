/* lossfree: DeepSeek auxiliary-loss-free balancing (Wang et al. 2024, arXiv 2408.15664; DeepSeek-V3).
 * S_t = TopK(s + b); g = s at S_t, renormalised. After the step (carl_router_update):
 * b_e += u * sign(mean(load) - load_e), u = 1e-3. Route with the old b, then update.
 * Defaults follow the paper's main setting: sigmoid scores, no auxiliary loss, no z-loss.
 * With groups = G > 0 the selection is group-limited as in DeepSeek-V3: G contiguous blocks of E/G
 * experts, group score = sum of the top (k/M) biased scores s + b in the group, the M best groups
 * kept (lower group on ties), TopK(s + b) inside them (DeepSeek-V3: G = 8, M = 4, k = 8).
 * State: b [E] (float64 state file). */
#include <stdlib.h>
#include <string.h>

#include "carl/balance.h"
#include "route/router_impl.h"

typedef struct {
  int E;      /* 0 until the first route or load */
  double u;
  int groups, M;
  float *b;   /* [E] selection bias */
} lossfree_t;

static carl_status lf_init(carl_router_t *r) {
  lossfree_t *st = calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "lossfree: out of memory");
  r->state = st;
  CARL_TRY(carl_router_opt_int(r, "groups", 0, 1 << 20, &st->groups));
  CARL_TRY(carl_router_opt_int(r, "M", 0, 1 << 20, &st->M));
  return carl_router_opt_real(r, "u", 0, 1, &st->u);
}

static carl_status lf_size(carl_router_t *r, int E) {
  lossfree_t *st = r->state;
  if (st->E == E) return CARL_OK;
  if (st->E != 0)
    return carl_fail(CARL_ERR_STATE, "lossfree: bias has %d entries but the logits have E = %d", st->E, E);
  st->b = calloc((size_t)E, sizeof *st->b);
  if (!st->b) return carl_fail(CARL_ERR_NOMEM, "lossfree: out of memory");
  st->E = E;
  return CARL_OK;
}

static carl_status lf_describe(carl_router_t *r, const carl_route_in_t *in, carl_select_t *sel) {
  CARL_TRY(lf_size(r, in->E));
  lossfree_t *st = r->state;
  const int E = in->E, k = (int)r->opt[CARL_OPT_K], G = st->groups;
  memset(sel, 0, sizeof *sel);
  sel->bias = st->b;
  sel->nrows = 1;
  if (G == 0) return CARL_OK;
  if (G > E || E % G != 0)
    return carl_fail(CARL_ERR_INVALID, "groups: E = %d experts are not divisible into %d groups", E, G);
  const int M = st->M > 0 ? st->M : (G < k ? G : k);
  if (M > G) return carl_fail(CARL_ERR_INVALID, "M: %d groups kept but there are only %d groups", M, G);
  if (M * (E / G) < k)
    return carl_fail(CARL_ERR_INVALID, "M: %d groups of %d experts cannot hold k = %d experts", M, E / G, k);
  int32_t *group = carl_arena_alloc(&r->scratch, (size_t)E * sizeof *group);
  if (!group) return carl_fail(CARL_ERR_NOMEM, "lossfree: out of memory");
  for (int e = 0; e < E; e++) group[e] = e / (E / G);
  sel->group = group;
  sel->ngroups = G;
  sel->M = M;
  sel->per_group = k / M > 0 ? k / M : 1;
  return CARL_OK;
}

static carl_status lf_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  carl_select_t sel;
  CARL_TRY(lf_describe(r, in, &sel));
  return carl_route_select(r, in, out, &sel);
}

static carl_status lf_update(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out) {
  CARL_TRY(lf_size(r, in->E));
  lossfree_t *st = r->state;
  const int E = in->E;
  double *load = malloc((size_t)E * sizeof *load);
  if (!load) return carl_fail(CARL_ERR_NOMEM, "lossfree: out of memory");
  if (out->global_load)
    memcpy(load, out->global_load, (size_t)E * sizeof *load);
  else
    carl_load_experts(out->experts, in->T, (int)r->opt[CARL_OPT_K], E, load);
  double mean = 0;
  for (int e = 0; e < E; e++) mean += load[e];
  mean /= E;
  for (int e = 0; e < E; e++) {
    double d = mean - load[e];
    st->b[e] += (float)(st->u * (double)((d > 0) - (d < 0)));
  }
  free(load);
  return CARL_OK;
}

static carl_status lf_save(const carl_router_t *r, const char *path) {
  const lossfree_t *st = r->state;
  double *b = malloc((size_t)(st->E > 0 ? st->E : 1) * sizeof *b);
  if (!b) return carl_fail(CARL_ERR_NOMEM, "lossfree: out of memory");
  for (int e = 0; e < st->E; e++) b[e] = st->b[e];
  carl_status s = carl_route_state_save(path, "lossfree", CARL_STATE_F64, st->E, b);
  free(b);
  return s;
}

static carl_status lf_load(carl_router_t *r, const char *path) {
  lossfree_t *st = r->state;
  void *a = NULL;
  int64_t n = 0;
  CARL_TRY(carl_route_state_load(path, "lossfree", CARL_STATE_F64, -1, NULL, &a, &n));
  const double *b = a;
  if (st->E > 0 && n != st->E) {
    free(a);
    return carl_fail(CARL_ERR_STATE, "%s: bias has %lld entries, this router has E = %d", path, (long long)n, st->E);
  }
  if (n < 1 || n > (1 << 24)) {
    free(a);
    return carl_fail(CARL_ERR_STATE, "%s: bias has %lld entries", path, (long long)n);
  }
  if (st->E == 0) {
    st->b = malloc((size_t)n * sizeof *st->b);
    if (!st->b) {
      free(a);
      return carl_fail(CARL_ERR_NOMEM, "lossfree: out of memory");
    }
    st->E = (int)n;
  }
  for (int64_t e = 0; e < n; e++) st->b[e] = (float)b[e];
  free(a);
  return CARL_OK;
}

static void lf_free(carl_router_t *r) {
  lossfree_t *st = r->state;
  if (st) free(st->b);
  free(st);
}

static const carl_opt_t lf_opts[] = {
    {"score", 1, "score function: 1 sigmoid (DeepSeek-V3, the paper's main setting), 0 softmax"},
    {"z_loss", 0, "router z-loss coefficient (DeepSeek-V3 uses none)"},
    {"u", 1e-3, "bias update speed: b_e += u * sign(mean load - load_e) after each step"},
    {"groups", 0, "0: no groups; G > 0: group-limited selection over G contiguous blocks of E/G experts (DeepSeek-V3: 8)"},
    {"M", 0, "groups kept per token with groups > 0; 0 = min(groups, k) (DeepSeek-V3: 4)"},
};

const carl_router_impl_t carl__router_lossfree = {
    .name = "lossfree",
    .help = "auxiliary-loss-free balancing: TopK(s + b), b follows the loads by sign steps (DeepSeek)",
    .opts = lf_opts,
    .nopts = 5,
    .init = lf_init,
    .route = lf_route,
    .update = lf_update,
    .save = lf_save,
    .load = lf_load,
    .free = lf_free,
    .describe = lf_describe,
};
