/* The router registry: names -> implementations, common options, option parsing, and the
 * create/route/update/backward/save/load/free entry points (carl/route.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/balance.h"
#include "carl/route.h"
#include "route/router_impl.h"

/* ---- the registered routers ------------------------------------------------------------------ */
/* Baseline routers (src/route/topk.c, hash.c, sinkhorn.c, expert_choice.c, lossfree.c,
 * grouplimited.c, bip.c). */
extern const carl_router_impl_t carl__router_topk, carl__router_switch, carl__router_hash, carl__router_sinkhorn,
    carl__router_expert_choice, carl__router_lossfree, carl__router_grouplimited, carl__router_bip;

/* Routers of the CARL family (c2r, locmoe, fastermoe, carl): declare them in this block.
 * extern const carl_router_impl_t carl__router_c2r, ...;
 * -- begin CARL-family declarations -- */
extern const carl_router_impl_t carl__router_carl, carl__router_c2r, carl__router_locmoe, carl__router_fastermoe,
    carl__router_tamoe;
/* -- end CARL-family declarations -- */

static const carl_router_impl_t *const carl__routers[] = {
    &carl__router_topk,
    &carl__router_switch,
    &carl__router_hash,
    &carl__router_sinkhorn,
    &carl__router_expert_choice,
    &carl__router_lossfree,
    &carl__router_grouplimited,
    &carl__router_bip,

    /* Routers of the CARL family: add their entries in this block.
     * -- begin CARL-family entries -- */
    &carl__router_carl,
    &carl__router_c2r,
    &carl__router_locmoe,
    &carl__router_fastermoe,
    &carl__router_tamoe,
    /* -- end CARL-family entries -- */

    NULL};

/* ---- common options (every router has them, first, in the order of CARL_OPT_*) --------------- */
static const carl_opt_t carl__common_opts[CARL_NCOMMON] = {
    {"k", 2, "experts per token (1 <= k <= E)"},
    {"capacity_factor", 0, "per-expert capacity C = ceil(cf*T*k/E), overflow dropped lowest score first; 0 = dropless"},
    {"score", 0, "score function: 0 softmax, 1 sigmoid"},
    {"renorm", 1, "1: gate weights renormalised over the kept experts of each token; 0: raw scores"},
    {"z_loss", 1e-3, "router z-loss coefficient: z_loss * mean_t logsumexp(z_t)^2 (ST-MoE)"},
    {"aux", 0, "Switch/GShard auxiliary loss coefficient: aux * E * sum_e f_e P_e"},
    {"jitter", 0, "std of Gaussian noise added to the logits for expert selection only (training exploration)"},
};

const char *const *carl_router_names(void) {
  static const char *names[sizeof carl__routers / sizeof carl__routers[0]];
  /* built on every call from constant data: no initialisation race */
  size_t n = 0;
  for (size_t i = 0; carl__routers[i]; i++) names[n++] = carl__routers[i]->name;
  names[n] = NULL;
  return names;
}

const carl_router_impl_t *carl_router_find(const char *name) {
  if (!name) return NULL;
  for (size_t i = 0; carl__routers[i]; i++)
    if (strcmp(carl__routers[i]->name, name) == 0) return carl__routers[i];
  return NULL;
}

const char *carl_router_help(const char *name) {
  const carl_router_impl_t *impl = carl_router_find(name);
  return impl ? (impl->help ? impl->help : "") : NULL;
}

/* The option table of impl: common options (an impl option of the same name replaces the common
 * default and help), then the impl's own options. Returns the count, or < 0 when it would exceed max. */
static int carl__opt_table(const carl_router_impl_t *impl, const carl_opt_t **opts, int max) {
  int n = 0;
  for (int i = 0; i < CARL_NCOMMON; i++) {
    const carl_opt_t *o = &carl__common_opts[i];
    for (int j = 0; j < impl->nopts; j++)
      if (strcmp(impl->opts[j].name, o->name) == 0) o = &impl->opts[j];
    if (n < max) opts[n] = o;
    n++;
  }
  for (int j = 0; j < impl->nopts; j++) {
    int common = 0;
    for (int i = 0; i < CARL_NCOMMON; i++)
      if (strcmp(impl->opts[j].name, carl__common_opts[i].name) == 0) common = 1;
    if (common) continue;
    if (n < max) opts[n] = &impl->opts[j];
    n++;
  }
  return n;
}

int carl_router_options(const char *name, const carl_opt_t **opts, int max) {
  const carl_router_impl_t *impl = carl_router_find(name);
  if (!impl) return carl_fail(CARL_ERR_NOT_FOUND, "router '%s': unknown (see carl_router_names)", name ? name : "(null)");
  return carl__opt_table(impl, opts, max);
}

carl_status carl_router_opt_real(const carl_router_t *r, const char *key, double lo, double hi, double *out) {
  double v = carl_router_get(r, key);
  if (isnan(v)) return carl_fail(CARL_ERR_NOT_FOUND, "router '%s': no option '%s'", r->impl->name, key);
  if (!(v >= lo && v <= hi))
    return carl_fail(CARL_ERR_INVALID, "router '%s': option %s = %g is out of range [%g, %g]", r->impl->name, key, v, lo, hi);
  *out = v;
  return CARL_OK;
}

carl_status carl_router_opt_int(const carl_router_t *r, const char *key, int lo, int hi, int *out) {
  double v;
  CARL_TRY(carl_router_opt_real(r, key, lo, hi, &v));
  if (v != floor(v)) return carl_fail(CARL_ERR_INVALID, "router '%s': option %s = %g must be an integer", r->impl->name, key, v);
  *out = (int)v;
  return CARL_OK;
}

static carl_status carl__check_common(const carl_router_t *r) {
  int iv;
  double dv;
  CARL_TRY(carl_router_opt_int(r, "k", 1, 65536, &iv));
  CARL_TRY(carl_router_opt_real(r, "capacity_factor", 0, 1e6, &dv));
  CARL_TRY(carl_router_opt_int(r, "score", 0, 1, &iv));
  CARL_TRY(carl_router_opt_int(r, "renorm", 0, 1, &iv));
  CARL_TRY(carl_router_opt_real(r, "z_loss", 0, 1e6, &dv));
  CARL_TRY(carl_router_opt_real(r, "aux", 0, 1e6, &dv));
  CARL_TRY(carl_router_opt_real(r, "jitter", 0, 1e6, &dv));
  return CARL_OK;
}

carl_status carl_router_create(const char *name, int nset, const char *const *keys, const double *vals,
                               carl_router_t **out) {
  if (!out) return carl_fail(CARL_ERR_INVALID, "carl_router_create: out is NULL");
  *out = NULL;
  const carl_router_impl_t *impl = carl_router_find(name);
  if (!impl) {
    char list[512] = "";
    const char *const *nm = carl_router_names();
    for (int i = 0; nm[i]; i++) {
      if (i) strncat(list, ", ", sizeof list - strlen(list) - 1);
      strncat(list, nm[i], sizeof list - strlen(list) - 1);
    }
    return carl_fail(CARL_ERR_NOT_FOUND, "router '%s': unknown router (known: %s)", name ? name : "(null)", list);
  }
  if (nset < 0 || (nset > 0 && (!keys || !vals)))
    return carl_fail(CARL_ERR_INVALID, "router '%s': option list is inconsistent", impl->name);
  carl_router_t *r = calloc(1, sizeof *r);
  if (!r) return carl_fail(CARL_ERR_NOMEM, "router '%s': out of memory", impl->name);
  r->impl = impl;
  carl_arena_init(&r->scratch, 0);
  int n = carl__opt_table(impl, r->opt_def, CARL_ROUTER_MAX_OPTS);
  CARL_ASSERT(n <= CARL_ROUTER_MAX_OPTS);
  r->nopt = n;
  for (int i = 0; i < n; i++) r->opt[i] = r->opt_def[i]->def;
  carl_status st = CARL_OK;
  for (int s = 0; s < nset && st == CARL_OK; s++) {
    int found = -1;
    for (int i = 0; i < n; i++)
      if (keys[s] && strcmp(keys[s], r->opt_def[i]->name) == 0) found = i;
    if (found < 0) {
      char list[768] = "";
      for (int i = 0; i < n; i++) {
        if (i) strncat(list, ", ", sizeof list - strlen(list) - 1);
        strncat(list, r->opt_def[i]->name, sizeof list - strlen(list) - 1);
      }
      st = carl_fail(CARL_ERR_NOT_FOUND, "router '%s': unknown option '%s' (options: %s)", impl->name,
                     keys[s] ? keys[s] : "(null)", list);
    } else if (!isfinite(vals[s])) {
      st = carl_fail(CARL_ERR_INVALID, "router '%s': option %s is not a finite number", impl->name, keys[s]);
    } else {
      r->opt[found] = vals[s];
    }
  }
  if (st == CARL_OK) st = carl__check_common(r);
  if (st == CARL_OK && impl->init) st = impl->init(r);
  if (st != CARL_OK) {
    carl_router_free(r);
    return st;
  }
  *out = r;
  return CARL_OK;
}

double carl_router_get(const carl_router_t *r, const char *key) {
  if (!r || !key) return NAN;
  for (int i = 0; i < r->nopt; i++)
    if (strcmp(r->opt_def[i]->name, key) == 0) return r->opt[i];
  return NAN;
}

const char *carl_router_name(const carl_router_t *r) { return r ? r->impl->name : NULL; }

int carl_router_has_state(const carl_router_t *r) { return r && r->impl->save && r->impl->load; }

int carl_router_updates(const carl_router_t *r) { return r && r->impl->update; }

static carl_status carl__check_in(const carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out) {
  if (!r) return carl_fail(CARL_ERR_INVALID, "router: NULL");
  if (!in || !out) return carl_fail(CARL_ERR_INVALID, "router '%s': input or output is NULL", r->impl->name);
  if (in->T < 1) return carl_fail(CARL_ERR_INVALID, "T: %lld tokens, must be >= 1", (long long)in->T);
  if (in->E < 1) return carl_fail(CARL_ERR_INVALID, "E: %d experts, must be >= 1", in->E);
  int k = (int)r->opt[CARL_OPT_K];
  if (k > in->E)
    return carl_fail(CARL_ERR_INVALID, "k: %d experts per token but only E = %d experts", k, in->E);
  if (!out->experts || !out->weights)
    return carl_fail(CARL_ERR_INVALID, "router '%s': output experts/weights buffers are NULL", r->impl->name);
  if (in->src) {
    int D = carl_route_devices(in);
    for (int64_t t = 0; t < in->T; t++)
      if (in->src[t] < 0 || in->src[t] >= D)
        return carl_fail(CARL_ERR_INVALID, "src: token %lld is on device %d, outside 0..%d", (long long)t, in->src[t], D - 1);
  }
  return CARL_OK;
}

/* The z-loss and the Switch aux loss, from the statistics the router left or from the logits. */
static carl_status carl__common_losses(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  carl_route_common_t c;
  carl_route_common(r, &c);
  if (c.z_coef <= 0 && c.aux_coef <= 0) return CARL_OK;
  if (!in->logits) return carl_fail(CARL_ERR_INVALID, "logits: NULL (needed for the z-loss / aux loss)");
  const int64_t T = in->T;
  const int E = in->E;
  if (c.z_coef > 0) {
    double v;
    if (r->have_zsum && !out->dlogits) {
      v = c.z_coef * r->zsum / (double)T;
    } else {
      CARL_TRY(carl_loss_z(in->logits, T, E, c.z_coef, &v, out->dlogits));
    }
    carl_route_add_loss(out, "z", v);
  }
  if (c.aux_coef > 0) {
    double v;
    if (r->have_psum && r->have_load && !out->dlogits) {
      v = carl_loss_expert_value(r->load, r->psum, T, c.k, E, c.aux_coef);
    } else if (r->have_psum && !out->dlogits) {
      double *load = calloc((size_t)E, sizeof *load);
      if (!load) return carl_fail(CARL_ERR_NOMEM, "aux loss: out of memory");
      carl_load_experts(out->experts, T, c.k, E, load);
      v = carl_loss_expert_value(load, r->psum, T, c.k, E, c.aux_coef);
      free(load);
    } else {
      CARL_TRY(carl_loss_expert(in->logits, T, E, c.score, out->experts, c.k, c.aux_coef, &v, out->dlogits));
    }
    carl_route_add_loss(out, "aux", v);
  }
  return CARL_OK;
}

carl_status carl__router_prepare(carl_router_t *r, int E, carl_route_out_t *out) {
  out->nloss = 0;
  out->loss_total = 0;
  out->dropped = 0;
  out->capacity = 0;
  if (r->psum_cap < E) {
    double *p = realloc(r->psum, (size_t)E * sizeof *p);
    if (p) r->psum = p;
    double *l = p ? realloc(r->load, (size_t)E * sizeof *l) : NULL;
    if (!p || !l) return carl_fail(CARL_ERR_NOMEM, "router '%s': out of memory", r->impl->name);
    r->load = l;
    r->psum_cap = E;
  }
  r->have_psum = 0;
  r->have_load = 0;
  r->have_zsum = 0;
  carl_arena_reset(&r->scratch);
  return CARL_OK;
}

carl_status carl__router_finish(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  if (r->impl->finish) CARL_TRY(r->impl->finish(r, in, out));
  return carl__common_losses(r, in, out);
}

carl_status carl_router_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  CARL_TRY(carl__check_in(r, in, out));
  if (out->dlogits) memset(out->dlogits, 0, (size_t)in->T * (size_t)in->E * sizeof(float));
  CARL_TRY(carl__router_prepare(r, in->E, out));
  CARL_TRY(r->impl->route(r, in, out));
  return carl__router_finish(r, in, out);
}

carl_status carl_router_update(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out) {
  if (!r) return carl_fail(CARL_ERR_INVALID, "router: NULL");
  if (!r->impl->update) return CARL_OK;
  CARL_TRY(carl__check_in(r, in, out));
  return r->impl->update(r, in, out);
}

carl_status carl_router_backward(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out,
                                 const float *dweights, float *dlogits) {
  CARL_TRY(carl__check_in(r, in, out));
  if (!dweights || !dlogits) return carl_fail(CARL_ERR_INVALID, "router '%s': dweights/dlogits is NULL", r->impl->name);
  if (r->backward) return r->backward(r, in, out, dweights, dlogits);
  if (!in->logits) return carl_fail(CARL_ERR_INVALID, "logits: NULL");
  carl_route_common_t c;
  carl_route_common(r, &c);
  return carl_route_gate_backward(in->logits, in->T, in->E, c.k, c.score, c.renorm, out->experts, dweights, dlogits);
}

carl_status carl_router_save(const carl_router_t *r, const char *path) {
  if (!r || !path) return carl_fail(CARL_ERR_INVALID, "router save: NULL argument");
  if (!r->impl->save) return carl_fail(CARL_ERR_STATE, "router '%s' has no state to save", r->impl->name);
  return r->impl->save(r, path);
}

carl_status carl_router_load(carl_router_t *r, const char *path) {
  if (!r || !path) return carl_fail(CARL_ERR_INVALID, "router load: NULL argument");
  if (!r->impl->load) return carl_fail(CARL_ERR_STATE, "router '%s' has no state to load", r->impl->name);
  return r->impl->load(r, path);
}

void carl_router_free(carl_router_t *r) {
  if (!r) return;
  if (r->impl && r->impl->free) r->impl->free(r);
  free(r->psum);
  free(r->load);
  carl_arena_free(&r->scratch);
  free(r);
}
