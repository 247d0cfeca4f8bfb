/* carl route: route one batch (or a trace of batches) of router logits with any registered router,
 * then report loads, skew, selectivity, losses and the communication cost of the dispatch. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "carl/array.h"
#include "carl/balance.h"
#include "carl/fs.h"
#include "carl/plan.h"
#include "carl/route.h"
#include "carl/step.h"
#include "carl/topo.h"
#include "cli.h"


typedef struct {
  const char *logits, *source, *tokens, *features, *topology, *placement, *router, *out, *trace;
  const char *mode;
  const char *state_in, *state_out;
  int steps;
  int hidden, elem_bytes;
  int demo;
  uint64_t seed;
  int nset;
  const char *keys[CARL_ROUTER_MAX_OPTS];
  double vals[CARL_ROUTER_MAX_OPTS];
} route_args_t;

static void route_usage(FILE *f, const char *router) {
  fprintf(f,
          "usage: carl route --logits L.npy --topology T.json --out DIR [options]\n"
          "       carl route --trace DIR --steps N --topology T.json --out DIR [options]\n"
          "       carl route --demo [--router NAME] [--out DIR]\n\n"
          "Routes router logits [T,E] with a registered router and writes DIR/experts.npy (int32 [T,k],\n"
          "-1 where dropped), DIR/weights.npy (float32 [T,k]) and DIR/report.json.\n\n"
          "inputs and outputs:\n"
          "  --logits PATH        float32 [T,E] router logits (required unless --trace/--demo)\n"
          "  --source PATH        int32 [T] device of each token (default: token t on device t*D/T)\n"
          "  --tokens PATH        int32 [T] vocabulary ids, for the hash router (default: none)\n"
          "  --features PATH      float32 [T,d] router inputs, for locmoe (default: none)\n"
          "  --topology PATH      topology JSON (required unless --demo; see docs/topologies.md)\n"
          "  --placement PATH     placement JSON (default: contiguous, expert e on device e*D/E)\n"
          "  --out DIR            output directory, created if missing (required unless --demo)\n"
          "  --trace DIR          route DIR/logits_00000.npy.. (with source_/tokens_ files if present)\n"
          "  --steps N            number of trace steps (default: all found)\n"
          "  --mode flat|hier     dispatch mode of the cost model (default flat)\n"
          "  --hidden H           hidden size of a token copy (default 4096)\n"
          "  --elem-bytes B       bytes per hidden element (default 2, bf16)\n"
          "  --seed S             seed for jitter and random tables (default 0)\n"
          "  --state PATH         load the router state (bias, duals, coefficients, c2r table) first\n"
          "  --save-state PATH    save the router state after the last step (a trace saves\n"
          "                       DIR/state.bin by default)\n"
          "  --router NAME        router (default topk); one of:");
  for (const char *const *n = carl_router_names(); *n; n++) fprintf(f, " %s", *n);
  fprintf(f, "\n\n");
  const char *const *names = carl_router_names();
  for (; *names; names++) {
    if (router && strcmp(router, *names)) continue;
    const carl_opt_t *opts[CARL_ROUTER_MAX_OPTS];
    int n = carl_router_options(*names, opts, CARL_ROUTER_MAX_OPTS);
    fprintf(f, "router %s: %s\n", *names, carl_router_help(*names));
    for (int i = 0; i < n; i++) {
      char flag[64];
      snprintf(flag, sizeof flag, "--%s", opts[i]->name);
      for (char *c = flag + 2; *c; c++)
        if (*c == '_') *c = '-';
      fprintf(f, "  %-24s %s (default %g)\n", flag, opts[i]->help ? opts[i]->help : "", opts[i]->def);
    }
    fprintf(f, "\n");
  }
  if (!router) fprintf(f, "(carl route --router NAME --help lists one router's options)\n");
}

/* "--capacity-factor" -> "capacity_factor" in buf; NULL if not a long flag. */
static const char *flag_key(const char *arg, char *buf, size_t n) {
  if (strncmp(arg, "--", 2) != 0 || strlen(arg + 2) >= n) return NULL;
  strcpy(buf, arg + 2);
  for (char *c = buf; *c; c++)
    if (*c == '-') *c = '_';
  return buf;
}

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || *end || end == v || x < lo || x > hi) {
    fprintf(stderr, "carl route: %s must be an integer in [%d, %d], got '%s'\n", flag, lo, hi, v);
    return 0;
  }
  *out = (int)x;
  return 1;
}

/* Returns 0 to continue, else the exit code (help prints and returns -1 -> 0). */
static int parse_args(int argc, char **argv, route_args_t *a, char keybuf[][64]) {
  memset(a, 0, sizeof *a);
  a->router = "topk";
  a->mode = "flat";
  a->hidden = 4096;
  a->elem_bytes = 2;
  a->steps = -1;
  int help = 0;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) { help = 1; continue; }
    if (!strcmp(arg, "--demo")) { a->demo = 1; continue; }
    if (i + 1 >= argc) {
      fprintf(stderr, "carl route: %s needs a value (carl route --help)\n", arg);
      return 2;
    }
    const char *v = argv[++i];
    if (!strcmp(arg, "--logits")) a->logits = v;
    else if (!strcmp(arg, "--source")) a->source = v;
    else if (!strcmp(arg, "--tokens")) a->tokens = v;
    else if (!strcmp(arg, "--features")) a->features = v;
    else if (!strcmp(arg, "--topology")) a->topology = v;
    else if (!strcmp(arg, "--placement")) a->placement = v;
    else if (!strcmp(arg, "--router")) a->router = v;
    else if (!strcmp(arg, "--out")) a->out = v;
    else if (!strcmp(arg, "--trace")) a->trace = v;
    else if (!strcmp(arg, "--mode")) a->mode = v;
    else if (!strcmp(arg, "--state")) a->state_in = v;
    else if (!strcmp(arg, "--save-state")) a->state_out = v;
    else if (!strcmp(arg, "--steps")) { if (!parse_int(arg, v, 1, 1 << 30, &a->steps)) return 2; }
    else if (!strcmp(arg, "--hidden")) { if (!parse_int(arg, v, 1, 1 << 20, &a->hidden)) return 2; }
    else if (!strcmp(arg, "--elem-bytes")) { if (!parse_int(arg, v, 1, 8, &a->elem_bytes)) return 2; }
    else if (!strcmp(arg, "--seed")) {
      char *end;
      errno = 0;
      unsigned long long s = strtoull(v, &end, 10);
      if (errno || *end || end == v) {
        fprintf(stderr, "carl route: --seed must be a non-negative integer, got '%s'\n", v);
        return 2;
      }
      a->seed = s;
    } else {
      /* a router option: checked against the chosen router's table by carl_router_create */
      if (a->nset >= CARL_ROUTER_MAX_OPTS || !flag_key(arg, keybuf[a->nset], 64)) {
        fprintf(stderr, "carl route: unknown option '%s' (carl route --help)\n", arg);
        return 2;
      }
      char *end;
      errno = 0;
      double x = strtod(v, &end);
      if (errno || *end || end == v || !isfinite(x)) {
        fprintf(stderr, "carl route: %s must be a number, got '%s'\n", arg, v);
        return 2;
      }
      a->keys[a->nset] = keybuf[a->nset];
      a->vals[a->nset] = x;
      a->nset++;
    }
  }
  if (help) {
    route_usage(stdout, carl_router_find(a->router) && a->router != NULL && strcmp(a->router, "topk") ? a->router : NULL);
    return -1;
  }
  if (strcmp(a->mode, "flat") && strcmp(a->mode, "hier")) {
    fprintf(stderr, "carl route: --mode must be 'flat' or 'hier', got '%s'\n", a->mode);
    return 2;
  }
  if (!carl_router_find(a->router)) {
    fprintf(stderr, "carl route: unknown router '%s'; known:", a->router);
    for (const char *const *n = carl_router_names(); *n; n++) fprintf(stderr, " %s", *n);
    fprintf(stderr, "\n");
    return 2;
  }
  if (a->demo) return 0;
  if (!a->logits && !a->trace) {
    fprintf(stderr, "carl route: --logits (or --trace) is required (carl route --help)\n");
    return 2;
  }
  if (a->logits && a->trace) {
    fprintf(stderr, "carl route: give --logits or --trace, not both\n");
    return 2;
  }
  if (!a->topology) {
    fprintf(stderr, "carl route: --topology is required (ready-made ones in configs/topologies/)\n");
    return 2;
  }
  if (!a->out) {
    fprintf(stderr, "carl route: --out DIR is required\n");
    return 2;
  }
  return 0;
}

/* ---- inputs ------------------------------------------------------------------------------------ */
typedef struct {
  carl_array_t logits, source, tokens, features; /* [T,E] f32, [T] i32, [T] i32, [T,d] f32 */
} step_inputs_t;

static void step_inputs_free(step_inputs_t *s) {
  carl_array_free(&s->logits);
  carl_array_free(&s->source);
  carl_array_free(&s->tokens);
  carl_array_free(&s->features);
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Load and check one step's arrays; every error names the file and what is wrong. */
static carl_status load_step(const char *logits, const char *source, const char *tokens, const char *features,
                             const carl_topo_t *topo, step_inputs_t *s) {
  memset(s, 0, sizeof *s);
  carl_status st = carl_npy_read(logits, &s->logits);
  if (!st) st = carl_array_expect(&s->logits, logits, CARL_F32, 2);
  if (st) return st;
  int64_t T = s->logits.shape[0], E = s->logits.shape[1];
  if (T < 1 || E < 1) return carl_fail(CARL_ERR_SHAPE, "%s: logits must be [T, E] with T, E >= 1, got [%lld, %lld]",
                                       logits, (long long)T, (long long)E);
  if (source) {
    st = carl_npy_read(source, &s->source);
    if (!st) st = carl_array_expect(&s->source, source, CARL_I32, 1);
    if (st) return st;
    if (s->source.shape[0] != T)
      return carl_fail(CARL_ERR_SHAPE, "%s: %lld source devices for %lld tokens of %s", source,
                       (long long)s->source.shape[0], (long long)T, logits);
    const int32_t *src = s->source.data;
    for (int64_t t = 0; t < T; t++)
      if (src[t] < 0 || src[t] >= topo->devices)
        return carl_fail(CARL_ERR_INVALID, "%s: token %lld is on device %d, but the topology has devices 0..%d", source,
                         (long long)t, src[t], topo->devices - 1);
  }
  if (tokens) {
    st = carl_npy_read(tokens, &s->tokens);
    if (!st) st = carl_array_expect(&s->tokens, tokens, CARL_I32, 1);
    if (st) return st;
    if (s->tokens.shape[0] != T)
      return carl_fail(CARL_ERR_SHAPE, "%s: %lld token ids for %lld tokens", tokens, (long long)s->tokens.shape[0],
                       (long long)T);
  }
  if (features) {
    st = carl_npy_read(features, &s->features);
    if (!st) st = carl_array_expect(&s->features, features, CARL_F32, 2);
    if (st) return st;
    if (s->features.shape[0] != T)
      return carl_fail(CARL_ERR_SHAPE, "%s: %lld feature rows for %lld tokens", features,
                       (long long)s->features.shape[0], (long long)T);
  }
  return CARL_OK;
}

/* Deterministic demo batch: 4096 tokens x 64 experts on 2 nodes x 8 devices; logits are Gaussian
 * noise plus a Zipf-like popularity per expert plus an affinity of each token for the experts of
 * its own node (as a trained router would show), so that both skew and locality are visible. */
static carl_status make_demo(carl_topo_t *topo, step_inputs_t *s) {
  const int64_t T = 4096;
  const int E = 64;
  memset(s, 0, sizeof *s);
  CARL_TRY(carl_topo_make(topo, 2, 8, 160, 3, 50, 10));
  snprintf(topo->name, sizeof topo->name, "demo-2x8");
  int64_t shp[2] = {T, E};
  CARL_TRY(carl_array_alloc(&s->logits, CARL_F32, 2, shp));
  CARL_TRY(carl_array_alloc(&s->source, CARL_I32, 1, shp));
  float *z = s->logits.data;
  int32_t *src = s->source.data;
  const int D = topo->devices, P = topo->devices_per_node;
  for (int64_t t = 0; t < T; t++) {
    src[t] = (int32_t)(t * D / T);
    int node = src[t] / P;
    for (int e = 0; e < E; e++) {
      int enode = (e * D / E) / P;
      z[t * E + e] = carl_rng_normal(7, CARL_STREAM_WORKLOAD, (uint64_t)(t * E + e)) - 0.5f * logf(1.0f + (float)e) +
                     (enode == node ? 0.5f : 0.0f);
    }
  }
  return CARL_OK;
}

/* ---- report ------------------------------------------------------------------------------------ */
/* dir/name into buf; error when it does not fit. */
static carl_status join_path(char *buf, size_t n, const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  if (a + 1 + b + 1 > n) return carl_fail(CARL_ERR_INVALID, "%s: path too long", dir);
  memcpy(buf, dir, a);
  buf[a] = '/';
  memcpy(buf + a + 1, name, b + 1);
  return CARL_OK;
}

static cJSON *json_array_d(const double *v, int n) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
  return a;
}

static cJSON *json_skew(const double *load, int n) {
  carl_skew_t sk;
  carl_skew(load, n, &sk);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "max", sk.max);
  cJSON_AddNumberToObject(o, "mean", sk.mean);
  cJSON_AddNumberToObject(o, "max_over_mean", sk.max_over_mean);
  cJSON_AddNumberToObject(o, "maxvio", sk.maxvio);
  cJSON_AddNumberToObject(o, "cv", sk.cv);
  cJSON_AddNumberToObject(o, "gini", sk.gini);
  return o;
}

typedef struct {
  double expert_maxvio, device_maxvio, node_maxvio, drop_rate, rho, jaccard, inter_bytes, intra_bytes,
      inter_fraction, a2a_s, loss_total;
} step_summary_t;

/* Route one step and write experts.npy, weights.npy and report.json into outdir. */
static carl_status route_step(carl_router_t *r, carl_step_t *cs, const route_args_t *a, const carl_topo_t *topo,
                              const step_inputs_t *s, int64_t step, const char *outdir, step_summary_t *sum) {
  const carl_placement_t *pl = carl_step_placement(cs, 0);
  const int64_t T = s->logits.shape[0];
  const int E = (int)s->logits.shape[1];
  const int k = (int)carl_router_get(r, "k");
  const int score = (int)carl_router_get(r, "score");
  if (pl->E != E)
    return carl_fail(CARL_ERR_SHAPE, "logits have %d experts but the placement has %d", E, pl->E);
  carl_status st = CARL_OK;
  int32_t *experts = malloc(sizeof(int32_t) * (size_t)(T * k));
  float *weights = malloc(sizeof(float) * (size_t)(T * k));
  float *dlogits = malloc(sizeof(float) * (size_t)(T * E));
  double *eload = calloc((size_t)E, sizeof(double));
  double *dload = calloc((size_t)topo->devices, sizeof(double));
  double *nload = calloc((size_t)topo->nodes, sizeof(double));
  cJSON *rep = NULL;
  if (!experts || !weights || !dlogits || !eload || !dload || !nload) {
    st = carl_fail(CARL_ERR_NOMEM, "route: out of memory for T = %lld, E = %d", (long long)T, E);
    goto done;
  }
  carl_route_in_t in = {.T = T, .E = E, .logits = s->logits.data, .src = s->source.data, .token_ids = s->tokens.data,
                        .x = s->features.data, .d = s->features.data ? (int)s->features.shape[1] : 0,
                        .step = step, .seed = a->seed};
  carl_route_out_t out = {.experts = experts, .weights = weights, .dlogits = dlogits};
  /* route, plan and cost, then the router's update from the (global) loads: the one step */
  if ((st = carl_step_route(cs, 0, &in, &out)) != CARL_OK) goto done;
  if ((st = carl_step_observe(cs, 0, &in, &out)) != CARL_OK) goto done;
  const carl_cost_t *cost = carl_step_cost(cs, 0);

  /* loads, skew and selectivity: the step metrics */
  carl_step_metrics_t m;
  if ((st = carl_step_metrics(topo, pl, T, E, k, score, s->logits.data, experts, &m, eload, dload, nload)) != CARL_OK)
    goto done;
  const int nd = topo->devices, nn = topo->nodes;
  const double rho = m.retained, jac = m.jaccard, tok_ent = m.entropy;
  double load_ent = 0, aux = 0, z = 0;
  if ((st = carl_routing_entropy(s->logits.data, T, E, score, experts, k, NULL, &load_ent)) != CARL_OK) goto done;
  /* reference losses, unscaled (coefficient 1), the same for every router so they compare */
  if ((st = carl_loss_expert(s->logits.data, T, E, score, experts, k, 1.0, &aux, NULL)) != CARL_OK) goto done;
  if ((st = carl_loss_z(s->logits.data, T, E, 1.0, &z, NULL)) != CARL_OK) goto done;

  const size_t token_bytes = (size_t)a->hidden * (size_t)a->elem_bytes;

  /* outputs */
  char path[4096];
  int64_t shp[2] = {T, k};
  if ((st = join_path(path, sizeof path, outdir, "experts.npy")) != CARL_OK) goto done;
  if ((st = carl_npy_save(path, CARL_I32, 2, shp, experts)) != CARL_OK) goto done;
  if ((st = join_path(path, sizeof path, outdir, "weights.npy")) != CARL_OK) goto done;
  if ((st = carl_npy_save(path, CARL_F32, 2, shp, weights)) != CARL_OK) goto done;

  rep = cJSON_CreateObject();
  cJSON_AddStringToObject(rep, "router", carl_router_name(r));
  cJSON *opts = cJSON_AddObjectToObject(rep, "options");
  const carl_opt_t *od[CARL_ROUTER_MAX_OPTS];
  const int nod = carl_router_options(carl_router_name(r), od, CARL_ROUTER_MAX_OPTS);
  for (int i = 0; i < nod; i++) cJSON_AddNumberToObject(opts, od[i]->name, carl_router_get(r, od[i]->name));
  cJSON_AddNumberToObject(rep, "step", (double)step);
  cJSON_AddNumberToObject(rep, "T", (double)T);
  cJSON_AddNumberToObject(rep, "E", E);
  cJSON_AddNumberToObject(rep, "k", k);
  cJSON_AddStringToObject(rep, "topology", topo->name);
  cJSON_AddNumberToObject(rep, "devices", topo->devices);
  cJSON_AddNumberToObject(rep, "nodes", topo->nodes);
  cJSON *load = cJSON_AddObjectToObject(rep, "load");
  cJSON_AddItemToObject(load, "expert", json_array_d(eload, E));
  cJSON_AddItemToObject(load, "device", json_array_d(dload, nd));
  cJSON_AddItemToObject(load, "node", json_array_d(nload, nn));
  cJSON *skew = cJSON_AddObjectToObject(rep, "skew");
  cJSON_AddItemToObject(skew, "expert", json_skew(eload, E));
  cJSON_AddItemToObject(skew, "device", json_skew(dload, nd));
  cJSON_AddItemToObject(skew, "node", json_skew(nload, nn));
  cJSON_AddNumberToObject(rep, "capacity", (double)out.capacity);
  cJSON_AddNumberToObject(rep, "dropped", (double)out.dropped);
  cJSON_AddNumberToObject(rep, "drop_rate", m.drop_rate);
  cJSON *sel = cJSON_AddObjectToObject(rep, "selectivity");
  cJSON_AddNumberToObject(sel, "retained_mass", rho);
  cJSON_AddNumberToObject(sel, "jaccard_topk", jac);
  cJSON_AddNumberToObject(sel, "token_entropy", tok_ent);
  cJSON_AddNumberToObject(sel, "load_entropy", load_ent);
  cJSON *loss = cJSON_AddObjectToObject(rep, "losses");
  cJSON_AddNumberToObject(loss, "aux", aux);
  cJSON_AddNumberToObject(loss, "z", z);
  cJSON *rl = cJSON_AddObjectToObject(loss, "router");
  for (int i = 0; i < out.nloss; i++) cJSON_AddNumberToObject(rl, out.loss[i].name, out.loss[i].value);
  cJSON_AddNumberToObject(rl, "total", out.loss_total);
  cJSON *com = cJSON_AddObjectToObject(rep, "communication");
  cJSON_AddStringToObject(com, "mode", a->mode);
  cJSON_AddNumberToObject(com, "token_bytes", (double)token_bytes);
  cJSON *by = cJSON_AddObjectToObject(com, "bytes");
  for (int c = 0; c < CARL_NLINK; c++) cJSON_AddNumberToObject(by, carl_link_name(c), cost->bytes[c]);
  cJSON_AddNumberToObject(com, "inter_fraction", cost->inter_fraction);
  cJSON_AddNumberToObject(com, "a2a_time_s", cost->a2a_s);
  cJSON_AddNumberToObject(com, "copies", (double)cost->copies);
  cJSON *dev = cJSON_AddArrayToObject(com, "devices");
  for (int d = 0; d < topo->devices; d++) {
    cJSON *o = cJSON_CreateObject();
    cJSON *sb = cJSON_AddObjectToObject(o, "send_bytes"), *rb = cJSON_AddObjectToObject(o, "recv_bytes");
    cJSON *sm = cJSON_AddObjectToObject(o, "send_msgs"), *rm = cJSON_AddObjectToObject(o, "recv_msgs");
    for (int c = 0; c < CARL_NLINK; c++) {
      cJSON_AddNumberToObject(sb, carl_link_name(c), cost->send_bytes[d * CARL_NLINK + c]);
      cJSON_AddNumberToObject(rb, carl_link_name(c), cost->recv_bytes[d * CARL_NLINK + c]);
      cJSON_AddNumberToObject(sm, carl_link_name(c), (double)cost->send_msgs[d * CARL_NLINK + c]);
      cJSON_AddNumberToObject(rm, carl_link_name(c), (double)cost->recv_msgs[d * CARL_NLINK + c]);
    }
    cJSON_AddItemToArray(dev, o);
  }
  cJSON *tm = cJSON_AddArrayToObject(com, "traffic_matrix");
  for (int d = 0; d < topo->devices; d++)
    cJSON_AddItemToArray(tm, json_array_d(cost->traffic + (size_t)d * topo->devices, topo->devices));
  char *txt = cJSON_Print(rep);
  if (!txt) {
    st = carl_fail(CARL_ERR_NOMEM, "report: out of memory");
    goto done;
  }
  st = join_path(path, sizeof path, outdir, "report.json");
  if (!st) st = carl_write_file_atomic(path, txt, strlen(txt));
  cJSON_free(txt);
  if (st) goto done;

  carl_skew_t se, sd, sn;
  carl_skew(eload, E, &se);
  carl_skew(dload, nd, &sd);
  carl_skew(nload, nn, &sn);
  *sum = (step_summary_t){se.maxvio, sd.maxvio, sn.maxvio, m.drop_rate, rho, jac,
                          cost->bytes[CARL_LINK_INTER] + cost->bytes[CARL_LINK_RACK], cost->bytes[CARL_LINK_INTRA],
                          cost->inter_fraction, cost->a2a_s, out.loss_total};
done:
  cJSON_Delete(rep);
  free(experts);
  free(weights);
  free(dlogits);
  free(eload);
  free(dload);
  free(nload);
  return st;
}

static void print_summary_header(FILE *f) {
  fprintf(f, "| step | router | expert MaxVio | device MaxVio | node MaxVio | drop | retained | Jaccard | inter-node MB | intra-node MB | inter frac | a2a ms |\n");
  fprintf(f, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
}

static void print_summary_row(FILE *f, int64_t step, const char *router, const step_summary_t *s) {
  fprintf(f, "| %lld | %s | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.3f | %.3f | %.4f | %.4f |\n", (long long)step,
          router, s->expert_maxvio, s->device_maxvio, s->node_maxvio, s->drop_rate, s->rho, s->jaccard,
          s->inter_bytes / 1e6, s->intra_bytes / 1e6, s->inter_fraction, s->a2a_s * 1e3);
}

int carl_cmd_route(int argc, char **argv) {
  static char keybuf[CARL_ROUTER_MAX_OPTS][64];
  route_args_t a;
  int rc = parse_args(argc, argv, &a, keybuf);
  if (rc) return rc < 0 ? 0 : rc;

  carl_topo_t topo;
  carl_placement_t pl = {0};
  carl_router_t *r = NULL;
  carl_step_t *cs = NULL;
  step_inputs_t in = {0};
  carl_status st = CARL_OK;
  FILE *csv = NULL;
  char *csv_text = NULL;
  size_t csv_len = 0;
  if (a.demo) {
    st = make_demo(&topo, &in);
  } else {
    st = carl_topo_load(a.topology, &topo);
  }
  if (st) return carl_cli_error("route", st);

  /* the first step's logits fix E; the trace's other steps must agree */
  char lp[4096], sp[4096], tp[4096];
  int nsteps = 1;
  if (a.trace) {
    nsteps = 0;
    for (;;) {
      snprintf(lp, sizeof lp, "%s/logits_%05d.npy", a.trace, nsteps);
      if (!file_exists(lp) || (a.steps > 0 && nsteps >= a.steps)) break;
      nsteps++;
    }
    if (nsteps == 0) {
      fprintf(stderr, "carl route: %s holds no logits_00000.npy (a trace is logits_00000.npy, logits_00001.npy, ...)\n",
              a.trace);
      return 1;
    }
    if (a.steps > 0 && nsteps < a.steps) {
      fprintf(stderr, "carl route: --steps %d but %s holds only %d steps\n", a.steps, a.trace, nsteps);
      return 1;
    }
  }

  const char *outdir = a.out ? a.out : "out/route-demo";
  if ((st = carl_router_create(a.router, a.nset, a.keys, a.vals, &r)) != CARL_OK) return carl_cli_error("route", st);
  if (a.state_in && (st = carl_router_load(r, a.state_in)) != CARL_OK) {
    carl_router_free(r);
    return carl_cli_error("route", carl_errctx(st, "--state"));
  }
  /* every output goes into a work directory inside outdir, moved in once all of them are written:
   * an error leaves the outputs of before, never a part of this run's */
  char work[CARL_FS_PATH_MAX] = "";
  if ((st = carl_fs_work_begin(outdir, work, sizeof work)) != CARL_OK) {
    carl_router_free(r);
    return carl_cli_error("route", st);
  }

  int E = -1;
  step_summary_t total = {0};
  int is_tty = 0;
  if (a.trace) {
    /* summary.csv is collected in memory and written whole at the end */
    csv = open_memstream(&csv_text, &csv_len);
    if (!csv) {
      st = carl_fail(CARL_ERR_NOMEM, "summary.csv: out of memory");
      goto fail;
    }
    fprintf(csv, "step,expert_maxvio,device_maxvio,node_maxvio,drop_rate,retained_mass,jaccard,inter_bytes,"
                 "intra_bytes,inter_fraction,a2a_s,router_loss\n");
  }
  (void)is_tty;
  print_summary_header(stdout);
  for (int step = 0; step < nsteps; step++) {
    char sd[CARL_FS_PATH_MAX + 16];
    const char *stepdir = work;
    if (a.trace) {
      snprintf(lp, sizeof lp, "%s/logits_%05d.npy", a.trace, step);
      snprintf(sp, sizeof sp, "%s/source_%05d.npy", a.trace, step);
      snprintf(tp, sizeof tp, "%s/tokens_%05d.npy", a.trace, step);
      st = load_step(lp, file_exists(sp) ? sp : NULL, file_exists(tp) ? tp : NULL, NULL, &topo, &in);
      snprintf(sd, sizeof sd, "%s/step_%05d", work, step);
      stepdir = sd;
      if (!st) st = carl_fs_mkdir_p(sd);
    } else if (!a.demo) {
      st = load_step(a.logits, a.source, a.tokens, a.features, &topo, &in);
    }
    if (st) goto fail;
    int Es = (int)in.logits.shape[1];
    if (E < 0) {
      E = Es;
      if (a.placement)
        st = carl_placement_load(a.placement, &topo, E, &pl);
      else
        st = carl_placement_contiguous(&pl, E, topo.devices);
      if (st) goto fail;
      const int k = (int)carl_router_get(r, "k");
      if (k < 1 || k > E) {
        st = carl_fail(CARL_ERR_INVALID, "k = %d must be in 1..E = %d", k, E);
        goto fail;
      }
      carl_step_opts_t so;
      carl_step_opts_default(&so);
      so.topo = &topo;
      so.layers = 1;
      so.E = E;
      so.k = k;
      so.routers = &r;
      so.place = &pl;
      so.mode = strcmp(a.mode, "hier") ? CARL_PLAN_FLAT : CARL_PLAN_HIER;
      so.token_bytes = (size_t)a.hidden * (size_t)a.elem_bytes;
      if ((st = carl_step_create(&so, &cs)) != CARL_OK) goto fail;
    } else if (Es != E) {
      st = carl_fail(CARL_ERR_SHAPE, "%s: %d experts, but step 0 had %d", lp, Es, E);
      goto fail;
    }
    step_summary_t s = {0};
    st = route_step(r, cs, &a, &topo, &in, step, stepdir, &s);
    if (st) {
      if (a.trace) carl_errctx(st, "step %d", step);
      goto fail;
    }
    print_summary_row(stdout, step, a.router, &s);
    if (csv)
      fprintf(csv, "%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.0f,%.0f,%.6f,%.9f,%.9g\n", step, s.expert_maxvio,
              s.device_maxvio, s.node_maxvio, s.drop_rate, s.rho, s.jaccard, s.inter_bytes, s.intra_bytes,
              s.inter_fraction, s.a2a_s, s.loss_total);
    double *tv = &total.expert_maxvio, *sv = &s.expert_maxvio;
    for (size_t i = 0; i < sizeof total / sizeof(double); i++) tv[i] += sv[i] / nsteps;
    step_inputs_free(&in);
  }
  char rp[4096];
  if (csv) {
    int bad = fclose(csv) != 0;
    csv = NULL;
    if (bad || !csv_text) {
      st = carl_fail(CARL_ERR_NOMEM, "summary.csv: out of memory");
      goto fail;
    }
    if ((st = join_path(rp, sizeof rp, work, "summary.csv")) != CARL_OK) goto fail;
    if ((st = carl_write_file_atomic(rp, csv_text, csv_len)) != CARL_OK) goto fail;
  }
  if (a.trace) print_summary_row(stdout, -1, "mean", &total);
  if (a.state_out || (a.trace && carl_router_has_state(r))) {
    if ((st = join_path(rp, sizeof rp, work, "state.bin")) != CARL_OK) goto fail;
    if ((st = carl_router_save(r, a.state_out ? a.state_out : rp)) != CARL_OK) {
      if (a.state_out) carl_errctx(st, "--save-state");
      goto fail;
    }
  }
  if ((st = carl_fs_work_commit(work, outdir)) != CARL_OK) goto fail;
  work[0] = '\0';
  fprintf(stderr, "carl route: wrote %s/%s\n", outdir, a.trace ? "step_*/{experts,weights}.npy, report.json, summary.csv"
                                                                : "experts.npy, weights.npy, report.json");
  goto out;
fail:
  if (work[0]) {
    carl_fs_errmsg_replace(st, work, outdir); /* errors name the output directory */
    carl_fs_remove_tree(work);
  }
  rc = carl_cli_error("route", st);
out:
  if (csv) fclose(csv);
  free(csv_text);
  step_inputs_free(&in);
  carl_step_free(cs);
  carl_router_free(r);
  carl_placement_free(&pl);
  return rc;
}
