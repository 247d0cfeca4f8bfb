/* Experiment configs for the simulator: parsing and every check done before any work starts. */
#include <cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/array.h"
#include "carl/place.h"
#include "core/json_internal.h"
#include "carl/sim.h"

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

/* labels end up in CSV fields, Markdown cells and gnuplot strings: keep them plain */
static carl_status check_label(const char *ctx, const char *label) {
  if (!label[0] || strpbrk(label, ",\"'|\n\r\\/"))
    return carl_fail(CARL_ERR_INVALID, "%s: label '%s' must be non-empty without , \" ' | / \\ or newlines", ctx, label);
  return CARL_OK;
}

/* ---- typed field readers: every error names the field ---------------------------------------- */
static carl_status get_num(const cJSON *obj, const char *ctx, const char *key, double lo, double hi, double *out) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!it) return CARL_OK; /* keep default */
  if (!cJSON_IsNumber(it)) return carl_fail(CARL_ERR_INVALID, "%s%s: must be a number", ctx, key);
  double v = it->valuedouble;
  if (!isfinite(v) || v < lo || v > hi)
    return carl_fail(CARL_ERR_INVALID, "%s%s: %g is out of range [%g, %g]", ctx, key, v, lo, hi);
  *out = v;
  return CARL_OK;
}

static carl_status get_int(const cJSON *obj, const char *ctx, const char *key, double lo, double hi, int64_t *out) {
  double v = (double)*out;
  CARL_TRY(get_num(obj, ctx, key, lo, hi, &v));
  if (v != floor(v)) return carl_fail(CARL_ERR_INVALID, "%s%s: %g must be an integer", ctx, key, v);
  *out = (int64_t)v;
  return CARL_OK;
}

static carl_status get_i32(const cJSON *obj, const char *ctx, const char *key, double lo, double hi, int *out) {
  int64_t v = *out;
  CARL_TRY(get_int(obj, ctx, key, lo, hi, &v));
  *out = (int)v;
  return CARL_OK;
}

static carl_status check_keys(const cJSON *obj, const char *ctx, const char *const *allowed) {
  for (const cJSON *it = obj->child; it; it = it->next) {
    int ok = 0;
    for (int i = 0; allowed[i]; i++)
      if (!strcmp(it->string, allowed[i])) ok = 1;
    if (!ok) return carl_fail(CARL_ERR_INVALID, "%s%s: unknown field", ctx, it->string);
  }
  return CARL_OK;
}

void carl_sim_config_free(carl_sim_config_t *cfg) {
  free(cfg->name);
  for (int i = 0; i < cfg->nrouter; i++) {
    free(cfg->routers[i].label);
    free(cfg->routers[i].name);
    for (int j = 0; j < cfg->routers[i].nopt; j++) free(cfg->routers[i].keys[j]);
  }
  free(cfg->routers);
  free(cfg->topos);
  for (int i = 0; i < cfg->nscen; i++) {
    free(cfg->scens[i].label);
    free(cfg->scens[i].trace_dir);
  }
  free(cfg->scens);
  free(cfg->seeds);
  memset(cfg, 0, sizeof *cfg);
}

static void defaults(carl_sim_config_t *c) {
  memset(c, 0, sizeof *c);
  c->steps = 200;
  c->tokens = 4096;
  c->layers = 1;
  c->d = 64;
  c->E = 64;
  c->lr = 0.5;
  c->task_weight = 1.0;
  c->token_bytes = 4096 * 2;                  /* hidden 4096, bf16 */
  c->expert_bytes = 3.0 * 4096 * 1408 * 14;    /* SwiGLU expert, 3 d f parameters x 14 bytes (bf16 + fp32 master + Adam m, v) */
  c->plan_mode = CARL_PLAN_FLAT;
  c->place_ema = 0.9;
  c->summary_from = 0;
  c->csv_every = 1;
  c->c2r_profile = 50;
  carl_steptime_opts_default(&c->steptime);
  carl_workload_defaults(&c->work);
}

static carl_status parse_router(const cJSON *it, int i, carl_sim_router_t *r) {
  char ctx[64];
  snprintf(ctx, sizeof ctx, "routers[%d]", i);
  r->place_algo = -1;
  if (cJSON_IsString(it)) {
    r->name = dupstr(it->valuestring);
    r->label = dupstr(it->valuestring);
  } else if (cJSON_IsObject(it)) {
    static const char *const allowed[] = {"name", "label", "opts", "refresh_every", "place", "replicas", NULL};
    char c2[80];
    snprintf(c2, sizeof c2, "%s.", ctx);
    CARL_TRY(check_keys(it, c2, allowed));
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
    if (!cJSON_IsString(nm)) return carl_fail(CARL_ERR_INVALID, "%s.name: must be a string (a router name)", ctx);
    r->name = dupstr(nm->valuestring);
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(it, "label");
    if (lb && !cJSON_IsString(lb)) return carl_fail(CARL_ERR_INVALID, "%s.label: must be a string", ctx);
    r->label = dupstr(lb ? lb->valuestring : nm->valuestring);
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(it, "opts");
    if (op) {
      if (!cJSON_IsObject(op)) return carl_fail(CARL_ERR_INVALID, "%s.opts: must be an object of numbers", ctx);
      for (const cJSON *o = op->child; o; o = o->next) {
        if (r->nopt >= CARL_SIM_MAX_OPTS) return carl_fail(CARL_ERR_INVALID, "%s.opts: more than %d options", ctx, CARL_SIM_MAX_OPTS);
        double v;
        if (cJSON_IsNumber(o))
          v = o->valuedouble;
        else if (cJSON_IsBool(o))
          v = cJSON_IsTrue(o) ? 1 : 0;
        else
          return carl_fail(CARL_ERR_INVALID, "%s.opts.%s: must be a number", ctx, o->string);
        r->keys[r->nopt] = dupstr(o->string);
        r->vals[r->nopt] = v;
        r->nopt++;
      }
    }
    CARL_TRY(get_i32(it, c2, "refresh_every", 0, 1e9, &r->refresh_every));
    const cJSON *pa = cJSON_GetObjectItemCaseSensitive(it, "place");
    if (pa) {
      carl_place_algo a;
      if (!cJSON_IsString(pa) || carl_place_algo_parse(pa->valuestring, &a) != CARL_OK)
        return carl_fail(CARL_ERR_INVALID, "%s.place: must be a placement algorithm name (%s)", ctx, carl_errmsg());
      r->place_algo = (int)a;
    }
    CARL_TRY(get_i32(it, c2, "replicas", 0, CARL_PLACE_MAX_SLOTS, &r->replicas));
  } else {
    return carl_fail(CARL_ERR_INVALID, "%s: must be a router name or an object {\"name\":..,\"opts\":{..}}", ctx);
  }
  if (!r->name || !r->label) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", ctx);
  CARL_TRY(check_label(ctx, r->label));
  if (!carl_router_find(r->name)) {
    char list[512] = "";
    const char *const *names = carl_router_names();
    for (int j = 0; names && names[j]; j++) {
      if (j) strncat(list, ", ", sizeof list - strlen(list) - 1);
      strncat(list, names[j], sizeof list - strlen(list) - 1);
    }
    return carl_fail(CARL_ERR_NOT_FOUND, "%s: unknown router '%s' (registered: %s)", ctx, r->name, list);
  }
  /* create once so that unknown or out-of-range options fail now, not mid-study */
  carl_router_t *tmp = NULL;
  carl_status st = carl_router_create(r->name, r->nopt, (const char *const *)r->keys, r->vals, &tmp);
  if (st != CARL_OK) return carl_errctx(st, "%s (%s)", ctx, r->label);
  carl_router_free(tmp);
  return CARL_OK;
}

static carl_status parse_topo(const cJSON *it, int i, const char *base_dir, carl_topo_t *t) {
  char ctx[64];
  snprintf(ctx, sizeof ctx, "topologies[%d]", i);
  if (cJSON_IsString(it)) {
    char path[4096];
    const char *pre = (it->valuestring[0] != '/' && base_dir && base_dir[0]) ? base_dir : NULL;
    if ((size_t)snprintf(path, sizeof path, "%s%s%s", pre ? pre : "", pre ? "/" : "", it->valuestring) >= sizeof path)
      return carl_fail(CARL_ERR_INVALID, "%s: path too long", ctx);
    carl_status st = carl_topo_load(path, t);
    if (st != CARL_OK) return carl_errctx(st, "%s", ctx);
    if (!t->name[0]) {
      const char *b = strrchr(it->valuestring, '/');
      b = b ? b + 1 : it->valuestring;
      snprintf(t->name, sizeof t->name, "%.*s", (int)(strcspn(b, ".") < 63 ? strcspn(b, ".") : 63), b);
    }
  } else if (cJSON_IsObject(it)) {
    char *txt = cJSON_PrintUnformatted(it);
    if (!txt) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", ctx);
    carl_status st = carl_topo_parse(txt, strlen(txt), t);
    free(txt);
    if (st != CARL_OK) return carl_errctx(st, "%s", ctx);
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
    if (cJSON_IsString(nm)) snprintf(t->name, sizeof t->name, "%s", nm->valuestring);
  } else {
    return carl_fail(CARL_ERR_INVALID, "%s: must be a topology file path or a topology object", ctx);
  }
  if (!t->name[0]) snprintf(t->name, sizeof t->name, "%dx%d", t->nodes, t->devices_per_node);
  return check_label(ctx, t->name);
}

/* optional tokens.npy: int32/int64 [N] vocabulary ids (non-negative) */
static carl_status check_tokens(const char *ctx, const char *dir, int64_t N) {
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/tokens.npy", dir) >= sizeof path)
    return carl_fail(CARL_ERR_INVALID, "%s: path too long", ctx);
  FILE *f = fopen(path, "rb");
  if (!f) return CARL_OK;
  fclose(f);
  carl_array_t a;
  carl_status st = carl_npy_read(path, &a);
  if (st != CARL_OK) return carl_errctx(st, "%s", ctx);
  if (a.ndim != 1 || a.shape[0] != N || (a.dtype != CARL_I32 && a.dtype != CARL_I64)) {
    carl_array_free(&a);
    return carl_fail(CARL_ERR_SHAPE, "%s: %s must be int32 or int64 of shape [%lld]", ctx, path, (long long)N);
  }
  for (int64_t t = 0; t < N; t++) {
    int64_t v = a.dtype == CARL_I32 ? ((int32_t *)a.data)[t] : ((int64_t *)a.data)[t];
    if (v < 0 || v > INT32_MAX) {
      carl_array_free(&a);
      return carl_fail(CARL_ERR_INVALID, "%s: %s: token %lld has id %lld (must be in [0, 2^31))", ctx, path, (long long)t,
                       (long long)v);
    }
  }
  carl_array_free(&a);
  return CARL_OK;
}

/* trace directory: layer_<l>.npy float32 [N, E] for every layer, optional src.npy [N] int32/int64 */
static carl_status check_trace(const carl_sim_config_t *c, const char *ctx, const char *dir) {
  int64_t N = -1;
  for (int l = 0; l < c->layers; l++) {
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/layer_%d.npy", dir, l) >= sizeof path)
      return carl_fail(CARL_ERR_INVALID, "path too long: %s", dir);
    carl_array_t a;
    carl_status st = carl_npy_read(path, &a);
    if (st != CARL_OK) return carl_errctx(st, "%s", ctx);
    st = carl_array_expect(&a, path, CARL_F32, 2);
    int64_t n = a.shape[0], e = a.ndim == 2 ? a.shape[1] : -1;
    carl_array_free(&a);
    if (st != CARL_OK) return carl_errctx(st, "%s", ctx);
    if (e != c->E)
      return carl_fail(CARL_ERR_SHAPE, "%s: %s has %lld experts per row, the config says experts = %d", ctx, path,
                       (long long)e, c->E);
    if (N >= 0 && n != N)
      return carl_fail(CARL_ERR_SHAPE, "%s: %s has %lld tokens, layer_0.npy has %lld", ctx, path, (long long)n, (long long)N);
    N = n;
  }
  if (N < c->tokens)
    return carl_fail(CARL_ERR_SHAPE, "%s: the trace has %lld tokens, fewer than one step (tokens = %lld)", ctx,
                     (long long)N, (long long)c->tokens);
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/src.npy", dir) >= sizeof path)
    return carl_fail(CARL_ERR_INVALID, "path too long: %s", dir);
  FILE *f = fopen(path, "rb");
  if (!f) return check_tokens(ctx, dir, N); /* no sources: tokens spread evenly */
  fclose(f);
  carl_array_t a;
  carl_status st = carl_npy_read(path, &a);
  if (st != CARL_OK) return carl_errctx(st, "%s", ctx);
  if (a.ndim != 1 || a.shape[0] != N || (a.dtype != CARL_I32 && a.dtype != CARL_I64)) {
    int64_t got = a.ndim >= 1 ? a.shape[0] : 0;
    int nd = a.ndim;
    const char *dt = carl_dtype_name(a.dtype);
    carl_array_free(&a);
    return carl_fail(CARL_ERR_SHAPE, "%s: %s must be int32 or int64 of shape [%lld], got %s with %d dims (first %lld)",
                     ctx, path, (long long)N, dt, nd, (long long)got);
  }
  int64_t mx = -1, mn = 0;
  for (int64_t t = 0; t < N; t++) {
    int64_t v = a.dtype == CARL_I32 ? ((int32_t *)a.data)[t] : ((int64_t *)a.data)[t];
    if (v > mx) mx = v;
    if (v < mn) mn = v;
  }
  carl_array_free(&a);
  if (mn < 0) return carl_fail(CARL_ERR_INVALID, "%s: %s has a negative device id", ctx, path);
  for (int i = 0; i < c->ntopo; i++)
    if (mx >= c->topos[i].devices)
      return carl_fail(CARL_ERR_SHAPE, "%s: %s names device %lld but topology '%s' has %d devices", ctx, path,
                       (long long)mx, c->topos[i].name, c->topos[i].devices);
  return check_tokens(ctx, dir, N);
}

/* "step_time": {"hidden": d, "ffn": f, "shared_ffn": f_s, "backward": bool, "overlap": "none" |
 * "pipelined", "chunks": n}; every topology must give its device rate ("flops"). */
static carl_status parse_step_time(const cJSON *root, carl_sim_config_t *c) {
  carl_steptime_opts_default(&c->steptime);
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "step_time");
  if (!o) return CARL_OK;
  if (!cJSON_IsObject(o)) return carl_fail(CARL_ERR_INVALID, "step_time: must be an object");
  static const char *const keys[] = {"hidden", "ffn", "shared_ffn", "backward", "overlap", "chunks", "comment", NULL};
  CARL_TRY(check_keys(o, "step_time.", keys));
  carl_steptime_opts_t *s = &c->steptime;
  if (!cJSON_GetObjectItemCaseSensitive(o, "hidden") || !cJSON_GetObjectItemCaseSensitive(o, "ffn"))
    return carl_fail(CARL_ERR_INVALID, "step_time: hidden and ffn (the model width and one expert's FFN width) are required");
  CARL_TRY(get_int(o, "step_time.", "hidden", 1, 1 << 20, &s->d));
  CARL_TRY(get_int(o, "step_time.", "ffn", 1, 1 << 22, &s->f));
  CARL_TRY(get_int(o, "step_time.", "shared_ffn", 0, 1 << 24, &s->f_shared));
  const cJSON *bw = cJSON_GetObjectItemCaseSensitive(o, "backward");
  if (bw) {
    if (!cJSON_IsBool(bw)) return carl_fail(CARL_ERR_INVALID, "step_time.backward: must be true or false");
    s->backward = cJSON_IsTrue(bw);
  }
  const cJSON *ov = cJSON_GetObjectItemCaseSensitive(o, "overlap");
  if (ov) {
    if (!cJSON_IsString(ov)) return carl_fail(CARL_ERR_INVALID, "step_time.overlap: must be \"none\" or \"pipelined\"");
    if (!strcmp(ov->valuestring, "none"))
      s->overlap = CARL_OVERLAP_NONE;
    else if (!strcmp(ov->valuestring, "pipelined"))
      s->overlap = CARL_OVERLAP_PIPELINE;
    else
      return carl_fail(CARL_ERR_INVALID, "step_time.overlap: '%s' is not \"none\" or \"pipelined\"", ov->valuestring);
  }
  CARL_TRY(get_i32(o, "step_time.", "chunks", 1, 4096, &s->chunks));
  for (int t = 0; t < c->ntopo; t++)
    if (!(c->topos[t].flops > 0))
      return carl_fail(CARL_ERR_INVALID,
                       "step_time: topologies[%d] ('%s') has no device rate: add \"flops\": {\"peak_TFLOPS\": .., "
                       "\"efficiency\": ..} to it (docs/topologies.md)",
                       t, c->topos[t].name);
  c->step_time = 1;
  return CARL_OK;
}

int64_t carl_sim_tokens(const carl_sim_config_t *cfg, int t) {
  return cfg->tokens_per_device > 0 ? cfg->tokens_per_device * cfg->topos[t].devices : cfg->tokens;
}

static carl_status parse_obj(const cJSON *root, const char *base_dir, carl_sim_config_t *c) {
  if (!cJSON_IsObject(root)) return carl_fail(CARL_ERR_PARSE, "config: the top level must be a JSON object");
  static const char *const top[] = {"name",        "steps",     "tokens",    "layers",     "d",
                                    "experts",     "lr",        "token_bytes", "expert_bytes", "plan",
                                    "place_ema",   "summary_from", "csv_every", "workload",   "routers",
                                    "topologies",  "scenarios", "seeds",     "comment",    "c2r_profile", "task_weight",
                                    "tokens_per_device", "step_time", NULL};
  CARL_TRY(check_keys(root, "", top));
  const cJSON *nm = cJSON_GetObjectItemCaseSensitive(root, "name");
  if (nm && !cJSON_IsString(nm)) return carl_fail(CARL_ERR_INVALID, "name: must be a string");
  const char *name = nm ? nm->valuestring : "study";
  /* the default output folder is results/<name>: a plain file name that cannot leave it */
  size_t nl = strlen(name);
  if (nl == 0 || nl > CARL_SIM_NAME_MAX || name[0] == '.' || strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != nl)
    return carl_fail(CARL_ERR_INVALID, "name: '%.80s' must be 1 to %d characters of A-Z a-z 0-9 . _ - not starting with '.' "
                     "(it names the folder results/<name>)", name, CARL_SIM_NAME_MAX);
  c->name = dupstr(name);
  CARL_TRY(get_int(root, "", "steps", 1, 1e9, &c->steps));
  CARL_TRY(get_int(root, "", "tokens", 1, 1 << 26, &c->tokens));
  CARL_TRY(get_int(root, "", "tokens_per_device", 1, 1 << 26, &c->tokens_per_device));
  if (c->tokens_per_device > 0 && cJSON_GetObjectItemCaseSensitive(root, "tokens"))
    return carl_fail(CARL_ERR_INVALID, "tokens_per_device: give either tokens (per step) or tokens_per_device, not both");
  CARL_TRY(get_i32(root, "", "layers", 1, 1024, &c->layers));
  CARL_TRY(get_i32(root, "", "d", 1, 65536, &c->d));
  CARL_TRY(get_i32(root, "", "experts", 1, 65536, &c->E));
  CARL_TRY(get_num(root, "", "lr", 0, 1e6, &c->lr));
  CARL_TRY(get_num(root, "", "task_weight", 1e-6, 1e6, &c->task_weight));
  CARL_TRY(get_num(root, "", "token_bytes", 0, 1e12, &c->token_bytes));
  CARL_TRY(get_num(root, "", "expert_bytes", 0, 1e15, &c->expert_bytes));
  CARL_TRY(get_num(root, "", "place_ema", 0, 1, &c->place_ema));
  CARL_TRY(get_int(root, "", "summary_from", 0, 1e9, &c->summary_from));
  CARL_TRY(get_i32(root, "", "csv_every", 1, 1e9, &c->csv_every));
  CARL_TRY(get_i32(root, "", "c2r_profile", 1, 1e9, &c->c2r_profile));
  if (c->summary_from >= c->steps)
    return carl_fail(CARL_ERR_INVALID, "summary_from: %lld must be below steps (%lld)", (long long)c->summary_from,
                     (long long)c->steps);
  const cJSON *pm = cJSON_GetObjectItemCaseSensitive(root, "plan");
  if (pm) {
    if (!cJSON_IsString(pm)) return carl_fail(CARL_ERR_INVALID, "plan: must be \"flat\" or \"hier\"");
    if (!strcmp(pm->valuestring, "flat"))
      c->plan_mode = CARL_PLAN_FLAT;
    else if (!strcmp(pm->valuestring, "hier"))
      c->plan_mode = CARL_PLAN_HIER;
    else
      return carl_fail(CARL_ERR_INVALID, "plan: '%s' is not \"flat\" or \"hier\"", pm->valuestring);
  }
  const cJSON *wk = cJSON_GetObjectItemCaseSensitive(root, "workload");
  if (wk) {
    if (!cJSON_IsObject(wk)) return carl_fail(CARL_ERR_INVALID, "workload: must be an object");
    static const char *const wkeys[] = {"clusters", "zipf", "noise", "teacher_scale", "seq_len", "seq_coherence",
                                        "home_bias", "hot", "period", "burst_len", "burst_frac", NULL};
    CARL_TRY(check_keys(wk, "workload.", wkeys));
    carl_workload_cfg_t *w = &c->work;
    CARL_TRY(get_i32(wk, "workload.", "clusters", 1, 1 << 20, &w->clusters));
    CARL_TRY(get_num(wk, "workload.", "zipf", 0, 10, &w->zipf));
    CARL_TRY(get_num(wk, "workload.", "noise", 0, 100, &w->noise));
    CARL_TRY(get_num(wk, "workload.", "teacher_scale", 0, 100, &w->teacher_scale));
    CARL_TRY(get_i32(wk, "workload.", "seq_len", 1, 1 << 24, &w->seq_len));
    CARL_TRY(get_num(wk, "workload.", "seq_coherence", 0, 1, &w->seq_coherence));
    CARL_TRY(get_num(wk, "workload.", "home_bias", 0, 1, &w->home_bias));
    CARL_TRY(get_num(wk, "workload.", "hot", -100, 100, &w->hot));
    CARL_TRY(get_i32(wk, "workload.", "period", 1, 1e9, &w->period));
    CARL_TRY(get_i32(wk, "workload.", "burst_len", 0, 1e9, &w->burst_len));
    CARL_TRY(get_num(wk, "workload.", "burst_frac", 0, 1, &w->burst_frac));
    if (w->burst_len > w->period)
      return carl_fail(CARL_ERR_INVALID, "workload.burst_len: %d must not exceed workload.period (%d)", w->burst_len, w->period);
  }
  /* lists */
  const char *lists[] = {"routers", "topologies", "scenarios", "seeds"};
  const cJSON *arr[4];
  for (int i = 0; i < 4; i++) {
    arr[i] = cJSON_GetObjectItemCaseSensitive(root, lists[i]);
    if (!cJSON_IsArray(arr[i]) || cJSON_GetArraySize(arr[i]) < 1)
      return carl_fail(CARL_ERR_INVALID, "%s: must be a non-empty array", lists[i]);
  }
  c->nrouter = cJSON_GetArraySize(arr[0]);
  c->ntopo = cJSON_GetArraySize(arr[1]);
  c->nscen = cJSON_GetArraySize(arr[2]);
  c->nseed = cJSON_GetArraySize(arr[3]);
  c->routers = calloc((size_t)c->nrouter, sizeof *c->routers);
  c->topos = calloc((size_t)c->ntopo, sizeof *c->topos);
  c->scens = calloc((size_t)c->nscen, sizeof *c->scens);
  c->seeds = calloc((size_t)c->nseed, sizeof *c->seeds);
  if (!c->routers || !c->topos || !c->scens || !c->seeds) return carl_fail(CARL_ERR_NOMEM, "config: out of memory");
  int i = 0;
  for (const cJSON *it = arr[0]->child; it; it = it->next, i++) CARL_TRY(parse_router(it, i, &c->routers[i]));
  for (int a = 0; a < c->nrouter; a++)
    for (int b = 0; b < a; b++)
      if (!strcmp(c->routers[a].label, c->routers[b].label))
        return carl_fail(CARL_ERR_INVALID, "routers[%d]: label '%s' is used twice (give each a distinct \"label\")", a,
                         c->routers[a].label);
  i = 0;
  for (const cJSON *it = arr[1]->child; it; it = it->next, i++) CARL_TRY(parse_topo(it, i, base_dir, &c->topos[i]));
  if (c->tokens_per_device > 0) {
    /* the per-step count is that of the largest topology for the checks that need one (traces) */
    c->tokens = 0;
    for (int t = 0; t < c->ntopo; t++) {
      int64_t T = carl_sim_tokens(c, t);
      if (T > (1 << 26))
        return carl_fail(CARL_ERR_INVALID, "tokens_per_device: %lld x %d devices of '%s' = %lld tokens per step, more than %d",
                         (long long)c->tokens_per_device, c->topos[t].devices, c->topos[t].name, (long long)T, 1 << 26);
      if (T > c->tokens) c->tokens = T;
    }
  }
  CARL_TRY(parse_step_time(root, c));
  i = 0;
  for (const cJSON *it = arr[3]->child; it; it = it->next, i++) {
    if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble != floor(it->valuedouble) || it->valuedouble > 9e15)
      return carl_fail(CARL_ERR_INVALID, "seeds[%d]: must be a non-negative integer", i);
    c->seeds[i] = (uint64_t)it->valuedouble;
  }
  i = 0;
  for (const cJSON *it = arr[2]->child; it; it = it->next, i++) {
    char ctx[64];
    snprintf(ctx, sizeof ctx, "scenarios[%d]", i);
    carl_sim_scen_t *s = &c->scens[i];
    if (cJSON_IsString(it)) {
      carl_status st = carl_scenario_parse(it->valuestring, &s->scenario);
      if (st != CARL_OK) return carl_errctx(st, "%s", ctx);
      s->label = dupstr(it->valuestring);
    } else if (cJSON_IsObject(it)) {
      static const char *const skeys[] = {"trace", "label", NULL};
      char c2[80];
      snprintf(c2, sizeof c2, "%s.", ctx);
      CARL_TRY(check_keys(it, c2, skeys));
      const cJSON *tr = cJSON_GetObjectItemCaseSensitive(it, "trace");
      if (!cJSON_IsString(tr)) return carl_fail(CARL_ERR_INVALID, "%s.trace: must be a directory path", ctx);
      char path[4096];
      const char *pre = (tr->valuestring[0] != '/' && base_dir && base_dir[0]) ? base_dir : NULL;
      if ((size_t)snprintf(path, sizeof path, "%s%s%s", pre ? pre : "", pre ? "/" : "", tr->valuestring) >= sizeof path)
        return carl_fail(CARL_ERR_INVALID, "%s: path too long", ctx);
      s->scenario = -1;
      s->trace_dir = dupstr(path);
      const cJSON *lb = cJSON_GetObjectItemCaseSensitive(it, "label");
      if (lb && !cJSON_IsString(lb)) return carl_fail(CARL_ERR_INVALID, "%s.label: must be a string", ctx);
      char base[256];
      snprintf(base, sizeof base, "%s", tr->valuestring);
      size_t bl = strlen(base);
      while (bl > 1 && base[bl - 1] == '/') base[--bl] = '\0';
      const char *b = strrchr(base, '/');
      s->label = dupstr(lb ? lb->valuestring : (b ? b + 1 : base));
      if (!s->label) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", ctx);
      CARL_TRY(check_label(ctx, s->label));
      CARL_TRY(check_trace(c, ctx, path));
      char tpath[4200];
      snprintf(tpath, sizeof tpath, "%s/tokens.npy", path);
      FILE *tf = fopen(tpath, "rb");
      s->has_tokens = tf != NULL;
      if (tf) fclose(tf);
      for (int r = 0; r < c->nrouter; r++)
        if (!s->has_tokens && !strcmp(c->routers[r].name, "hash"))
          return carl_fail(CARL_ERR_INVALID, "%s: routers[%d] (%s) routes by token id but the trace has no tokens.npy", ctx,
                           r, c->routers[r].label);
    } else {
      return carl_fail(CARL_ERR_INVALID, "%s: must be a scenario name or {\"trace\": \"dir\"}", ctx);
    }
  }
  for (int a = 0; a < c->ntopo; a++)
    for (int b = 0; b < a; b++)
      if (!strcmp(c->topos[a].name, c->topos[b].name))
        return carl_fail(CARL_ERR_INVALID, "topologies[%d]: name '%s' is used twice", a, c->topos[a].name);
  for (int a = 0; a < c->nscen; a++)
    for (int b = 0; b < a; b++)
      if (!strcmp(c->scens[a].label, c->scens[b].label))
        return carl_fail(CARL_ERR_INVALID, "scenarios[%d]: '%s' appears twice", a, c->scens[a].label);
  /* every topology must fit the experts (contiguous placement needs E >= 1 per device or replicas) */
  for (int t = 0; t < c->ntopo; t++)
    if (c->topos[t].devices > c->E)
      return carl_fail(CARL_ERR_INVALID, "topologies[%d]: '%s' has %d devices, more than experts = %d", t,
                       c->topos[t].name, c->topos[t].devices, c->E);
  for (int i = 0; i < c->nrouter; i++) {
    const int R = c->routers[i].replicas;
    if (R > 0 && R < c->E)
      return carl_fail(CARL_ERR_INVALID, "routers[%d].replicas: %d, fewer than experts = %d", i, R, c->E);
    for (int t = 0; R > 0 && t < c->ntopo; t++)
      if (R % c->topos[t].devices)
        return carl_fail(CARL_ERR_INVALID, "routers[%d].replicas: %d is not a multiple of the %d devices of '%s'", i, R,
                         c->topos[t].devices, c->topos[t].name);
  }
  c->work.E = c->E;
  c->work.d = c->d;
  c->work.layers = c->layers;
  c->work.steps = c->steps;
  return CARL_OK;
}

carl_status carl_sim_config_parse(const char *json, size_t len, const char *base_dir, carl_sim_config_t *cfg) {
  defaults(cfg);
  cJSON *root = NULL;
  CARL_TRY(carl_json_parse(json, len, "config", &root));
  carl_status st = parse_obj(root, base_dir, cfg);
  cJSON_Delete(root);
  if (st != CARL_OK) {
    char keep[1024];
    snprintf(keep, sizeof keep, "%s", carl_errmsg());
    carl_sim_config_free(cfg);
    carl_fail(st, "%s", keep);
  }
  return st;
}

carl_status carl_sim_config_load(const char *path, carl_sim_config_t *cfg) {
  char *txt = NULL;
  size_t len = 0;
  memset(cfg, 0, sizeof *cfg);
  carl_status st = carl_read_file(path, &txt, &len);
  if (st != CARL_OK) return carl_errctx(st, "%s", path);
  /* relative paths inside the config resolve against the current directory (the repository root
   * in the docs), so that the configs under configs/experiments can name configs/topologies/... */
  st = carl_sim_config_parse(txt, len, NULL, cfg);
  free(txt);
  if (st != CARL_OK) return carl_errctx(st, "%s", path);
  return CARL_OK;
}

/* The default study: carl and five baselines on 2 nodes x 8 GPUs, three scenarios, one seed
 * (18 runs of 200 steps x 2048 tokens: seconds on 2 cores), with the step time of a training
 * step whose experts are d 4096 x f 1408 SwiGLU FFNs (token_bytes 8192: bf16 copies). */
static const char *const default_json =
    "{\"name\":\"default\",\"steps\":200,\"tokens\":2048,\"layers\":1,\"d\":64,\"experts\":64,"
    "\"summary_from\":50,"
    "\"routers\":[{\"name\":\"carl\",\"opts\":{\"k\":2},\"refresh_every\":50},"
    "{\"label\":\"topk+aux\",\"name\":\"topk\",\"opts\":{\"k\":2,\"aux\":0.01}},"
    "{\"name\":\"lossfree\",\"opts\":{\"k\":2}},"
    "{\"name\":\"grouplimited\",\"opts\":{\"k\":2}},"
    "{\"name\":\"sinkhorn\",\"opts\":{\"k\":2}},"
    "{\"name\":\"fastermoe\",\"opts\":{\"k\":2}}],"
    "\"step_time\":{\"hidden\":4096,\"ffn\":1408},"
    "\"topologies\":[{\"name\":\"h800-2x8\",\"nodes\":2,\"devices_per_node\":8,"
    "\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3.4},\"inter\":{\"GBps\":50,\"latency_us\":9.6}},"
    "\"flops\":{\"device\":\"H800 SXM5\",\"peak_TFLOPS\":989.4,\"efficiency\":0.6}}],"
    "\"scenarios\":[\"zipf\",\"hot_device\",\"rotating\"],\"seeds\":[1]}";

carl_status carl_sim_config_default(carl_sim_config_t *cfg) {
  return carl_sim_config_parse(default_json, strlen(default_json), NULL, cfg);
}

/* ---- configs as opaque handles (bindings) ------------------------------------------------------ */
carl_status carl_sim_config_create(const char *path, const char *json, size_t len, const char *base_dir,
                                   carl_sim_config_t **out) {
  if (!out) return carl_fail(CARL_ERR_INVALID, "sim config: out is NULL");
  *out = NULL;
  if (path && json) return carl_fail(CARL_ERR_INVALID, "sim config: give a path or JSON text, not both");
  carl_sim_config_t *c = calloc(1, sizeof *c);
  if (!c) return carl_fail(CARL_ERR_NOMEM, "sim config: out of memory");
  carl_status st = path ? carl_sim_config_load(path, c)
                        : json ? carl_sim_config_parse(json, len, base_dir, c) : carl_sim_config_default(c);
  if (st != CARL_OK) {
    free(c); /* a failed load or parse has freed what it allocated */
    return st;
  }
  *out = c;
  return CARL_OK;
}

void carl_sim_config_destroy(carl_sim_config_t *cfg) {
  if (!cfg) return;
  carl_sim_config_free(cfg);
  free(cfg);
}

carl_status carl_sim_config_describe(const carl_sim_config_t *cfg, char **text, size_t *len) {
  if (!text) return carl_fail(CARL_ERR_INVALID, "sim config describe: text is NULL");
  *text = NULL;
  if (len) *len = 0;
  if (!cfg) return carl_fail(CARL_ERR_INVALID, "sim config describe: config is NULL");
  cJSON *o = cJSON_CreateObject();
  if (!o) return carl_fail(CARL_ERR_NOMEM, "sim config describe: out of memory");
  cJSON_AddStringToObject(o, "name", cfg->name ? cfg->name : "");
  cJSON_AddNumberToObject(o, "steps", (double)cfg->steps);
  cJSON_AddNumberToObject(o, "tokens", (double)cfg->tokens);
  cJSON_AddNumberToObject(o, "tokens_per_device", (double)cfg->tokens_per_device);
  cJSON_AddNumberToObject(o, "layers", cfg->layers);
  cJSON_AddNumberToObject(o, "d", cfg->d);
  cJSON_AddNumberToObject(o, "experts", cfg->E);
  cJSON_AddNumberToObject(o, "lr", cfg->lr);
  cJSON_AddNumberToObject(o, "task_weight", cfg->task_weight);
  cJSON_AddNumberToObject(o, "token_bytes", cfg->token_bytes);
  cJSON_AddNumberToObject(o, "expert_bytes", cfg->expert_bytes);
  cJSON_AddStringToObject(o, "plan", cfg->plan_mode == CARL_PLAN_HIER ? "hier" : "flat");
  cJSON_AddNumberToObject(o, "summary_from", (double)cfg->summary_from);
  cJSON_AddNumberToObject(o, "csv_every", cfg->csv_every);
  cJSON_AddBoolToObject(o, "step_time", cfg->step_time);
  cJSON *rs = cJSON_AddArrayToObject(o, "routers");
  for (int i = 0; rs && i < cfg->nrouter; i++) {
    const carl_sim_router_t *r = &cfg->routers[i];
    cJSON *x = cJSON_CreateObject();
    cJSON_AddItemToArray(rs, x);
    cJSON_AddStringToObject(x, "label", r->label);
    cJSON_AddStringToObject(x, "name", r->name);
    cJSON *op = cJSON_AddObjectToObject(x, "opts");
    for (int j = 0; op && j < r->nopt; j++) cJSON_AddNumberToObject(op, r->keys[j], r->vals[j]);
    cJSON_AddNumberToObject(x, "refresh_every", r->refresh_every);
    if (r->place_algo >= 0) cJSON_AddStringToObject(x, "place", carl_place_algo_name((carl_place_algo)r->place_algo));
    if (r->replicas > 0) cJSON_AddNumberToObject(x, "replicas", r->replicas);
  }
  cJSON *ts = cJSON_AddArrayToObject(o, "topologies");
  for (int i = 0; ts && i < cfg->ntopo; i++) {
    const carl_topo_t *t = &cfg->topos[i];
    cJSON *x = cJSON_CreateObject();
    cJSON_AddItemToArray(ts, x);
    cJSON_AddStringToObject(x, "name", t->name);
    cJSON_AddNumberToObject(x, "nodes", t->nodes);
    cJSON_AddNumberToObject(x, "devices_per_node", t->devices_per_node);
    cJSON_AddNumberToObject(x, "tokens", (double)carl_sim_tokens(cfg, i));
  }
  cJSON *ss = cJSON_AddArrayToObject(o, "scenarios");
  for (int i = 0; ss && i < cfg->nscen; i++) {
    const carl_sim_scen_t *s = &cfg->scens[i];
    cJSON *x = cJSON_CreateObject();
    cJSON_AddItemToArray(ss, x);
    cJSON_AddStringToObject(x, "label", s->label);
    if (s->scenario >= 0)
      cJSON_AddStringToObject(x, "scenario", carl_scenario_name(s->scenario));
    else
      cJSON_AddStringToObject(x, "trace", s->trace_dir ? s->trace_dir : "");
  }
  cJSON *sd = cJSON_AddArrayToObject(o, "seeds");
  for (int i = 0; sd && i < cfg->nseed; i++) cJSON_AddItemToArray(sd, cJSON_CreateNumber((double)cfg->seeds[i]));
  cJSON *cols = cJSON_AddArrayToObject(o, "columns");
  for (int c = 0; cols && c < CARL_SIM_NCOL; c++) cJSON_AddItemToArray(cols, cJSON_CreateString(carl_sim_col_names[c]));
  char *s = cJSON_Print(o);
  cJSON_Delete(o);
  if (!s) return carl_fail(CARL_ERR_NOMEM, "sim config describe: out of memory");
  *text = s;
  if (len) *len = strlen(s);
  return CARL_OK;
}
