/* Training loop, config files, checkpoints, resume and sampling (carl/train.h). */
#include "carl/train.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "carl/array.h"
#include "carl/cuda.h"
#include "carl/data.h"
#include "carl/exec.h"
#include "carl/fs.h"
#include "core/json_internal.h"
#include "carl/safetensors.h"

/* ============================== config ============================================================ */

void carl_train_config_default(carl_train_config_t *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->name, sizeof c->name, "default");
  carl_model_config_default(&c->model);
  c->batch = 8;
  c->seq_len = c->model.max_seq;
  c->steps = 100;
  c->lr = 3e-3;
  c->lr_min = 3e-4;
  c->warmup = 10;
  c->weight_decay = 0.1;
  c->grad_clip = 1.0;
  c->beta1 = 0.9;
  c->beta2 = 0.95;
  c->adam_eps = 1e-8;
  c->eval_every = 50;
  c->eval_batches = 4;
  c->ckpt_every = 100;
  c->log_every = 10;
  c->data_seed = 1;
  snprintf(c->train_data, sizeof c->train_data, "data/kjv.train.txt");
  snprintf(c->val_data, sizeof c->val_data, "data/kjv.val.txt");
  c->topology[0] = '\0';
  c->refresh_every = 0;
  snprintf(c->place, sizeof c->place, "traffic");
  c->replicas = 0;
}

static carl_status carl__copy_str(char *dst, size_t cap, const char *src, const char *field) {
  if (strlen(src) >= cap) return carl_fail(CARL_ERR_INVALID, "%s is too long (at most %zu characters)", field, cap - 1);
  memcpy(dst, src, strlen(src) + 1);
  return CARL_OK;
}

/* Check router name and option names against the registry. */
static carl_status carl__check_router(const carl_model_config_t *m, const char *ctx) {
  if (!carl_router_find(m->router)) {
    char names[512] = "";
    for (const char *const *n = carl_router_names(); *n; n++)
      snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", names[0] ? ", " : "", *n);
    return carl_fail(CARL_ERR_NOT_FOUND, "%srouter: unknown router \"%s\" (known: %s)", ctx, m->router, names);
  }
  const carl_opt_t *opts[CARL_ROUTER_MAX_OPTS];
  int no = carl_router_options(m->router, opts, CARL_ROUTER_MAX_OPTS);
  for (int i = 0; i < m->n_router_opts; i++) {
    int ok = 0;
    for (int j = 0; j < no && j < CARL_ROUTER_MAX_OPTS; j++) ok |= !strcmp(opts[j]->name, m->router_keys[i]);
    if (!ok) {
      char names[1024] = "";
      for (int j = 0; j < no && j < CARL_ROUTER_MAX_OPTS; j++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", j ? ", " : "", opts[j]->name);
      return carl_fail(CARL_ERR_NOT_FOUND, "%srouter_opts: router \"%s\" has no option \"%s\" (options: %s)", ctx,
                       m->router, m->router_keys[i], names);
    }
  }
  /* create once to let the router validate the values */
  const char *keys[CARL_MODEL_MAX_ROUTER_OPTS];
  for (int i = 0; i < m->n_router_opts; i++) keys[i] = m->router_keys[i];
  carl_router_t *r = NULL;
  carl_status st = carl_router_create(m->router, m->n_router_opts, keys, m->router_vals, &r);
  carl_router_free(r);
  if (st != CARL_OK) return carl_errctx(st, "%srouter_opts", ctx);
  return CARL_OK;
}

static carl_status carl__parse_model(const cJSON *o, carl_model_config_t *m) {
  static const char *const keys[] = {"vocab", "max_seq", "d_model", "n_layers", "n_heads", "d_ff", "n_experts",
                                     "top_k", "d_shared", "slots", "init_std", "norm_eps", "seed", "router", "router_opts"};
  const char *ctx = "model";
  CARL_TRY(carl_json_expect_object(o, ctx));
  CARL_TRY(carl_json_check_keys(o, ctx, keys, (int)(sizeof keys / sizeof keys[0])));
  CARL_TRY(carl_json_opt_int(o, ctx, "vocab", 2, CARL_MODEL_MAX_VOCAB, m->vocab, &m->vocab));
  CARL_TRY(carl_json_opt_int(o, ctx, "max_seq", 1, CARL_MODEL_MAX_SEQ, m->max_seq, &m->max_seq));
  CARL_TRY(carl_json_opt_int(o, ctx, "d_model", 1, CARL_MODEL_MAX_D, m->d_model, &m->d_model));
  CARL_TRY(carl_json_opt_int(o, ctx, "n_layers", 1, CARL_MODEL_MAX_LAYERS, m->n_layers, &m->n_layers));
  CARL_TRY(carl_json_opt_int(o, ctx, "n_heads", 1, 1024, m->n_heads, &m->n_heads));
  CARL_TRY(carl_json_opt_int(o, ctx, "d_ff", 1, CARL_MODEL_MAX_FF, m->d_ff, &m->d_ff));
  CARL_TRY(carl_json_opt_int(o, ctx, "n_experts", 1, CARL_MODEL_MAX_EXPERTS, m->n_experts, &m->n_experts));
  CARL_TRY(carl_json_opt_int(o, ctx, "top_k", 1, CARL_MODEL_MAX_EXPERTS, m->top_k, &m->top_k));
  CARL_TRY(carl_json_opt_int(o, ctx, "d_shared", 0, CARL_MODEL_MAX_FF, m->d_shared, &m->d_shared));
  CARL_TRY(carl_json_opt_int(o, ctx, "slots", 0, CARL_MODEL_MAX_SLOTS, m->n_slots, &m->n_slots));
  double v;
  CARL_TRY(carl_json_opt_pos(o, ctx, "init_std", m->init_std, &v));
  m->init_std = (float)v;
  CARL_TRY(carl_json_opt_pos(o, ctx, "norm_eps", m->norm_eps, &v));
  m->norm_eps = (float)v;
  int64_t seed;
  CARL_TRY(carl_json_opt_i64(o, ctx, "seed", 0, (int64_t)1 << 53, (int64_t)m->seed, &seed));
  m->seed = (uint64_t)seed;
  const char *router;
  CARL_TRY(carl_json_opt_str(o, ctx, "router", m->router, &router));
  if (strcmp(router, m->router)) {
    CARL_TRY(carl__copy_str(m->router, sizeof m->router, router, "model.router"));
    m->n_router_opts = 0;
  }
  const cJSON *ro = NULL;
  CARL_TRY(carl_json_opt_obj(o, ctx, "router_opts", &ro));
  if (ro) {
    for (const cJSON *it = ro->child; it; it = it->next) {
      char field[160];
      carl_json_field(field, sizeof field, "model.router_opts", it->string);
      if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble))
        return carl_fail(CARL_ERR_INVALID, "%s must be a finite number, got %s", field, carl_json_type_name(it));
      if (strlen(it->string) >= sizeof m->router_keys[0])
        return carl_fail(CARL_ERR_INVALID, "%s: option name too long", field);
      CARL_TRY(carl_model_config_set_router_opt(m, it->string, it->valuedouble));
    }
  }
  /* a router option k sets the model's top_k (the model requires them equal) */
  for (int i = 0; i < m->n_router_opts; i++)
    if (!strcmp(m->router_keys[i], "k")) {
      double k = m->router_vals[i];
      if (!(k >= 1 && k <= 4096) || k != floor(k))
        return carl_fail(CARL_ERR_INVALID, "model.router_opts.k must be a whole number >= 1, got %g", k);
      m->top_k = (int)k;
    }
  return CARL_OK;
}

static carl_status carl__parse_train(const cJSON *o, carl_train_config_t *c) {
  static const char *const keys[] = {"batch", "seq_len", "steps", "lr", "lr_min", "warmup", "weight_decay",
                                     "grad_clip", "beta1", "beta2", "adam_eps", "eval_every", "eval_batches",
                                     "ckpt_every", "log_every", "data_seed", "train_data", "val_data", "topology",
                                     "refresh_every", "place", "replicas", "dispatch"};
  const char *ctx = "train";
  CARL_TRY(carl_json_expect_object(o, ctx));
  CARL_TRY(carl_json_check_keys(o, ctx, keys, (int)(sizeof keys / sizeof keys[0])));
  CARL_TRY(carl_json_opt_int(o, ctx, "batch", 1, 1 << 16, c->batch, &c->batch));
  CARL_TRY(carl_json_opt_int(o, ctx, "seq_len", 1, CARL_MODEL_MAX_SEQ, c->seq_len, &c->seq_len));
  CARL_TRY(carl_json_opt_i64(o, ctx, "steps", 1, (int64_t)1 << 40, c->steps, &c->steps));
  CARL_TRY(carl_json_opt_pos(o, ctx, "lr", c->lr, &c->lr));
  CARL_TRY(carl_json_opt_num(o, ctx, "lr_min", 0, INFINITY, c->lr_min, &c->lr_min));
  CARL_TRY(carl_json_opt_i64(o, ctx, "warmup", 0, (int64_t)1 << 40, c->warmup, &c->warmup));
  CARL_TRY(carl_json_opt_num(o, ctx, "weight_decay", 0, INFINITY, c->weight_decay, &c->weight_decay));
  CARL_TRY(carl_json_opt_num(o, ctx, "grad_clip", 0, INFINITY, c->grad_clip, &c->grad_clip));
  CARL_TRY(carl_json_opt_num(o, ctx, "beta1", 0, 0.999999, c->beta1, &c->beta1));
  CARL_TRY(carl_json_opt_num(o, ctx, "beta2", 0, 0.999999, c->beta2, &c->beta2));
  CARL_TRY(carl_json_opt_pos(o, ctx, "adam_eps", c->adam_eps, &c->adam_eps));
  CARL_TRY(carl_json_opt_i64(o, ctx, "eval_every", 0, (int64_t)1 << 40, c->eval_every, &c->eval_every));
  CARL_TRY(carl_json_opt_int(o, ctx, "eval_batches", 1, 1 << 20, c->eval_batches, &c->eval_batches));
  CARL_TRY(carl_json_opt_i64(o, ctx, "ckpt_every", 0, (int64_t)1 << 40, c->ckpt_every, &c->ckpt_every));
  CARL_TRY(carl_json_opt_i64(o, ctx, "log_every", 1, (int64_t)1 << 40, c->log_every, &c->log_every));
  int64_t seed;
  CARL_TRY(carl_json_opt_i64(o, ctx, "data_seed", 0, (int64_t)1 << 53, (int64_t)c->data_seed, &seed));
  c->data_seed = (uint64_t)seed;
  const char *s;
  CARL_TRY(carl_json_opt_str(o, ctx, "train_data", c->train_data, &s));
  CARL_TRY(carl__copy_str(c->train_data, sizeof c->train_data, s, "train.train_data"));
  CARL_TRY(carl_json_opt_str(o, ctx, "val_data", c->val_data, &s));
  CARL_TRY(carl__copy_str(c->val_data, sizeof c->val_data, s, "train.val_data"));
  CARL_TRY(carl_json_opt_str(o, ctx, "topology", c->topology, &s));
  CARL_TRY(carl__copy_str(c->topology, sizeof c->topology, s, "train.topology"));
  CARL_TRY(carl_json_opt_i64(o, ctx, "refresh_every", 0, (int64_t)1 << 40, c->refresh_every, &c->refresh_every));
  CARL_TRY(carl_json_opt_str(o, ctx, "place", c->place, &s));
  CARL_TRY(carl__copy_str(c->place, sizeof c->place, s, "train.place"));
  carl_place_algo algo;
  carl_status st = carl_place_algo_parse(c->place, &algo);
  if (st != CARL_OK) return carl_errctx(st, "train.place");
  CARL_TRY(carl_json_opt_int(o, ctx, "replicas", 0, CARL_MODEL_MAX_SLOTS, c->replicas, &c->replicas));
  CARL_TRY(carl_json_opt_str(o, ctx, "dispatch", c->dispatch_hier ? "hier" : "flat", &s));
  if (strcmp(s, "flat") && strcmp(s, "hier"))
    return carl_fail(CARL_ERR_INVALID, "train.dispatch: '%s' is not flat or hier", s);
  c->dispatch_hier = !strcmp(s, "hier");
  return CARL_OK;
}

static carl_status carl__check_config(const carl_train_config_t *c) {
  carl_status st = carl_model_config_check(&c->model);
  if (st != CARL_OK) return carl_errctx(st, "model");
  if (c->seq_len > c->model.max_seq)
    return carl_fail(CARL_ERR_INVALID, "train.seq_len %d exceeds model.max_seq %d", c->seq_len, c->model.max_seq);
  if (c->lr_min > c->lr) return carl_fail(CARL_ERR_INVALID, "train.lr_min %g exceeds train.lr %g", c->lr_min, c->lr);
  return carl__check_router(&c->model, "model.");
}

carl_status carl_train_config_parse(const char *json, size_t len, const char *what, carl_train_config_t *c) {
  carl_train_config_t tmp;
  carl_train_config_default(&tmp);
  cJSON *doc = NULL;
  CARL_TRY(carl_json_parse(json, len, what, &doc));
  static const char *const keys[] = {"name", "model", "train"};
  carl_status st = carl_json_expect_object(doc, "");
  if (!st) st = carl_json_check_keys(doc, "", keys, 3);
  const char *name = NULL;
  if (!st) st = carl_json_opt_str(doc, "", "name", tmp.name, &name);
  if (!st) st = carl__copy_str(tmp.name, sizeof tmp.name, name, "name");
  const cJSON *mo = NULL, *tr = NULL;
  if (!st) st = carl_json_get_obj(doc, "", "model", &mo);
  if (!st) st = carl__parse_model(mo, &tmp.model);
  if (!st) {
    tmp.seq_len = tmp.model.max_seq;
    st = carl_json_opt_obj(doc, "", "train", &tr);
  }
  if (!st && tr) st = carl__parse_train(tr, &tmp);
  if (!st) st = carl__check_config(&tmp);
  carl_json_free(doc);
  if (st != CARL_OK) return what ? carl_errctx(st, "%s", what) : st;
  *c = tmp;
  return CARL_OK;
}

carl_status carl_train_config_load(const char *path, carl_train_config_t *c) {
  char *text;
  size_t len;
  carl_status st = carl_read_file(path, &text, &len);
  if (st != CARL_OK) return st;
  st = carl_train_config_parse(text, len, path, c);
  free(text);
  return st;
}

static cJSON *carl__config_json(const carl_train_config_t *c) {
  cJSON *root = cJSON_CreateObject(), *m = cJSON_AddObjectToObject(root, "model"), *t;
  cJSON_AddStringToObject(root, "name", c->name);
  const carl_model_config_t *mc = &c->model;
  cJSON_AddNumberToObject(m, "vocab", mc->vocab);
  cJSON_AddNumberToObject(m, "max_seq", mc->max_seq);
  cJSON_AddNumberToObject(m, "d_model", mc->d_model);
  cJSON_AddNumberToObject(m, "n_layers", mc->n_layers);
  cJSON_AddNumberToObject(m, "n_heads", mc->n_heads);
  cJSON_AddNumberToObject(m, "d_ff", mc->d_ff);
  cJSON_AddNumberToObject(m, "n_experts", mc->n_experts);
  cJSON_AddNumberToObject(m, "top_k", mc->top_k);
  cJSON_AddNumberToObject(m, "d_shared", mc->d_shared);
  cJSON_AddNumberToObject(m, "slots", mc->n_slots);
  cJSON_AddNumberToObject(m, "init_std", mc->init_std);
  cJSON_AddNumberToObject(m, "norm_eps", mc->norm_eps);
  cJSON_AddNumberToObject(m, "seed", (double)mc->seed);
  cJSON_AddStringToObject(m, "router", mc->router);
  cJSON *ro = cJSON_AddObjectToObject(m, "router_opts");
  for (int i = 0; i < mc->n_router_opts; i++) cJSON_AddNumberToObject(ro, mc->router_keys[i], mc->router_vals[i]);
  t = cJSON_AddObjectToObject(root, "train");
  cJSON_AddNumberToObject(t, "batch", c->batch);
  cJSON_AddNumberToObject(t, "seq_len", c->seq_len);
  cJSON_AddNumberToObject(t, "steps", (double)c->steps);
  cJSON_AddNumberToObject(t, "lr", c->lr);
  cJSON_AddNumberToObject(t, "lr_min", c->lr_min);
  cJSON_AddNumberToObject(t, "warmup", (double)c->warmup);
  cJSON_AddNumberToObject(t, "weight_decay", c->weight_decay);
  cJSON_AddNumberToObject(t, "grad_clip", c->grad_clip);
  cJSON_AddNumberToObject(t, "beta1", c->beta1);
  cJSON_AddNumberToObject(t, "beta2", c->beta2);
  cJSON_AddNumberToObject(t, "adam_eps", c->adam_eps);
  cJSON_AddNumberToObject(t, "eval_every", (double)c->eval_every);
  cJSON_AddNumberToObject(t, "eval_batches", c->eval_batches);
  cJSON_AddNumberToObject(t, "ckpt_every", (double)c->ckpt_every);
  cJSON_AddNumberToObject(t, "log_every", (double)c->log_every);
  cJSON_AddNumberToObject(t, "data_seed", (double)c->data_seed);
  cJSON_AddStringToObject(t, "train_data", c->train_data);
  cJSON_AddStringToObject(t, "val_data", c->val_data);
  cJSON_AddStringToObject(t, "topology", c->topology);
  cJSON_AddNumberToObject(t, "refresh_every", (double)c->refresh_every);
  cJSON_AddStringToObject(t, "place", c->place);
  cJSON_AddNumberToObject(t, "replicas", c->replicas);
  if (c->dispatch_hier) cJSON_AddStringToObject(t, "dispatch", "hier"); /* flat: the default, not written */
  return root;
}

char *carl_train_config_to_json(const carl_train_config_t *c) {
  cJSON *root = carl__config_json(c);
  char *s = cJSON_Print(root);
  cJSON_Delete(root);
  return s;
}

carl_status carl_train_config_set_router(carl_train_config_t *c, const char *name) {
  if (strcmp(c->model.router, name)) {
    CARL_TRY(carl__copy_str(c->model.router, sizeof c->model.router, name, "router"));
    c->model.n_router_opts = 0;
  }
  return CARL_OK;
}

int carl_train_config_model_diff(const carl_train_config_t *a, const carl_train_config_t *b, char *why, size_t cap) {
  const carl_model_config_t *x = &a->model, *y = &b->model;
#define CARL__DIFF_INT(f)                                                                                   \
  if (x->f != y->f) {                                                                                        \
    snprintf(why, cap, "model.%s is %lld in one and %lld in the other", #f, (long long)x->f, (long long)y->f); \
    return 1;                                                                                                \
  }
  CARL__DIFF_INT(vocab)
  CARL__DIFF_INT(max_seq)
  CARL__DIFF_INT(d_model)
  CARL__DIFF_INT(n_layers)
  CARL__DIFF_INT(n_heads)
  CARL__DIFF_INT(d_ff)
  CARL__DIFF_INT(n_experts)
  CARL__DIFF_INT(top_k)
  CARL__DIFF_INT(d_shared)
  CARL__DIFF_INT(n_slots)
  CARL__DIFF_INT(seed)
#undef CARL__DIFF_INT
  if (x->init_std != y->init_std || x->norm_eps != y->norm_eps) {
    snprintf(why, cap, "model.init_std or model.norm_eps differ (%g/%g vs %g/%g)", x->init_std, x->norm_eps,
             y->init_std, y->norm_eps);
    return 1;
  }
  if (strcmp(x->router, y->router)) {
    snprintf(why, cap, "model.router is \"%s\" in one and \"%s\" in the other", x->router, y->router);
    return 1;
  }
  for (int pass = 0; pass < 2; pass++) {
    const carl_model_config_t *p = pass ? y : x, *q = pass ? x : y;
    for (int i = 0; i < p->n_router_opts; i++) {
      int found = 0;
      for (int j = 0; j < q->n_router_opts; j++)
        if (!strcmp(p->router_keys[i], q->router_keys[j])) {
          found = 1;
          if (p->router_vals[i] != q->router_vals[j]) {
            snprintf(why, cap, "model.router_opts.%s is %g in one and %g in the other", p->router_keys[i],
                     p->router_vals[i], q->router_vals[j]);
            return 1;
          }
        }
      if (!found) {
        snprintf(why, cap, "model.router_opts.%s is set in one and not in the other", p->router_keys[i]);
        return 1;
      }
    }
  }
  return 0;
}

/* ============================== files and directories ============================================= */

/* Remove a checkpoint directory (or anything else) and what it holds. Missing is fine. */
static void carl__rm_dir(const char *path) { (void)carl_fs_remove_tree(path); }

static int carl__exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

/* ============================== checkpoints ======================================================= */

typedef struct {
  double inter_bytes_total;
  double val_ce, val_bpb, loss;
  char run_id[32]; /* of the run that writes the checkpoints: only its own are pruned */
} carl__run_state_t;

/* f: the model in the one-process layout (carl_model_full) */
static carl_status carl__write_tensors(const char *path, const carl_model_full_t *f, const float *base, const char *prefix,
                                       const char *const *meta, const int64_t *adam_t) {
  int n = f->ntensors;
  carl_st_tensor_t *t = calloc((size_t)n + 1, sizeof *t);
  if (!t) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", path);
  for (int i = 0; i < n; i++) {
    const carl_tensor_info_t *ti = &f->tensors[i];
    snprintf(t[i].name, sizeof t[i].name, "%s%s", prefix, ti->name);
    t[i].dtype = CARL_F32;
    t[i].ndim = ti->ndim;
    for (int d = 0; d < ti->ndim; d++) t[i].shape[d] = ti->shape[d];
    t[i].data = base + ti->offset;
  }
  int nt = n;
  if (adam_t) {
    snprintf(t[nt].name, sizeof t[nt].name, "adam_t");
    t[nt].dtype = CARL_I64;
    t[nt].ndim = 1;
    t[nt].shape[0] = 1;
    t[nt].data = adam_t;
    nt++;
  }
  carl_status st = carl_st_write(path, t, nt, meta);
  free(t);
  return st;
}

/* Write both moment sets into one file: m.<name> then v.<name>, then adam_t. */
static carl_status carl__write_optimizer(const char *path, carl_model_t *m, const carl_model_full_t *f) {
  int n = f->ntensors;
  carl_st_tensor_t *t = calloc(2 * (size_t)n + 1, sizeof *t);
  if (!t) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", path);
  const float *mm = f->adam_m, *vv = f->adam_v;
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < n; i++) {
      const carl_tensor_info_t *ti = &f->tensors[i];
      carl_st_tensor_t *x = &t[pass * n + i];
      snprintf(x->name, sizeof x->name, "%s%s", pass ? "v." : "m.", ti->name);
      x->dtype = CARL_F32;
      x->ndim = ti->ndim;
      for (int d = 0; d < ti->ndim; d++) x->shape[d] = ti->shape[d];
      x->data = (pass ? vv : mm) + ti->offset;
    }
  carl_st_tensor_t *at = &t[2 * n];
  snprintf(at->name, sizeof at->name, "adam_t");
  at->dtype = CARL_I64;
  at->ndim = 1;
  at->shape[0] = 1;
  at->data = carl_model_adam_t(m);
  carl_status st = carl_st_write(path, t, 2 * n + 1, NULL);
  free(t);
  return st;
}

static int carl__router_has_state(carl_model_t *m) {
  carl_router_t *r = carl_model_router(m, 0);
  return carl_router_has_state(r);
}

/* Checkpoint directories are ckpt_<8-digit step>; returns step or -1 for other names. */
static int64_t carl__ckpt_step(const char *name) {
  if (strncmp(name, "ckpt_", 5) != 0) return -1;
  const char *p = name + 5;
  if (!*p) return -1;
  int64_t v = 0;
  for (; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    v = v * 10 + (*p - '0');
  }
  return v;
}

/* A checkpoint directory is complete when it has its state.json: it only gets its name once all of
 * its files are written. */
static int carl__ckpt_complete(const char *dir) {
  char f[CARL_PATH_MAX + 128];
  snprintf(f, sizeof f, "%s/state.json", dir);
  return carl__exists(f);
}

/* The run id in a checkpoint's state.json ("" when unreadable or from before run ids). */
static void carl__ckpt_run_id(const char *dir, char *id, size_t cap) {
  char f[CARL_PATH_MAX + 128];
  id[0] = '\0';
  snprintf(f, sizeof f, "%s/state.json", dir);
  cJSON *doc;
  if (carl_json_load(f, &doc) != CARL_OK) return;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, "run_id");
  if (cJSON_IsString(v)) snprintf(id, cap, "%s", v->valuestring);
  carl_json_free(doc);
}

/* Steps of the checkpoint directories ckpt_<step> in out_dir, newest first; complete ones only
 * when `complete`. Returns the count (at most cap: of the first cap found, so cap must be large
 * enough when the order matters). */
static int carl__ckpt_list(const char *out_dir, int complete, int64_t *steps, int cap) {
  DIR *d = opendir(out_dir);
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  char path[CARL_PATH_MAX + 64];
  while ((e = readdir(d)) && n < cap) {
    int64_t s = carl__ckpt_step(e->d_name);
    if (s < 0) continue;
    snprintf(path, sizeof path, "%s/%s", out_dir, e->d_name);
    if (complete && !carl__ckpt_complete(path)) continue;
    steps[n++] = s;
  }
  closedir(d);
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && steps[j] > steps[j - 1]; j--) {
      int64_t t = steps[j];
      steps[j] = steps[j - 1];
      steps[j - 1] = t;
    }
  return n;
}

/* Keep the `keep` newest checkpoints of run `run_id` (and keep_name); checkpoints of other runs,
 * and incomplete ones, are never removed. */
static void carl__prune(const char *out_dir, const char *run_id, const char *keep_name, int keep) {
  int64_t steps[4096];
  int n = carl__ckpt_list(out_dir, 1, steps, 4096), mine = 0;
  char id[64], path[CARL_PATH_MAX + 64];
  for (int i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/ckpt_%08" PRId64, out_dir, steps[i]);
    carl__ckpt_run_id(path, id, sizeof id);
    if (!run_id[0] || strcmp(id, run_id)) continue;
    if (mine++ < keep || !strcmp(path + strlen(out_dir) + 1, keep_name)) continue;
    carl__rm_dir(path);
  }
}

/* A new run id: 16 hex digits from the clock and the process id. */
static void carl__new_run_id(char *id, size_t cap) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t z = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + ((uint64_t)getpid() << 48);
  /* splitmix64 finaliser */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  snprintf(id, cap, "%016llx", (unsigned long long)z);
}

#define CARL__CKPT_MAX_FILES 1024
#define CARL__CKPT_NAME_MAX 64

static int carl__cmp_name(const void *a, const void *b) { return strcmp((const char *)a, (const char *)b); }

/* The files of a checkpoint directory other than state.json, and those of its subdirectories as
 * "sub/name", sorted; at most CARL__CKPT_MAX_FILES. */
static carl_status carl__ckpt_files(const char *dir, char (*names)[CARL__CKPT_NAME_MAX], int *count) {
  *count = 0;
  char sub[CARL_PATH_MAX + 160];
  for (int level = 0; level < 2; level++) {
    int n0 = *count;
    for (int k = level ? 0 : -1; k < (level ? n0 : 0); k++) {
      /* level 0: dir itself; level 1: each entry of level 0 that is a directory */
      const char *prefix = k < 0 ? "" : names[k];
      snprintf(sub, sizeof sub, "%s%s%s", dir, k < 0 ? "" : "/", prefix);
      struct stat sb;
      if (k >= 0 && (stat(sub, &sb) != 0 || !S_ISDIR(sb.st_mode))) continue;
      DIR *d = opendir(sub);
      if (!d) return carl_fail(CARL_ERR_IO, "%s: cannot read: %s", sub, strerror(errno));
      struct dirent *e;
      while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || (k < 0 && !strcmp(e->d_name, "state.json"))) continue;
        if (*count == CARL__CKPT_MAX_FILES ||
            snprintf(names[*count], CARL__CKPT_NAME_MAX, "%s%s%s", prefix, k < 0 ? "" : "/", e->d_name) >=
                CARL__CKPT_NAME_MAX) {
          closedir(d);
          return carl_fail(CARL_ERR_INVALID, "%s: more than %d files or a name too long", dir, CARL__CKPT_MAX_FILES);
        }
        (*count)++;
      }
      closedir(d);
    }
  }
  /* drop the directories themselves */
  int n = 0;
  for (int i = 0; i < *count; i++) {
    struct stat sb;
    snprintf(sub, sizeof sub, "%s/%s", dir, names[i]);
    if (stat(sub, &sb) == 0 && S_ISREG(sb.st_mode)) memmove(names[n++], names[i], CARL__CKPT_NAME_MAX);
  }
  *count = n;
  qsort(names, (size_t)n, CARL__CKPT_NAME_MAX, carl__cmp_name);
  return CARL_OK;
}

/* Errors of a checkpoint's files name the checkpoint (ckpt_<step>/model.safetensors), not the
 * directory it is being written in (ckpt_<step>.tmp). */
static carl_status carl__ckpt_error(carl_status st, const char *tmp, const char *dir, int64_t step) {
  carl_fs_errmsg_replace(st, tmp, dir);
  return carl_errctx(st, "checkpoint at step %" PRId64, step);
}

static carl_status carl__ckpt_save(const char *out_dir, const carl_train_config_t *cfg, carl_model_t *m,
                                   const carl_model_full_t *full, int64_t step, const carl__run_state_t *rs, char *saved,
                                   size_t saved_cap) {
  char name[64], dir[CARL_PATH_MAX + 64], tmp[CARL_PATH_MAX + 80], f[CARL_PATH_MAX + 160];
  snprintf(name, sizeof name, "ckpt_%08" PRId64, step);
  snprintf(dir, sizeof dir, "%s/%s", out_dir, name);
  snprintf(tmp, sizeof tmp, "%s.tmp", dir);
  carl__rm_dir(tmp);
  carl_status st = carl_fs_mkdir_p(tmp);
  if (st != CARL_OK) return carl__ckpt_error(st, tmp, dir, step);
  cJSON *cj = carl__config_json(cfg);
  char *cfg_text = cJSON_PrintUnformatted(cj);
  char step_text[32];
  snprintf(step_text, sizeof step_text, "%" PRId64, step);
  const char *meta[] = {"format", "pt", "producer", "carl-moe", "step", step_text, "config", cfg_text, NULL};
  snprintf(f, sizeof f, "%s/model.safetensors", tmp);
  st = carl__write_tensors(f, full, full->params, "", meta, NULL);
  if (!st) {
    snprintf(f, sizeof f, "%s/optimizer.safetensors", tmp);
    st = carl__write_optimizer(f, m, full);
  }
  int has_router = carl__router_has_state(m);
  for (int l = 0; !st && has_router && l < cfg->model.n_layers; l++) {
    snprintf(f, sizeof f, "%s/router_%d.state", tmp, l);
    st = carl_router_save(carl_model_router(m, l), f);
  }
  /* each layer's placement (the layout of its expert tensors) and the refresh statistics */
  for (int l = 0; !st && l < cfg->model.n_layers; l++) {
    snprintf(f, sizeof f, "%s/placement_%d.json", tmp, l);
    st = carl_placement_save(f, carl_model_placement(m, l));
  }
  if (!st && cfg->refresh_every > 0) {
    snprintf(f, sizeof f, "%s/place_stats", tmp);
    st = carl_step_stats_save(carl_model_dispatch(m), f);
  }
  if (!st) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "format", "carl-checkpoint-2");
    cJSON_AddStringToObject(s, "run_id", rs->run_id);
    cJSON_AddNumberToObject(s, "step", (double)step);
    cJSON_AddNumberToObject(s, "router_state_files", has_router ? cfg->model.n_layers : 0);
    cJSON_AddNumberToObject(s, "inter_bytes_total", rs->inter_bytes_total);
    cJSON *mt = cJSON_AddObjectToObject(s, "metrics");
    cJSON_AddNumberToObject(mt, "loss", isfinite(rs->loss) ? rs->loss : 0);
    cJSON_AddNumberToObject(mt, "val_ce", isfinite(rs->val_ce) ? rs->val_ce : 0);
    cJSON_AddNumberToObject(mt, "val_bpb", isfinite(rs->val_bpb) ? rs->val_bpb : 0);
    /* CRC32C of each file as written (read back), checked on load */
    cJSON *crc = cJSON_AddObjectToObject(s, "crc32c");
    char (*names)[CARL__CKPT_NAME_MAX] = malloc(CARL__CKPT_MAX_FILES * sizeof *names);
    int nfiles = 0;
    st = names ? carl__ckpt_files(tmp, names, &nfiles) : carl_fail(CARL_ERR_NOMEM, "out of memory");
    for (int i = 0; i < nfiles && !st; i++) {
      char hex[16];
      uint32_t c = 0;
      if (snprintf(f, sizeof f, "%s/%s", tmp, names[i]) >= (int)sizeof f)
        st = carl_fail(CARL_ERR_INVALID, "%s/%s: path too long", tmp, names[i]);
      if (!st) st = carl_fs_crc32c_file(f, &c);
      snprintf(hex, sizeof hex, "%08x", c);
      cJSON_AddStringToObject(crc, names[i], hex);
    }
    free(names);
    cJSON_AddItemToObject(s, "config", cj);
    cj = NULL;
    char *text = st ? NULL : cJSON_Print(s);
    cJSON_Delete(s);
    snprintf(f, sizeof f, "%s/state.json", tmp);
    if (!st) st = text ? carl_write_file_atomic(f, text, strlen(text)) : carl_fail(CARL_ERR_NOMEM, "state.json: out of memory");
    free(text);
  }
  cJSON_Delete(cj);
  cJSON_free(cfg_text);
  if (!st) st = carl_fs_sync_dir(tmp);
  /* replaces an older checkpoint of the same step (a run resumed before this step) */
  if (!st) st = carl_fs_replace_dir(tmp, dir);
  if (!st) {
    char latest[CARL_PATH_MAX + 16], line[80];
    snprintf(latest, sizeof latest, "%s/latest", out_dir);
    snprintf(line, sizeof line, "%s\n", name);
    st = carl_write_file_atomic(latest, line, strlen(line));
  }
  if (!st) st = carl_fs_sync_dir(out_dir);
  if (st != CARL_OK) {
    carl__rm_dir(tmp);
    return carl__ckpt_error(st, tmp, dir, step);
  }
  carl__prune(out_dir, rs->run_id, name, 2);
  snprintf(saved, saved_cap, "%s", dir);
  return CARL_OK;
}

/* The checkpoint to load from path: path itself when it holds a state.json; else the one named by
 * path/latest when that is complete; else (latest missing, or naming a checkpoint that is missing
 * or incomplete: a kill between the two) the newest complete ckpt_<step>, with a note saying so. */
static carl_status carl__ckpt_find(const char *path, char *dir, size_t cap, char *note, size_t note_cap) {
  char f[CARL_PATH_MAX + 128];
  note[0] = '\0';
  if (carl__ckpt_complete(path)) {
    snprintf(dir, cap, "%s", path);
    return CARL_OK;
  }
  if (!carl__exists(path)) return carl_fail(CARL_ERR_IO, "%s: no such checkpoint or output directory", path);
  snprintf(f, sizeof f, "%s/latest", path);
  char named[64] = "";
  if (carl__exists(f)) {
    char *text;
    size_t len;
    CARL_TRY(carl_read_file(f, &text, &len));
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' ')) text[--len] = '\0';
    if (carl__ckpt_step(text) < 0 || len >= sizeof named) {
      carl_status st = carl_fail(CARL_ERR_PARSE, "%s: corrupt: expected a name ckpt_<step>, got \"%.40s\"", f, text);
      free(text);
      return st;
    }
    snprintf(named, sizeof named, "%s", text);
    free(text);
    snprintf(dir, cap, "%s/%s", path, named);
    if (carl__ckpt_complete(dir)) return CARL_OK;
  }
  int64_t steps[4096];
  if (carl__ckpt_list(path, 1, steps, 4096) < 1) {
    if (named[0])
      return carl_fail(CARL_ERR_IO, "%s/%s: the checkpoint named by %s is missing or incomplete, and no other complete "
                       "checkpoint is there", path, named, f);
    return carl_fail(CARL_ERR_NOT_FOUND, "%s: no checkpoint here (no 'latest' file, no complete ckpt_<step> directory, "
                     "no state.json)", path);
  }
  snprintf(dir, cap, "%s/ckpt_%08" PRId64, path, steps[0]);
  if (named[0])
    snprintf(note, note_cap, "%s names %s, which is missing or incomplete: using %s, the newest complete checkpoint", f,
             named, dir);
  else
    snprintf(note, note_cap, "%s has no 'latest' file: using %s, the newest complete checkpoint", path, dir);
  return CARL_OK;
}

carl_status carl_ckpt_resolve(const char *path, char *dir, size_t cap) {
  char note[CARL_PATH_MAX * 3];
  CARL_TRY(carl__ckpt_find(path, dir, cap, note, sizeof note));
  if (note[0]) CARL_WARN("%s", note);
  return CARL_OK;
}

/* What state.json says beyond the config and step. */
typedef struct {
  int router_files;
  int has_crc; /* carl-checkpoint-2 */
  int nfiles;
  char names[CARL__CKPT_MAX_FILES][CARL__CKPT_NAME_MAX]; /* files of the checkpoint, relative */
  uint32_t crc[CARL__CKPT_MAX_FILES];                    /* their CRC32C */
} carl__ckpt_info_t;

/* The CRC32C recorded for file `name`; 0 when none is (or the checkpoint has none). */
static int carl__ckpt_crc(const carl__ckpt_info_t *info, const char *name, uint32_t *crc) {
  for (int i = 0; info->has_crc && i < info->nfiles; i++)
    if (!strcmp(info->names[i], name)) {
      *crc = info->crc[i];
      return 1;
    }
  return 0;
}

/* "crc32c": {"<file>": "<8 hex digits>", ...}; it must cover the parameters, the optimizer and
 * every router state. */
static carl_status carl__parse_crc(const cJSON *doc, int router_files, carl__ckpt_info_t *info) {
  const cJSON *crc = NULL;
  CARL_TRY(carl_json_get_obj(doc, "", "crc32c", &crc));
  info->has_crc = 1;
  for (const cJSON *v = crc->child; v; v = v->next) {
    char *end = NULL;
    unsigned long x = cJSON_IsString(v) ? strtoul(v->valuestring, &end, 16) : 0;
    if (!cJSON_IsString(v) || strlen(v->valuestring) != 8 || *end || x > 0xffffffffUL)
      return carl_fail(CARL_ERR_PARSE, "crc32c.%s: must be 8 hex digits", v->string);
    if (!v->string[0] || v->string[0] == '/' || strstr(v->string, "..") || strlen(v->string) >= CARL__CKPT_NAME_MAX)
      return carl_fail(CARL_ERR_PARSE, "crc32c: \"%.80s\" is not a file of the checkpoint", v->string);
    if (info->nfiles == CARL__CKPT_MAX_FILES)
      return carl_fail(CARL_ERR_PARSE, "crc32c: more than %d files", CARL__CKPT_MAX_FILES);
    snprintf(info->names[info->nfiles], CARL__CKPT_NAME_MAX, "%s", v->string);
    info->crc[info->nfiles++] = (uint32_t)x;
  }
  char name[CARL__CKPT_NAME_MAX];
  uint32_t c;
  for (int i = -2; i < router_files; i++) {
    if (i == -2) snprintf(name, sizeof name, "model.safetensors");
    else if (i == -1) snprintf(name, sizeof name, "optimizer.safetensors");
    else snprintf(name, sizeof name, "router_%d.state", i);
    if (!carl__ckpt_crc(info, name, &c)) return carl_fail(CARL_ERR_PARSE, "crc32c: no entry for %s", name);
  }
  return CARL_OK;
}

/* Every file with a recorded CRC32C, except the two safetensors files (checked as they are read),
 * must exist and match it. */
static carl_status carl__verify_ckpt_files(const char *dir, const carl__ckpt_info_t *info) {
  char f[CARL_PATH_MAX + 160];
  for (int i = 0; info->has_crc && i < info->nfiles; i++) {
    if (!strcmp(info->names[i], "model.safetensors") || !strcmp(info->names[i], "optimizer.safetensors")) continue;
    if (snprintf(f, sizeof f, "%s/%s", dir, info->names[i]) >= (int)sizeof f)
      return carl_fail(CARL_ERR_INVALID, "%s/%s: path too long", dir, info->names[i]);
    uint32_t got;
    CARL_TRY(carl_fs_crc32c_file(f, &got));
    if (got != info->crc[i])
      return carl_fail(CARL_ERR_PARSE, "%s: CRC32C is %08x but state.json records %08x: the file was changed or is "
                       "corrupt", f, got, info->crc[i]);
  }
  return CARL_OK;
}

static carl_status carl__read_state(const char *ckpt_dir, carl_train_config_t *cfg, int64_t *step, carl__run_state_t *rs,
                                    carl__ckpt_info_t *info) {
  char f[CARL_PATH_MAX + 128];
  snprintf(f, sizeof f, "%s/state.json", ckpt_dir);
  cJSON *doc;
  CARL_TRY(carl_json_load(f, &doc));
  static const char *const keys1[] = {"format", "step", "router_state_files", "inter_bytes_total", "metrics", "config"};
  static const char *const keys2[] = {"format", "step", "router_state_files", "inter_bytes_total", "metrics", "config",
                                      "run_id", "crc32c"};
  const cJSON *cj = NULL;
  const char *fmt = NULL, *run_id = "";
  int64_t s = 0;
  int rf = 0, version = 0;
  double ib = 0;
  carl__ckpt_info_t *scratch = info ? NULL : malloc(sizeof *scratch);
  if (!info && !scratch) {
    carl_json_free(doc);
    return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", f);
  }
  if (!info) info = scratch;
  info->router_files = info->has_crc = info->nfiles = 0;
  carl_status st = carl_json_get_str(doc, "", "format", &fmt);
  if (!st) {
    version = !strcmp(fmt, "carl-checkpoint-1") ? 1 : !strcmp(fmt, "carl-checkpoint-2") ? 2 : 0;
    if (!version) st = carl_fail(CARL_ERR_PARSE, "format \"%s\" is not carl-checkpoint-2 (or -1)", fmt);
  }
  if (!st) st = version == 1 ? carl_json_check_keys(doc, "", keys1, 6) : carl_json_check_keys(doc, "", keys2, 8);
  if (!st) st = carl_json_get_i64(doc, "", "step", 0, (int64_t)1 << 50, &s);
  if (!st) st = carl_json_opt_int(doc, "", "router_state_files", 0, 256, 0, &rf);
  if (!st) st = carl_json_opt_num(doc, "", "inter_bytes_total", 0, INFINITY, 0, &ib);
  if (!st && version == 2) st = carl_json_get_str(doc, "", "run_id", &run_id);
  if (!st && version == 2) st = carl__parse_crc(doc, rf, info);
  if (!st) st = carl_json_get_obj(doc, "", "config", &cj);
  char *ctext = NULL;
  if (!st) {
    ctext = cJSON_PrintUnformatted(cj);
    st = carl_train_config_parse(ctext, strlen(ctext), "config", cfg);
  }
  cJSON_free(ctext);
  if (st != CARL_OK) {
    carl_json_free(doc);
    free(scratch);
    return carl_errctx(st, "%s", f);
  }
  *step = s;
  if (rs) {
    memset(rs, 0, sizeof *rs);
    rs->inter_bytes_total = ib;
    rs->val_ce = rs->val_bpb = rs->loss = NAN;
    snprintf(rs->run_id, sizeof rs->run_id, "%s", run_id);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(doc, "metrics");
    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(mt, "val_ce")) && cJSON_IsNumber(v) && v->valuedouble > 0) rs->val_ce = v->valuedouble;
    if ((v = cJSON_GetObjectItemCaseSensitive(mt, "val_bpb")) && cJSON_IsNumber(v) && v->valuedouble > 0) rs->val_bpb = v->valuedouble;
    if ((v = cJSON_GetObjectItemCaseSensitive(mt, "loss")) && cJSON_IsNumber(v)) rs->loss = v->valuedouble;
  }
  info->router_files = rf;
  carl_json_free(doc);
  free(scratch);
  return CARL_OK;
}

carl_status carl_ckpt_read_config(const char *ckpt_dir, carl_train_config_t *cfg, int64_t *step) {
  char dir[CARL_PATH_MAX + 64], note[CARL_PATH_MAX * 3];
  CARL_TRY(carl__ckpt_find(ckpt_dir, dir, sizeof dir, note, sizeof note));
  CARL_TRY(carl__read_state(dir, cfg, step, NULL, NULL));
  if (note[0]) CARL_WARN("%s", note);
  return CARL_OK;
}

/* "[i, j, ...]" of flat index k in shape. */
static void carl__index_str(int64_t k, int ndim, const int64_t *shape, char *buf, size_t cap) {
  int64_t idx[CARL_MAX_DIMS];
  for (int d = ndim - 1; d >= 0; d--) {
    idx[d] = shape[d] > 0 ? k % shape[d] : 0;
    k = shape[d] > 0 ? k / shape[d] : 0;
  }
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (int d = 0; d < ndim && n < cap; d++) n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)idx[d]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* Every element of a loaded tensor is finite; the error names the tensor and the first bad element. */
static carl_status carl__check_finite(const char *name, const float *x, int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  for (int64_t k = 0; k < n; k++)
    if (!isfinite(x[k])) {
      char at[160];
      carl__index_str(k, ndim, shape, at, sizeof at);
      return carl_fail(CARL_ERR_NUMERIC, "tensor '%s' holds %s at element %lld (index %s): the file is corrupt or was "
                       "written by a run that had diverged", name, isnan(x[k]) ? "NaN" : x[k] > 0 ? "+Inf" : "-Inf",
                       (long long)k, at);
    }
  return CARL_OK;
}

/* Read a safetensors file; with a CRC from state.json, its bytes must match it. */
static carl_status carl__read_st_checked(const char *path, const carl__ckpt_info_t *info, carl_st_file_t *sf) {
  const char *base = strrchr(path, '/');
  uint32_t want = 0;
  int has_crc = carl__ckpt_crc(info, base ? base + 1 : path, &want);
  char *buf;
  size_t len;
  CARL_TRY(carl_read_file(path, &buf, &len));
  carl_status st = carl_st_parse(buf, len, sf);
  if (st != CARL_OK) {
    free(buf);
    return carl_errctx(st, "%s", path);
  }
  uint32_t got = carl_crc32c(0, buf, len);
  free(buf);
  if (has_crc && got != want) {
    carl_st_free(sf);
    return carl_fail(CARL_ERR_PARSE, "%s: CRC32C is %08x but state.json records %08x: the file was changed or is corrupt",
                     path, got, want);
  }
  return CARL_OK;
}

/* Tensor `name` of the file into dst: all of it, or (a model storing some expert slots only,
 * carl_model_create_ep) the rows [first, first + ti->shape[0]) of the file's [P, ...] tensor. */
static carl_status carl__get_tensor(carl_st_file_t *sf, carl_model_t *m, const char *name, const carl_tensor_info_t *ti,
                                    float *dst) {
  int64_t first;
  int count;
  carl_model_expert_slots(m, &first, &count);
  const carl_model_config_t *c = carl_model_config(m);
  const int P = c->n_slots ? c->n_slots : c->n_experts;
  if (ti->ndim != 3 || count == P) {
    CARL_TRY(carl_st_get_f32(sf, name, ti->ndim, ti->shape, dst));
    return carl__check_finite(name, dst, ti->ndim, ti->shape);
  }
  const int64_t shape[3] = {P, ti->shape[1], ti->shape[2]}, per = ti->shape[1] * ti->shape[2];
  float *all = malloc(sizeof(float) * (size_t)(P * per));
  if (!all) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", name);
  carl_status st = carl_st_get_f32(sf, name, 3, shape, all);
  if (!st) st = carl__check_finite(name, all, 3, shape);
  if (!st) memcpy(dst, all + first * per, sizeof(float) * (size_t)ti->numel);
  free(all);
  return st;
}

static carl_status carl__load_params(const char *dir, carl_model_t *m, int with_optimizer, const carl__ckpt_info_t *info) {
  char f[CARL_PATH_MAX + 128];
  carl_st_file_t sf;
  snprintf(f, sizeof f, "%s/model.safetensors", dir);
  CARL_TRY(carl__read_st_checked(f, info, &sf));
  carl_status st = CARL_OK;
  int n = carl_model_ntensors(m);
  for (int i = 0; i < n && !st; i++) {
    const carl_tensor_info_t *ti = carl_model_tensor(m, i);
    st = carl__get_tensor(&sf, m, ti->name, ti, carl_model_params(m) + ti->offset);
  }
  carl_st_free(&sf);
  if (st != CARL_OK) return carl_errctx(st, "%s", f);
  if (!with_optimizer) return CARL_OK;
  snprintf(f, sizeof f, "%s/optimizer.safetensors", dir);
  CARL_TRY(carl__read_st_checked(f, info, &sf));
  char name[CARL_ST_NAME_MAX];
  for (int pass = 0; pass < 2 && !st; pass++)
    for (int i = 0; i < n && !st; i++) {
      const carl_tensor_info_t *ti = carl_model_tensor(m, i);
      float *dst = (pass ? carl_model_adam_v(m) : carl_model_adam_m(m)) + ti->offset;
      snprintf(name, sizeof name, "%s%s", pass ? "v." : "m.", ti->name);
      st = carl__get_tensor(&sf, m, name, ti, dst);
    }
  if (!st) st = carl_st_get(&sf, "adam_t", CARL_I64, 1, (int64_t[]){1}, carl_model_adam_t(m));
  carl_st_free(&sf);
  if (st != CARL_OK) return carl_errctx(st, "%s", f);
  return CARL_OK;
}

/* Prefix the current error with path unless it already names it. */
static carl_status carl__ctx_path(carl_status st, const char *path) {
  return strstr(carl_errmsg(), path) ? st : carl_errctx(st, "%s", path);
}

/* The expert tensors were saved in the layout of each layer's placement_<l>.json: move them into
 * the model's layout; resuming (adopt = 1) then takes the checkpoint's placements as well. */
static carl_status carl__load_placements(const char *dir, carl_model_t *m, int adopt) {
  const carl_model_config_t *c = carl_model_config(m);
  char f[CARL_PATH_MAX + 128];
  for (int l = 0; l < c->n_layers; l++) {
    snprintf(f, sizeof f, "%s/placement_%d.json", dir, l);
    if (!carl__exists(f)) continue; /* a checkpoint from before placements were recorded */
    carl_placement_t p;
    CARL_TRY(carl_placement_load(f, NULL, c->n_experts, &p));
    carl_status st = carl_model_import_layout(m, l, &p);
    if (!st && adopt) st = carl_model_set_placement(m, l, &p);
    carl_placement_free(&p);
    if (st != CARL_OK) return carl_errctx(st, "%s", f);
  }
  return CARL_OK;
}

static carl_status carl__load_routers(const char *dir, carl_model_t *m, const carl__ckpt_info_t *info) {
  int L = carl_model_config(m)->n_layers;
  int has = carl__router_has_state(m);
  if (has && info->router_files != L)
    return carl_fail(CARL_ERR_STATE, "%s: router state for %d layers, the model has %d stateful router layers", dir,
                     info->router_files, L);
  char f[CARL_PATH_MAX + 128];
  for (int l = 0; has && l < L; l++) {
    snprintf(f, sizeof f, "%s/router_%d.state", dir, l);
    carl_status st = carl_router_load(carl_model_router(m, l), f);
    if (st != CARL_OK) return carl__ctx_path(st, f);
  }
  return CARL_OK;
}

carl_status carl_ckpt_load_model(const char *path, carl_train_config_t *cfg, carl_model_t **out, int64_t *step) {
  *out = NULL;
  char dir[CARL_PATH_MAX + 64], note[CARL_PATH_MAX * 3];
  CARL_TRY(carl__ckpt_find(path, dir, sizeof dir, note, sizeof note));
  carl__ckpt_info_t *info = malloc(sizeof *info); /* 70 KB: not on the stack */
  if (!info) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", dir);
  carl_model_t *m = NULL;
  carl_status st = carl__read_state(dir, cfg, step, NULL, info);
  if (!st) st = carl_model_create(&cfg->model, &m);
  if (!st) st = carl__verify_ckpt_files(dir, info);
  if (!st) st = carl__load_params(dir, m, 0, info);
  if (!st) st = carl__load_placements(dir, m, 0);
  if (!st) st = carl__load_routers(dir, m, info);
  free(info);
  if (st != CARL_OK) {
    carl_model_free(m);
    return st;
  }
  if (note[0]) CARL_WARN("%s", note);
  *out = m;
  return CARL_OK;
}

/* ============================== metrics =========================================================== */

const char *carl_train_csv_header(void) {
  return "step,loss,ce,router_loss,val_ce,val_bpb,lr,grad_norm,tokens_per_s,skew_expert,skew_device,skew_node,"
         "inter_bytes,intra_bytes,inter_bytes_total,inter_fraction,a2a_ms,drop_rate,elapsed_s";
}

/* One row (with its newline) into buf; the length, or -1 when it does not fit. */
static int carl__csv_row_text(char *buf, size_t cap, const carl_train_metrics_t *m) {
  char vce[32] = "", vbpb[32] = "";
  if (m->has_val) {
    snprintf(vce, sizeof vce, "%.9g", m->val_ce);
    snprintf(vbpb, sizeof vbpb, "%.9g", m->val_bpb);
  }
  int n = snprintf(buf, cap, "%" PRId64 ",%.9g,%.9g,%.9g,%s,%s,%.6g,%.6g,%.1f,%.6g,%.6g,%.6g,%.9g,%.9g,%.9g,%.6g,%.6g,%.6g,%.2f\n",
                   m->step, m->loss, m->ce, m->router_loss, vce, vbpb, m->lr, m->grad_norm, m->tokens_per_s, m->skew_expert,
                   m->skew_device, m->skew_node, m->inter_bytes, m->intra_bytes, m->inter_bytes_total, m->inter_fraction,
                   m->a2a_ms, m->drop_rate, m->elapsed_s);
  return n >= 0 && (size_t)n < cap ? n : -1;
}

void carl_train_csv_row(FILE *f, const carl_train_metrics_t *m) {
  char row[1024];
  if (carl__csv_row_text(row, sizeof row, m) > 0) fputs(row, f);
}

/* metrics.csv, appended to row by row; every write is checked, and a failed one is cut off again
 * so that the file holds whole rows only. */
typedef struct {
  FILE *f;
  char path[CARL_PATH_MAX + 64];
  long size; /* bytes of whole rows written */
} carl__csv_t;

static int carl__count_commas(const char *s) {
  int n = 0;
  for (; *s; s++) n += *s == ',';
  return n;
}

/* Fresh run: a new file with the header. Resume: the header and the rows with step <= keep_step
 * (rows past the checkpoint, or cut short, are dropped) are written whole through a temporary and
 * a rename, so that a kill at any moment leaves the old rows or the new file, never less; rows are
 * then appended. */
static carl_status carl__csv_open(carl__csv_t *c, const char *path, int resume, int64_t keep_step) {
  memset(c, 0, sizeof *c);
  snprintf(c->path, sizeof c->path, "%s", path);
  const char *hdr = carl_train_csv_header();
  if (!resume) {
    c->f = fopen(path, "w");
    if (!c->f) return carl_fail(CARL_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    if (fprintf(c->f, "%s\n", hdr) < 0 || fflush(c->f) != 0) {
      carl_status st = carl_fail(CARL_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
      fclose(c->f);
      c->f = NULL;
      return st;
    }
    c->size = (long)strlen(hdr) + 1;
    return CARL_OK;
  }
  char *old = NULL;
  size_t len = 0;
  if (carl__exists(path)) CARL_TRY(carl_read_file(path, &old, &len));
  size_t cap = strlen(hdr) + 2 + len;
  char *text = malloc(cap);
  if (!text) {
    free(old);
    return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", path);
  }
  size_t n = (size_t)snprintf(text, cap, "%s\n", hdr);
  int fields = carl__count_commas(hdr);
  if (old) {
    char *save = NULL;
    int first = 1;
    for (char *line = strtok_r(old, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
      if (first) {
        first = 0;
        continue; /* header */
      }
      char *end;
      long long s = strtoll(line, &end, 10);
      if (end != line && *end == ',' && s <= keep_step && carl__count_commas(line) == fields) {
        size_t l = strlen(line);
        memcpy(text + n, line, l);
        text[n + l] = '\n';
        n += l + 1;
      }
    }
    free(old);
  }
  carl_status st = carl_write_file_atomic(path, text, n);
  free(text);
  CARL_TRY(st);
  c->f = fopen(path, "a");
  if (!c->f) return carl_fail(CARL_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
  c->size = (long)n;
  return CARL_OK;
}

static carl_status carl__csv_append(carl__csv_t *c, const carl_train_metrics_t *m) {
  if (!c->f) return CARL_OK; /* not the writing rank */
  char row[1024];
  int n = carl__csv_row_text(row, sizeof row, m);
  if (n < 0) return carl_fail(CARL_ERR_INVALID, "%s: row of step %lld too long", c->path, (long long)m->step);
  if (fputs(row, c->f) == EOF || fflush(c->f) != 0) {
    int e = errno;
    clearerr(c->f);
    if (ftruncate(fileno(c->f), c->size) == 0) fseek(c->f, 0, SEEK_END);
    return carl_fail(CARL_ERR_IO, "%s: cannot write the row of step %lld: %s", c->path, (long long)m->step, strerror(e));
  }
  c->size += n;
  return CARL_OK;
}

/* The rows so far on disk (before a checkpoint refers to them). */
static carl_status carl__csv_sync(carl__csv_t *c) {
  if (!c->f) return CARL_OK;
  if (fsync(fileno(c->f)) != 0 && errno != EINVAL)
    return carl_fail(CARL_ERR_IO, "%s: cannot write (sync failed): %s", c->path, strerror(errno));
  return CARL_OK;
}

static carl_status carl__csv_close(carl__csv_t *c) {
  if (!c->f) return CARL_OK;
  int bad = fclose(c->f) != 0;
  c->f = NULL;
  if (bad) return carl_fail(CARL_ERR_IO, "%s: cannot write (close failed): %s", c->path, strerror(errno));
  return CARL_OK;
}

/* ============================== the loop ========================================================== */

/* Fill skews, bytes, drops of the last forward into mt: the step metrics of every layer (loads
 * over the layer's replicas, skew) and the layer's dispatch cost, summed or averaged over layers. */
static carl_status carl__step_stats(carl_model_t *m, carl_train_metrics_t *mt) {
  const carl_model_config_t *c = carl_model_config(m);
  double se = 0, sd = 0, sn = 0, inter = 0, intra = 0, a2a = 0, drop = 0;
  const carl_step_t *ds = carl_model_dispatch(m);
  for (int l = 0; l < c->n_layers; l++) {
    carl_moe_stats_t st;
    CARL_TRY(carl_model_layer_stats(m, l, &st));
    const double score = carl_router_get(carl_model_router(m, l), "score");
    carl_step_metrics_t sm;
    CARL_TRY(carl_step_metrics(carl_model_topology(m), carl_step_placement(ds, l), st.T, st.E, st.k, isfinite(score) ? (int)score : 0,
                               st.logits, st.experts, &sm, NULL, NULL, NULL));
    se += sm.skew_expert;
    sd += sm.skew_device;
    sn += sm.skew_node;
    drop += sm.drop_rate;
    inter += st.bytes[CARL_LINK_INTER] + st.bytes[CARL_LINK_RACK];
    intra += st.bytes[CARL_LINK_INTRA];
    a2a += st.a2a_s;
  }
  int L = c->n_layers;
  mt->skew_expert = se / L;
  mt->skew_device = sd / L;
  mt->skew_node = sn / L;
  mt->inter_bytes = inter;
  mt->intra_bytes = intra;
  mt->inter_fraction = inter + intra > 0 ? inter / (inter + intra) : 0;
  mt->a2a_ms = a2a * 1e3;
  mt->drop_rate = drop / L;
  return CARL_OK;
}

/* Validation: eval_batches batches of B windows spread evenly over the validation split. */
static carl_status carl__validate(carl_model_t *m, const carl_train_config_t *cfg, const carl_loader_t *vl, int32_t *x,
                                  int32_t *y, int rank, int nranks, double *ce) {
  int B = cfg->batch, S = cfg->seq_len;
  int64_t rows = (int64_t)cfg->eval_batches * B;
  double sum = 0;
  int64_t cnt = 0;
  for (int b = 0; b < cfg->eval_batches; b++) {
    for (int r = 0; r < B; r++) {
      int64_t w = ((int64_t)b * B + r) * vl->windows / rows;
      CARL_TRY(carl_loader_eval_batch(vl, w, 1, x + (int64_t)r * S, y + (int64_t)r * S));
    }
    carl_model_loss_t L; /* several ranks: each its share of the windows, L the mean over all */
    const int Bl = B / nranks;
    CARL_TRY(carl_model_forward(m, x + (int64_t)rank * Bl * S, y + (int64_t)rank * Bl * S, Bl, S, &L));
    sum += L.ce * (double)L.ntargets;
    cnt += L.ntargets;
  }
  *ce = cnt > 0 ? sum / (double)cnt : 0;
  if (!isfinite(*ce)) return carl_fail(CARL_ERR_NUMERIC, "validation loss is %f", *ce);
  return CARL_OK;
}

typedef struct {
  int L, E;
  int64_t T, rows, cap; /* rows recorded, capacity in steps */
  float **logits;       /* [L] -> [cap*T, E] */
  int32_t *tokens;      /* [cap*T] */
} carl__trace_t;

static carl_status carl__trace_add(carl__trace_t *tr, carl_model_t *m, const int32_t *x) {
  if (tr->rows + tr->T > tr->cap * tr->T) {
    int64_t ncap = tr->cap ? tr->cap * 2 : 8;
    for (int l = 0; l < tr->L; l++) {
      float *p = realloc(tr->logits[l], (size_t)(ncap * tr->T * tr->E) * sizeof *p);
      if (!p) return carl_fail(CARL_ERR_NOMEM, "trace: out of memory");
      tr->logits[l] = p;
    }
    int32_t *t = realloc(tr->tokens, (size_t)(ncap * tr->T) * sizeof *t);
    if (!t) return carl_fail(CARL_ERR_NOMEM, "trace: out of memory");
    tr->tokens = t;
    tr->cap = ncap;
  }
  for (int l = 0; l < tr->L; l++) {
    carl_moe_stats_t st;
    CARL_TRY(carl_model_layer_stats(m, l, &st));
    memcpy(tr->logits[l] + tr->rows * tr->E, st.logits, (size_t)(tr->T * tr->E) * sizeof(float));
  }
  memcpy(tr->tokens + tr->rows, x, (size_t)tr->T * sizeof *x);
  tr->rows += tr->T;
  return CARL_OK;
}

/* The trace files are written into a work directory inside dir and moved in together at the end:
 * a failure leaves the trace files of before, or the new ones, never a mix. Errors name dir. */
static carl_status carl__trace_write(const carl__trace_t *tr, const char *dir, int D) {
  char work[CARL_FS_PATH_MAX], f[CARL_FS_PATH_MAX + 64];
  CARL_TRY(carl_fs_work_begin(dir, work, sizeof work));
  carl_status st = CARL_OK;
  for (int l = 0; l < tr->L && !st; l++) {
    snprintf(f, sizeof f, "%s/layer_%d.npy", work, l);
    st = carl_npy_save(f, CARL_F32, 2, (int64_t[]){tr->rows, tr->E}, tr->logits[l]);
  }
  int32_t *src = st ? NULL : malloc((size_t)(tr->rows > 0 ? tr->rows : 1) * sizeof *src);
  if (!st && !src) st = carl_fail(CARL_ERR_NOMEM, "trace: out of memory");
  if (!st) {
    /* the model spreads the T tokens of a step evenly over the devices in order: t*D/T */
    for (int64_t i = 0; i < tr->rows; i++) src[i] = (int32_t)((i % tr->T) * D / tr->T);
    snprintf(f, sizeof f, "%s/src.npy", work);
    st = carl_npy_save(f, CARL_I32, 1, (int64_t[]){tr->rows}, src);
  }
  free(src);
  if (!st) {
    snprintf(f, sizeof f, "%s/tokens.npy", work);
    st = carl_npy_save(f, CARL_I32, 1, (int64_t[]){tr->rows}, tr->tokens);
  }
  if (st) {
    carl_fs_errmsg_replace(st, work, dir);
    carl_fs_remove_tree(work);
    return carl_errctx(st, "trace");
  }
  return carl_fs_work_commit(work, dir);
}

/* The byte tokenizer gives ids 0..255: a smaller model.vocab must hold every byte of the corpus. */
static carl_status carl__check_vocab(const carl_train_config_t *cfg, const carl_text_t *train, const carl_text_t *val) {
  const int V = cfg->model.vocab;
  if (V >= CARL_BYTE_VOCAB) return CARL_OK;
  const carl_text_t *texts[2] = {train, val};
  const char *paths[2] = {cfg->train_data, cfg->val_data};
  for (int k = 0; k < 2; k++)
    for (int64_t i = 0; i < texts[k]->n; i++)
      if (texts[k]->bytes[i] >= V)
        return carl_fail(CARL_ERR_INVALID, "%s: byte %d at offset %lld is outside the vocabulary: model.vocab is %d in "
                         "the config \"%s\" (the byte tokenizer needs 256 to read any text)", paths[k],
                         texts[k]->bytes[i], (long long)i, V, cfg->name);
  return CARL_OK;
}

/* The trace directory must be a directory (or not exist yet, then it is created): checked before
 * training, not after it. */
static carl_status carl__check_trace_dir(const char *dir) {
  struct stat sb;
  if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode))
    return carl_fail(CARL_ERR_INVALID, "trace directory %s: exists and is not a directory", dir);
  return carl_fs_mkdir_p(dir);
}

/* A fresh run does not write into another run's directory unless told to (opts.overwrite). */
static carl_status carl__check_fresh_dir(const char *out_dir) {
  char f[CARL_PATH_MAX + 64], what[CARL_PATH_MAX + 160] = "";
  struct stat sb;
  snprintf(f, sizeof f, "%s/latest", out_dir);
  if (lstat(f, &sb) == 0) snprintf(what, sizeof what, "a 'latest' file");
  int64_t steps[1];
  if (!what[0] && carl__ckpt_list(out_dir, 0, steps, 1) > 0)
    snprintf(what, sizeof what, "checkpoint ckpt_%08" PRId64, steps[0]);
  snprintf(f, sizeof f, "%s/metrics.csv", out_dir);
  if (!what[0] && lstat(f, &sb) == 0) snprintf(what, sizeof what, "a metrics.csv");
  if (!what[0]) return CARL_OK;
  return carl_fail(CARL_ERR_STATE, "%s already holds a training run (%s): --resume continues it; --overwrite starts a "
                   "new run there (metrics.csv is replaced, the other run's checkpoints are kept)", out_dir, what);
}

/* Add to the current error that training stopped at step `step` and which checkpoint stays. */
static void carl__stopped(carl_status st, int64_t step, const char *last_ckpt) {
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", carl_errmsg());
  carl_fail(st, "%s; training stopped at step %lld. Last good checkpoint: %s", msg, (long long)step,
            last_ckpt[0] ? last_ckpt : "none yet");
}

/* model.n_slots from train.replicas and the topology: replicas, else ceil(E / D) per device. */
static carl_status carl__slots(carl_train_config_t *c, const carl_topo_t *t) {
  const int E = c->model.n_experts, D = t ? t->devices : 1;
  if (c->replicas > 0) {
    if (!t) return carl_fail(CARL_ERR_INVALID, "train.replicas = %d needs a topology (train.topology)", c->replicas);
    if (c->replicas < E || c->replicas % D)
      return carl_fail(CARL_ERR_INVALID, "train.replicas = %d must be >= n_experts (%d) and a multiple of the %d devices",
                       c->replicas, E, D);
  }
  const int want = c->replicas > 0 ? c->replicas : t ? D * ((E + D - 1) / D) : 0;
  if (c->model.n_slots && c->model.n_slots != (want ? want : E))
    return carl_fail(CARL_ERR_INVALID, "model.slots = %d, but train.replicas and the topology give %d", c->model.n_slots,
                     want ? want : E);
  c->model.n_slots = want;
  return CARL_OK;
}

/* The placement training starts from: contiguous, or with replicas the train.place algorithm on
 * uniform statistics (every expert equally loaded, from every node alike). */
static carl_status carl__initial_placement(const carl_train_config_t *c, const carl_topo_t *t, carl_placement_t *pl) {
  const int E = c->model.n_experts, D = t->devices, N = t->nodes;
  if (c->model.n_slots == D * ((E + D - 1) / D)) return carl_placement_contiguous(pl, E, D);
  carl_place_opts_t po;
  carl_place_opts_default(&po);
  CARL_TRY(carl_place_algo_parse(c->place, &po.algo));
  po.replicas = c->model.n_slots;
  /* uniform statistics: loads, traffic [N, E] and (for the co-activation algorithm) [E, E] */
  const int64_t n = E + (int64_t)N * E + (po.algo == CARL_PLACE_COACTIVATION ? (int64_t)E * E : 0);
  double *u = malloc(sizeof(double) * (size_t)n);
  if (!u) return carl_fail(CARL_ERR_NOMEM, "train: out of memory");
  for (int64_t i = 0; i < n; i++) u[i] = 1.0;
  carl_place_input_t in = {.E = E, .N = N, .load = u, .traffic = u + E,
                           .coact = po.algo == CARL_PLACE_COACTIVATION ? u + E + (int64_t)N * E : NULL};
  carl_status st = carl_place_compute(t, &in, &po, pl);
  free(u);
  return st == CARL_OK ? CARL_OK : carl_errctx(st, "initial placement with train.replicas = %d", c->replicas);
}

/* Topology, initial placement and refresh of the model (before its parameters are loaded). */
/* --device: NULL / "cpu" (gpu = -1), "cuda" (0) or "cuda:N". */
static carl_status carl__parse_device(const char *s, int *gpu) {
  *gpu = -1;
  if (!s || !strcmp(s, "cpu")) return CARL_OK;
  if (!strcmp(s, "cuda")) {
    *gpu = 0;
    return CARL_OK;
  }
  if (!strncmp(s, "cuda:", 5) && s[5] >= '0' && s[5] <= '9') {
    char *end = NULL;
    const long v = strtol(s + 5, &end, 10);
    if (*end == '\0' && v >= 0 && v < 1024) {
      *gpu = (int)v;
      return CARL_OK;
    }
  }
  return carl_fail(CARL_ERR_INVALID, "--device '%s': must be cpu, cuda or cuda:N", s);
}

static carl_status carl__setup_dispatch(carl_model_t *m, const carl_train_config_t *c, const carl_topo_t *t,
                                        const carl_placement_t *pl) {
  if (t) CARL_TRY(carl_model_set_topology(m, t, pl));
  if (c->dispatch_hier) CARL_TRY(carl_model_set_dispatch(m, CARL_PLAN_HIER));
  if (c->refresh_every <= 0) return CARL_OK;
  carl_place_opts_t po;
  carl_place_opts_default(&po);
  CARL_TRY(carl_place_algo_parse(c->place, &po.algo));
  return carl_model_set_refresh(m, c->refresh_every, &po, 0.9);
}

/* Expert parallel without replicated experts: each rank's model stores its own expert slots only
 * (carl_model_create_ep); otherwise the whole model. */
static carl_status carl__create_model(const carl_train_config_t *c, carl_exec_t *mex, carl_model_t **m) {
  const int np = mex ? carl_exec_size(mex) : 1, P = c->model.n_slots ? c->model.n_slots : c->model.n_experts;
  if (np > 1 && P == c->model.n_experts && P % np == 0) return carl_model_create_ep(&c->model, np, carl_exec_rank(mex), m);
  return carl_model_create(&c->model, m);
}

carl_status carl_train_run(const carl_train_config_t *cfg_in, const carl_train_opts_t *o, carl_train_result_t *res) {
  memset(res, 0, sizeof *res);
  if (!o || !o->out_dir || !o->out_dir[0]) return carl_fail(CARL_ERR_INVALID, "train: no output directory given");
  carl_train_config_t cfg = *cfg_in;
  CARL_TRY(carl__check_config(&cfg));
  const int B = cfg.batch, S = cfg.seq_len;
  const int64_t T = (int64_t)B * S;

  /* everything that can fail on input comes first: data, topology, the checkpoint to resume */
  carl_text_t train = {0}, val = {0};
  carl_loader_t tl = {0}, vl = {0};
  carl_topo_t topo;
  carl_placement_t pl = {0};
  int have_topo = 0;
  carl_model_t *m = NULL;
  carl__csv_t csv = {0};
  int32_t *x = NULL, *y = NULL;
  carl__trace_t tr = {0};
  int trace_D = 1;
  char ckdir[CARL_PATH_MAX + 64] = "", path[CARL_PATH_MAX + 64];
  int64_t start = 0;
  carl__run_state_t rs = {0, NAN, NAN, NAN, ""};
  char note[CARL_PATH_MAX * 3] = "", steps_note[256] = ""; /* warnings, printed once the input is accepted */
  carl_status st;
  /* expert parallel: one MPI rank per device; rank 0 writes metrics, checkpoints and the trace */
  carl_exec_t *mex = NULL;
  carl_cuda_t *gpu = NULL;
  int rank = 0, nranks = 1, gpu_index = -1;
  CARL_TRY(carl__parse_device(o->device, &gpu_index));
  if (gpu_index >= 0 && o->expert_parallel > 0)
    return carl_fail(CARL_ERR_UNSUPPORTED, "--device %s runs in one process: not with --expert-parallel", o->device);
  res->ranks = 1;
  res->failed_together = 1;
  if (o->expert_parallel > 0) {
    CARL_TRY(carl_exec_mpi_create(&mex));
    rank = carl_exec_rank(mex);
    nranks = carl_exec_size(mex);
    res->rank = rank;
    res->ranks = nranks;
  }

  st = carl_text_load(cfg.train_data, &train);
  if (!st) st = carl_text_load(cfg.val_data, &val);
  if (!st) st = carl_loader_init(&tl, &train, B, S, cfg.data_seed);
  if (!st) st = carl_loader_init(&vl, &val, 1, S, cfg.data_seed);
  if (!st && cfg.topology[0]) {
    st = carl_topo_load(cfg.topology, &topo);
    have_topo = !st;
  }
  if (!st) st = carl__slots(&cfg, have_topo ? &topo : NULL);
  if (!st && have_topo) st = carl__initial_placement(&cfg, &topo, &pl);
  if (!st) st = carl__check_vocab(&cfg, &train, &val);
  if (!st && mex) {
    const int ep = o->expert_parallel;
    if (nranks != ep)
      st = carl_fail(CARL_ERR_INVALID, "--expert-parallel %d: this run has %d MPI process%s (start it with mpirun -np %d)",
                     ep, nranks, nranks == 1 ? "" : "es", ep);
    else if (!have_topo)
      st = carl_fail(CARL_ERR_INVALID, "--expert-parallel %d needs a topology with %d devices (train.topology is none)", ep, ep);
    else if (topo.devices != nranks)
      st = carl_fail(CARL_ERR_INVALID, "--expert-parallel %d: the topology %s has %d devices, the run has %d ranks (one "
                     "rank per device)", ep, cfg.topology, topo.devices, nranks);
    else if (nranks > cfg.model.n_experts)
      st = carl_fail(CARL_ERR_INVALID, "--expert-parallel %d: %d ranks for %d experts (every rank needs an expert)", ep,
                     nranks, cfg.model.n_experts);
    else if (B % nranks)
      st = carl_fail(CARL_ERR_INVALID, "--expert-parallel %d: train.batch = %d does not split evenly over %d ranks", ep,
                     B, nranks);
  }
  if (!st && o->dump_trace) st = carl__check_trace_dir(o->dump_trace);
  if (!st && !o->resume && !o->overwrite && rank == 0) st = carl__check_fresh_dir(o->out_dir);
  if (!st && o->resume) {
    carl_train_config_t ck;
    carl__ckpt_info_t *info = malloc(sizeof *info); /* 70 KB: not on the stack */
    st = info ? carl__ckpt_find(o->out_dir, ckdir, sizeof ckdir, note, sizeof note) : carl_fail(CARL_ERR_NOMEM, "train: out of memory");
    if (!st) st = carl__read_state(ckdir, &ck, &start, &rs, info);
    char why[256];
    if (!st && carl_train_config_model_diff(&ck, &cfg, why, sizeof why))
      st = carl_fail(CARL_ERR_STATE, "%s: the checkpoint does not match the config: %s (checkpoint vs config)", ckdir, why);
    if (!st && (ck.batch != cfg.batch || ck.seq_len != cfg.seq_len || ck.data_seed != cfg.data_seed))
      st = carl_fail(CARL_ERR_STATE, "%s: train.batch, train.seq_len or train.data_seed differ from the checkpoint's "
                     "(%d, %d, %llu vs %d, %d, %llu)", ckdir, cfg.batch, cfg.seq_len, (unsigned long long)cfg.data_seed,
                     ck.batch, ck.seq_len, (unsigned long long)ck.data_seed);
    if (!st && ck.steps != cfg.steps)
      snprintf(steps_note, sizeof steps_note, "train: resuming with steps = %lld (the checkpoint's run had %lld): the "
               "learning-rate schedule changes", (long long)cfg.steps, (long long)ck.steps);
    if (!st) st = carl__create_model(&cfg, mex, &m);
    if (!st) st = carl__setup_dispatch(m, &cfg, have_topo ? &topo : NULL, &pl);
    if (!st) st = carl__verify_ckpt_files(ckdir, info);
    /* the checkpoint's placements first, then its tensors, which are in those placements' layout
     * (an expert-parallel rank reads its own slots of them) */
    if (!st) st = carl__load_placements(ckdir, m, 1);
    if (!st) st = carl__load_params(ckdir, m, 1, info);
    if (!st) st = carl__load_routers(ckdir, m, info);
    free(info);
    if (!st && cfg.refresh_every > 0) {
      snprintf(path, sizeof path, "%s/place_stats", ckdir);
      st = carl_step_stats_load(carl_model_dispatch_mut(m), path);
    }
    if (!st && start > cfg.steps)
      st = carl_fail(CARL_ERR_STATE, "%s: checkpoint is at step %lld, past train.steps = %lld", ckdir, (long long)start,
                     (long long)cfg.steps);
    if (!st) snprintf(res->last_ckpt, sizeof res->last_ckpt, "%s", ckdir);
    /* a checkpoint from before run ids: this run gets one (the older checkpoints are then never pruned) */
    if (!st && !rs.run_id[0]) carl__new_run_id(rs.run_id, sizeof rs.run_id);
  } else if (!st) {
    carl__new_run_id(rs.run_id, sizeof rs.run_id);
    st = carl__create_model(&cfg, mex, &m);
    if (!st) st = carl__setup_dispatch(m, &cfg, have_topo ? &topo : NULL, &pl);
  }
  if (!st && mex) st = carl_model_set_executor(m, mex);
  /* the GPU: every array allocated now, after a check of the planned bytes against the free memory */
  if (!st && gpu_index >= 0) st = carl_cuda_create(gpu_index, &gpu);
  if (!st && gpu) st = carl_errctx(carl_model_to_device(m, gpu, B, S), "--device %s", o->device);
  if (mex && nranks > 1) {
    /* every rank has checked its input: all go on, or all stop here (no rank waits for another) */
    double bad = st != CARL_OK;
    carl_status ast = carl_exec_allreduce(mex, &bad, 1);
    if (ast) st = ast;
    else if (!st && bad > 0)
      st = carl_fail(CARL_ERR_STATE, "rank %d: stopped because another rank rejected the input (its message names it)", rank);
  }
  if (!st) res->failed_together = 0;
  if (!st && rank == 0) st = carl_fs_mkdir_p(o->out_dir);
  if (!st && rank == 0) {
    snprintf(path, sizeof path, "%s/metrics.csv", o->out_dir);
    st = carl__csv_open(&csv, path, o->resume, start);
  }
  if (!st) {
    x = malloc((size_t)T * sizeof *x);
    y = malloc((size_t)T * sizeof *y);
    trace_D = have_topo ? topo.devices : 1;
    tr.L = cfg.model.n_layers;
    tr.E = cfg.model.n_experts;
    tr.T = T;
    tr.logits = calloc((size_t)tr.L, sizeof *tr.logits);
    if (!x || !y || !tr.logits) st = carl_fail(CARL_ERR_NOMEM, "train: out of memory");
  }

  carl_adamw_cfg_t opt = carl_adamw_default();
  opt.beta1 = (float)cfg.beta1;
  opt.beta2 = (float)cfg.beta2;
  opt.eps = (float)cfg.adam_eps;
  opt.weight_decay = (float)cfg.weight_decay;
  int64_t dump_every = o->dump_every > 0 ? o->dump_every : cfg.log_every;
  int64_t end = cfg.steps;
  if (o->stop_after > 0 && o->stop_after < end) end = o->stop_after;

  if (!st && note[0]) CARL_WARN("%s", note);
  if (!st && steps_note[0]) CARL_WARN("%s", steps_note);

  double t0 = carl_now(), t_log = t0, train_time = 0;
  double sum_loss = 0, sum_ce = 0, sum_router = 0, sum_se = 0, sum_sd = 0;
  int64_t nacc = 0, nlogged = 0, tokens_since = 0, step = start;
  carl_train_metrics_t mt;
  memset(&mt, 0, sizeof mt);
  for (; !st && step < end; step++) {
    double ts = carl_now();
    st = carl_loader_batch(&tl, step, x, y);
    if (st) break;
    carl_model_set_step(m, step);
    carl_model_loss_t L;
    st = carl_model_forward(m, x + (int64_t)rank * (B / nranks) * S, y + (int64_t)rank * (B / nranks) * S, B / nranks, S, &L);
    if (st == CARL_ERR_NUMERIC) {
      st = carl_errctx(CARL_ERR_NUMERIC, "step %lld: stopped on a non-finite value in the forward pass. Last good "
                       "checkpoint: %s. Detail", (long long)step + 1, res->last_ckpt[0] ? res->last_ckpt : "none yet");
      break;
    }
    if (st) break;
    if (!isfinite(L.total)) {
      st = carl_fail(CARL_ERR_NUMERIC, "step %lld: training loss is %f (cross-entropy %f, router %f); stopped. "
                     "Last good checkpoint: %s", (long long)step + 1, L.total, L.ce, L.router,
                     res->last_ckpt[0] ? res->last_ckpt : "none yet");
      break;
    }
    carl_model_zero_grad(m);
    st = carl_model_backward(m);
    if (!st) st = carl_model_router_update(m);
    if (st) break;
    float gn = carl_model_clip_grad(m, (float)cfg.grad_clip);
    if (!isfinite(gn)) {
      st = carl_fail(CARL_ERR_NUMERIC, "step %lld: gradient norm is %f; stopped before the update. Last good "
                     "checkpoint: %s", (long long)step + 1, gn, res->last_ckpt[0] ? res->last_ckpt : "none yet");
      break;
    }
    float lr = carl_lr_cosine(step, cfg.warmup, cfg.steps, (float)cfg.lr, (float)cfg.lr_min);
    st = carl_model_adamw_step(m, &opt, lr);
    if (st) break;
    /* every refresh_every steps: new placements, expert weights and moments migrate */
    carl_step_refresh_t rf;
    st = carl_model_end_step(m, step, cfg.steps, &rf);
    if (st) break;
    /* statistics of this step's forward (before any validation forward overwrites them) */
    st = carl__step_stats(m, &mt);
    if (!st && o->dump_trace && step % dump_every == 0) st = carl__trace_add(&tr, m, x);
    if (st) break;
    train_time += carl_now() - ts;
    rs.inter_bytes_total += mt.inter_bytes;
    sum_loss += L.total;
    sum_ce += L.ce;
    sum_router += L.router;
    nacc++;
    tokens_since += T;
    int64_t done = step + 1;
    int last = done == end;
    if (done % cfg.log_every == 0 || last) {
      double now = carl_now();
      mt.step = done;
      mt.steps = cfg.steps;
      mt.loss = sum_loss / (double)nacc;
      mt.ce = sum_ce / (double)nacc;
      mt.router_loss = sum_router / (double)nacc;
      mt.lr = lr;
      mt.grad_norm = gn;
      mt.tokens_per_s = now > t_log ? (double)tokens_since / (now - t_log) : 0;
      mt.inter_bytes_total = rs.inter_bytes_total;
      mt.has_val = 0;
      if ((cfg.eval_every > 0 && done % cfg.eval_every == 0) || done == cfg.steps) {
        double vce;
        st = carl__validate(m, &cfg, &vl, x, y, rank, nranks, &vce);
        if (st) break;
        mt.has_val = 1;
        mt.val_ce = vce;
        mt.val_bpb = vce / log(2.0);
        rs.val_ce = vce;
        rs.val_bpb = mt.val_bpb;
      }
      mt.elapsed_s = carl_now() - t0;
      rs.loss = mt.loss;
      st = carl__csv_append(&csv, &mt);
      if (st) {
        carl__stopped(st, done, res->last_ckpt);
        break;
      }
      if (o->progress && rank == 0) o->progress(&mt, o->ud);
      sum_se += mt.skew_expert;
      sum_sd += mt.skew_device;
      nlogged++;
      res->final_loss = mt.loss;
      sum_loss = sum_ce = sum_router = 0;
      nacc = 0;
      tokens_since = 0;
      t_log = carl_now();
    }
    if ((cfg.ckpt_every > 0 && done % cfg.ckpt_every == 0) || last) {
      st = carl__csv_sync(&csv);
      if (!st) st = carl_model_sync_host(m);      /* the GPU's parameters and moments */
      carl_model_full_t full = {0};
      if (!st) st = carl_model_full(m, &full); /* every rank's expert slots, for rank 0 to save */
      if (!st && rank == 0)
        st = carl__ckpt_save(o->out_dir, &cfg, m, &full, done, &rs, res->last_ckpt, sizeof res->last_ckpt);
      carl_model_full_free(&full);
      if (st) {
        carl__stopped(st, done, res->last_ckpt);
        break;
      }
    }
  }
  if (!st && o->dump_trace && tr.rows > 0 && rank == 0) st = carl__trace_write(&tr, o->dump_trace, trace_D);

  res->step = step;
  res->val_ce = rs.val_ce;
  res->val_bpb = rs.val_bpb;
  res->inter_bytes_total = rs.inter_bytes_total;
  res->tokens_per_s = train_time > 0 ? (double)(step - start) * (double)T / train_time : 0;
  res->skew_expert_mean = nlogged ? sum_se / (double)nlogged : 0;
  res->skew_device_mean = nlogged ? sum_sd / (double)nlogged : 0;

  carl_status cst = carl__csv_close(&csv);
  if (!st) st = cst;
  for (int l = 0; tr.logits && l < tr.L; l++) free(tr.logits[l]);
  free(tr.logits);
  free(tr.tokens);
  free(x);
  free(y);
  carl_model_free(m);
  carl_cuda_free(gpu);
  carl_exec_free(mex);
  carl_placement_free(&pl);
  carl_loader_free(&tl);
  carl_loader_free(&vl);
  carl_text_free(&train);
  carl_text_free(&val);
  return st;
}

/* ============================== sampling ========================================================== */

carl_status carl_sample_text(carl_model_t *m, const char *prompt, int n, double temperature, uint64_t seed, char *out,
                             size_t cap) {
  if (!out || cap == 0) return carl_fail(CARL_ERR_INVALID, "sample: no output buffer");
  if (n < 0) return carl_fail(CARL_ERR_INVALID, "sample: negative length %d", n);
  const carl_model_config_t *c = carl_model_config(m);
  if (c->vocab != CARL_BYTE_VOCAB)
    return carl_fail(CARL_ERR_INVALID, "sample: the model's vocabulary is %d, the byte tokenizer needs 256", c->vocab);
  size_t pl = prompt ? strlen(prompt) : 0;
  int64_t total = (int64_t)pl + n + 1;
  int32_t *ids = malloc((size_t)total * sizeof *ids);
  double *p = malloc((size_t)c->vocab * sizeof *p);
  if (!ids || !p) {
    free(ids);
    free(p);
    return carl_fail(CARL_ERR_NOMEM, "sample: out of memory");
  }
  int64_t len = 0;
  if (pl == 0)
    ids[len++] = '\n';
  else
    len = carl_tok_encode(prompt, (int64_t)pl, ids);
  carl_status st = CARL_OK;
  for (int i = 0; i < n && !st; i++) {
    int S = len < c->max_seq ? (int)len : c->max_seq;
    carl_model_loss_t L;
    st = carl_model_forward(m, ids + len - S, NULL, 1, S, &L);
    if (st) break;
    const float *lg = carl_model_logits(m) + (int64_t)(S - 1) * c->vocab;
    int next = 0;
    if (temperature <= 0) {
      for (int v = 1; v < c->vocab; v++)
        if (lg[v] > lg[next]) next = v;
    } else {
      double mx = lg[0], z = 0;
      for (int v = 1; v < c->vocab; v++) mx = lg[v] > mx ? lg[v] : mx;
      for (int v = 0; v < c->vocab; v++) z += p[v] = exp((lg[v] - mx) / temperature);
      double u = carl_rng_uniform64(seed, CARL_STREAM_SAMPLE, (uint64_t)i) * z, acc = 0;
      next = c->vocab - 1;
      for (int v = 0; v < c->vocab; v++) {
        acc += p[v];
        if (u < acc) {
          next = v;
          break;
        }
      }
    }
    ids[len++] = next;
  }
  if (!st) {
    int64_t from = pl == 0 ? 1 : 0, k = 0;
    for (int64_t i = from; i < len && (size_t)k + 1 < cap; i++) out[k++] = (char)(uint8_t)ids[i];
    out[k] = '\0';
  }
  free(ids);
  free(p);
  return st;
}
