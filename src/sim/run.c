/* The simulated training loop of one grid cell, and the grid (ALGORITHMS.md section 5).
 *
 * Per step and layer: tokens (topic, source device) -> router inputs x -> logits z = x W ->
 * carl_step_route (the router's selection, gates and balancing-loss gradients in dz; the plan and
 * its cost) -> metrics -> carl_step_observe (router update from the global loads, placement
 * statistics) -> dz += task gradient (KL to the teacher) -> W -= lr x^T dz. carl_step_end
 * recomputes the placement every refresh_every steps and the migration is charged to that step. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "carl/array.h"
#include "carl/place.h"
#include "carl/sim.h"
#include "carl/step.h"

const char *const carl_sim_col_names[CARL_SIM_NCOL] = {
    "bytes_inter", "bytes_intra", "inter_frac", "a2a_ms",    "migrate_ms", "comm_ms",  "skew_expert", "skew_device",
    "skew_node",   "cv_expert",   "drop_rate",  "retained", "jaccard",    "entropy", "task_kl",     "bal_loss",
    "compute_ms",  "compute_mean_ms", "moe_ms", "step_ms"};

typedef struct {
  int64_t N;        /* tokens in the trace */
  float **logits;   /* [layers][N, E] */
  int32_t *src;     /* [N] or NULL */
  int32_t *tok;     /* [N] token ids or NULL */
} trace_t;

static void trace_free(trace_t *tr, int layers) {
  if (tr->logits)
    for (int l = 0; l < layers; l++) free(tr->logits[l]);
  free(tr->logits);
  free(tr->src);
  free(tr->tok);
  memset(tr, 0, sizeof *tr);
}

static carl_status trace_load(const char *dir, int layers, int E, trace_t *tr) {
  memset(tr, 0, sizeof *tr);
  tr->logits = calloc((size_t)layers, sizeof(float *));
  if (!tr->logits) return carl_fail(CARL_ERR_NOMEM, "trace: out of memory");
  for (int l = 0; l < layers; l++) {
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/layer_%d.npy", dir, l) >= sizeof path)
      return carl_fail(CARL_ERR_INVALID, "path too long: %s", dir);
    carl_array_t a;
    CARL_TRY(carl_npy_read(path, &a));
    if (a.dtype != CARL_F32 || a.ndim != 2 || a.shape[1] != E || (l > 0 && a.shape[0] != tr->N)) {
      carl_array_free(&a);
      return carl_fail(CARL_ERR_SHAPE, "%s: changed since the config was checked", path);
    }
    tr->N = a.shape[0];
    tr->logits[l] = a.data;
  }
  /* optional per-token int arrays: src.npy (devices), tokens.npy (vocabulary ids, for hash) */
  static const char *const names[2] = {"src.npy", "tokens.npy"};
  int32_t **dst[2] = {&tr->src, &tr->tok};
  for (int i = 0; i < 2; i++) {
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= sizeof path)
      return carl_fail(CARL_ERR_INVALID, "path too long: %s", dir);
    FILE *f = fopen(path, "rb");
    if (!f) continue;
    fclose(f);
    carl_array_t a;
    CARL_TRY(carl_npy_read(path, &a));
    *dst[i] = malloc((size_t)tr->N * sizeof(int32_t));
    if (!*dst[i] || a.ndim != 1 || a.shape[0] != tr->N || (a.dtype != CARL_I32 && a.dtype != CARL_I64)) {
      carl_array_free(&a);
      return carl_fail(CARL_ERR_SHAPE, "%s: changed since the config was checked", path);
    }
    for (int64_t t = 0; t < tr->N; t++)
      (*dst[i])[t] = a.dtype == CARL_I32 ? ((int32_t *)a.data)[t] : (int32_t)((int64_t *)a.data)[t];
    carl_array_free(&a);
  }
  return CARL_OK;
}

/* The start of a router with replicas: R physical experts placed by algo on uniform statistics
 * (every expert equally loaded, from every node alike), as carl train does with train.replicas;
 * its refreshes keep these slots. */
static carl_status replicated_start(const carl_topo_t *t, int E, int R, carl_place_algo algo, carl_placement_t *pl) {
  const int N = t->nodes;
  double *u = malloc(sizeof(double) * (size_t)E * (size_t)(1 + N + E));
  if (!u) return carl_fail(CARL_ERR_NOMEM, "sim: out of memory");
  for (int64_t i = 0; i < (int64_t)E * (1 + N + E); i++) u[i] = 1.0;
  carl_place_input_t in = {.E = E, .N = N, .load = u, .traffic = u + E, .coact = u + E + (int64_t)N * E};
  carl_place_opts_t po;
  carl_place_opts_default(&po);
  po.algo = algo;
  po.replicas = R;
  carl_status st = carl_place_compute(t, &in, &po, pl);
  free(u);
  return st == CARL_OK ? CARL_OK : carl_errctx(st, "initial placement with replicas = %d", R);
}

carl_status carl_sim_run_cell(const carl_sim_config_t *cfg, int ri, int ti, int si, int seedi, carl_sim_run_t *out) {
  memset(out, 0, sizeof *out);
  out->router = ri;
  out->topo = ti;
  out->scen = si;
  out->seed = seedi;
  const carl_sim_router_t *rc = &cfg->routers[ri];
  const carl_topo_t *topo = &cfg->topos[ti];
  const carl_sim_scen_t *sc = &cfg->scens[si];
  const uint64_t seed = cfg->seeds[seedi];
  const int L = cfg->layers, E = cfg->E, d = cfg->d, D = topo->devices;
  const int64_t T = carl_sim_tokens(cfg, ti), steps = cfg->steps;
  const double t0 = carl_now();

  carl_status st = CARL_OK;
  carl_router_t **rt = calloc((size_t)L, sizeof *rt);
  carl_gate_t *gate = calloc((size_t)L, sizeof *gate);
  carl_step_t *stp = NULL;
  carl_placement_t start;
  int have_start = 0;
  carl_workload_t wl;
  memset(&wl, 0, sizeof wl);
  trace_t tr;
  memset(&tr, 0, sizeof tr);
  int32_t *cluster = NULL, *src = NULL, *tok = NULL, *experts = NULL;
  float *x = NULL, *z = NULL, *dz = NULL, *weights = NULL, *probs = NULL;
  out->nrow = steps;
  out->rows = calloc((size_t)steps * CARL_SIM_NCOL, sizeof(double));
  if (!rt || !gate || !out->rows) {
    st = carl_fail(CARL_ERR_NOMEM, "sim: out of memory");
    goto done;
  }
  int k = 1, score = 0;
  /* c2r needs a collaboration table: it routes as topk while profiling its own decisions for the
   * first c2r_profile steps, then builds the table from the counts (save + load of its state). */
  const char *keys[CARL_SIM_MAX_OPTS + 1];
  double vals[CARL_SIM_MAX_OPTS + 1];
  int nopt = rc->nopt, c2r_profile = 0;
  for (int i = 0; i < nopt; i++) keys[i] = rc->keys[i], vals[i] = rc->vals[i];
  if (!strcmp(rc->name, "c2r")) {
    int given = 0;
    for (int i = 0; i < nopt; i++) given |= !strcmp(keys[i], "profile");
    if (!given) {
      keys[nopt] = "profile";
      vals[nopt++] = 1;
      c2r_profile = cfg->c2r_profile;
    }
  }
  for (int l = 0; l < L; l++) {
    st = carl_router_create(rc->name, nopt, keys, vals, &rt[l]);
    if (st != CARL_OK) goto done;
    double kv = carl_router_get(rt[l], "k");
    if (isfinite(kv) && kv >= 1) k = (int)kv;
    double sv = carl_router_get(rt[l], "score");
    if (isfinite(sv)) score = (int)sv;
    if (sc->scenario >= 0) {
      st = carl_gate_init(&gate[l], d, E, seed, l);
      if (st != CARL_OK) goto done;
    }
  }
  if (k > E) {
    st = carl_fail(CARL_ERR_INVALID, "router '%s': k = %d exceeds experts = %d", rc->label, k, E);
    goto done;
  }
  if (sc->scenario >= 0) {
    carl_workload_cfg_t wc = cfg->work;
    wc.scenario = sc->scenario;
    wc.D = D;
    wc.seed = seed;
    st = carl_workload_init(&wl, &wc);
  } else {
    st = trace_load(sc->trace_dir, L, E, &tr);
  }
  if (st != CARL_OK) goto done;
  carl_step_opts_t so;
  carl_step_opts_default(&so);
  so.topo = topo;
  so.layers = L;
  so.E = E;
  so.k = k;
  so.routers = rt;
  so.mode = (carl_plan_mode)cfg->plan_mode;
  so.token_bytes = (size_t)cfg->token_bytes;
  so.refresh_every = rc->refresh_every;
  so.stats_decay = cfg->place_ema;
  so.expert_bytes = cfg->expert_bytes;
  if (rc->place_algo >= 0) so.place_opts.algo = (carl_place_algo)rc->place_algo;
  if (rc->replicas > 0) {
    if ((st = replicated_start(topo, E, rc->replicas, so.place_opts.algo, &start)) != CARL_OK) goto done;
    have_start = 1;
    so.place = &start;
  }
  if ((st = carl_step_create(&so, &stp)) != CARL_OK) goto done;
  const int C = cfg->work.clusters;
  cluster = malloc((size_t)T * sizeof(int32_t));
  src = malloc((size_t)T * sizeof(int32_t));
  tok = malloc((size_t)T * sizeof(int32_t));
  experts = malloc((size_t)T * k * sizeof(int32_t));
  weights = malloc((size_t)T * k * sizeof(float));
  x = malloc((size_t)T * d * sizeof(float));
  z = malloc((size_t)T * E * sizeof(float));
  dz = malloc((size_t)T * E * sizeof(float));
  probs = malloc((size_t)C * E * sizeof(float));
  if (!cluster || !src || !tok || !experts || !weights || !x || !z || !dz || !probs) {
    st = carl_fail(CARL_ERR_NOMEM, "sim: out of memory (T = %lld, E = %d)", (long long)T, E);
    goto done;
  }
  const int64_t nwin = sc->scenario >= 0 ? 0 : tr.N / T;

  for (int64_t step = 0; step < steps; step++) {
    double *row = out->rows + (size_t)step * CARL_SIM_NCOL;
    const int32_t *srcp = src;
    if (sc->scenario >= 0) {
      carl_workload_tokens(&wl, step, T, cluster, src, tok);
    } else {
      int64_t off = (step % nwin) * T;
      if (tr.tok) memcpy(tok, tr.tok + off, (size_t)T * sizeof(int32_t));
      if (tr.src)
        memcpy(src, tr.src + off, (size_t)T * sizeof(int32_t));
      else
        for (int64_t t = 0; t < T; t++) src[t] = (int32_t)(t * D / T);
      srcp = src;
    }
    double inter = 0, intra = 0, a2a = 0, kl = 0, bal = 0, stt[3] = {0, 0, 0};
    carl_step_metrics_t msum;
    memset(&msum, 0, sizeof msum);
    for (int l = 0; l < L; l++) {
      if (sc->scenario >= 0) {
        carl_workload_features(&wl, step, l, T, cluster, x);
        carl_gate_forward(&gate[l], x, T, z);
        carl_workload_teacher(&wl, step, l, probs);
      } else {
        memcpy(z, tr.logits[l] + (size_t)(step % nwin) * T * E, (size_t)T * E * sizeof(float));
      }
      memset(dz, 0, (size_t)T * E * sizeof(float));
      carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = srcp, .token_ids = (sc->scenario >= 0 || tr.tok) ? tok : NULL,
                            .x = sc->scenario >= 0 ? x : NULL, .d = sc->scenario >= 0 ? d : 0,
                            .step = step, .seed = seed + 7919u * (uint64_t)l};
      carl_route_out_t ro = {.experts = experts, .weights = weights, .dlogits = dz};
      if ((st = carl_step_route(stp, l, &in, &ro)) != CARL_OK) goto done;
      carl_step_metrics_t m;
      st = carl_step_metrics(topo, carl_step_placement(stp, l), T, E, k, score, z, experts, &m, NULL, NULL, NULL);
      if (st != CARL_OK) goto done;
      if ((st = carl_step_observe(stp, l, &in, &ro)) != CARL_OK) goto done;
      const carl_cost_t *cost = carl_step_cost(stp, l);
      if (cfg->step_time) { /* step time of the layer (docs/cost-model.md): compute, mean compute, layer */
        carl_steptime_t stl;
        st = carl_steptime_decision(topo, carl_step_placement(stp, l), experts, srcp, T, k, cost, &cfg->steptime, &stl);
        if (st != CARL_OK) goto done;
        stt[0] += stl.compute_s * 1e3, stt[1] += stl.compute_mean_s * 1e3, stt[2] += stl.layer_s * 1e3;
      }
      inter += cost->bytes[CARL_LINK_INTER] + cost->bytes[CARL_LINK_RACK];
      intra += cost->bytes[CARL_LINK_INTRA];
      a2a += cost->a2a_s * 1e3;
      bal += ro.loss_total;
      msum.skew_expert += m.skew_expert;
      msum.skew_device += m.skew_device;
      msum.skew_node += m.skew_node;
      msum.cv_expert += m.cv_expert;
      msum.drop_rate += m.drop_rate;
      msum.retained += m.retained;
      msum.jaccard += m.jaccard;
      msum.entropy += m.entropy;
      if (sc->scenario >= 0) {
        /* task term, then one SGD step on the gate (balancing gradients are already in dz) */
        if (cfg->task_weight != 1.0) {
          /* dz holds the router's loss gradients; add task_weight x the task gradient */
          const float inv = (float)(1.0 / cfg->task_weight);
          for (size_t i = 0; i < (size_t)T * E; i++) dz[i] *= inv;
          kl += carl_sim_kl_grad(T, E, z, cluster, probs, dz);
          for (size_t i = 0; i < (size_t)T * E; i++) dz[i] *= (float)cfg->task_weight;
        } else {
          kl += carl_sim_kl_grad(T, E, z, cluster, probs, dz);
        }
        carl_gate_sgd(&gate[l], x, T, dz, (float)cfg->lr);
      }
    }
    if (c2r_profile > 0 && step + 1 == c2r_profile) {
      const char *tmp = getenv("TMPDIR");
      for (int l = 0; l < L; l++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/carl_sim_c2r_%ld_%d_%d_%d_%d_%d.npy", tmp && tmp[0] ? tmp : "/tmp", (long)getpid(),
                 ri, ti, si, seedi, l);
        st = carl_router_save(rt[l], path);
        if (st == CARL_OK) st = carl_router_load(rt[l], path);
        remove(path);
        if (st != CARL_OK) goto done;
      }
    }
    carl_step_refresh_t rf;
    if ((st = carl_step_end(stp, step, steps, &rf)) != CARL_OK) goto done;
    const double migrate = rf.migrate_s * 1e3;
    const double invL = 1.0 / L;
    row[CARL_SIM_BYTES_INTER] = inter;
    row[CARL_SIM_BYTES_INTRA] = intra;
    row[CARL_SIM_INTER_FRAC] = inter + intra > 0 ? inter / (inter + intra) : 0;
    row[CARL_SIM_A2A_MS] = a2a;
    row[CARL_SIM_MIGRATE_MS] = migrate;
    row[CARL_SIM_COMM_MS] = a2a + migrate;
    row[CARL_SIM_SKEW_EXPERT] = msum.skew_expert * invL;
    row[CARL_SIM_SKEW_DEVICE] = msum.skew_device * invL;
    row[CARL_SIM_SKEW_NODE] = msum.skew_node * invL;
    row[CARL_SIM_CV_EXPERT] = msum.cv_expert * invL;
    row[CARL_SIM_DROP_RATE] = msum.drop_rate * invL;
    row[CARL_SIM_RETAINED] = msum.retained * invL;
    row[CARL_SIM_JACCARD] = msum.jaccard * invL;
    row[CARL_SIM_ENTROPY] = msum.entropy * invL;
    row[CARL_SIM_TASK_KL] = sc->scenario >= 0 ? kl * invL : NAN;
    row[CARL_SIM_BAL_LOSS] = bal * invL;
    row[CARL_SIM_COMPUTE_MS] = cfg->step_time ? stt[0] : NAN;
    row[CARL_SIM_COMPUTE_MEAN_MS] = cfg->step_time ? stt[1] : NAN;
    row[CARL_SIM_MOE_MS] = cfg->step_time ? stt[2] : NAN;
    row[CARL_SIM_STEP_MS] = cfg->step_time ? stt[2] + migrate : NAN;
  }
  /* summary: mean over steps >= summary_from, summed in step order */
  for (int c = 0; c < CARL_SIM_NCOL; c++) {
    double s = 0;
    int64_t n = 0;
    for (int64_t step = cfg->summary_from; step < steps; step++, n++) s += out->rows[(size_t)step * CARL_SIM_NCOL + c];
    out->summary[c] = n ? s / (double)n : 0;
  }

done:
  if (st != CARL_OK) {
    carl_errctx(st, "run %s / %s / %s / seed %llu", rc->label, topo->name, sc->label, (unsigned long long)seed);
    free(out->rows);
    out->rows = NULL;
  }
  for (int l = 0; l < L; l++) {
    if (rt && rt[l]) carl_router_free(rt[l]);
    if (gate) carl_gate_free(&gate[l]);
  }
  carl_step_free(stp);
  if (have_start) carl_placement_free(&start);
  free(rt);
  free(gate);
  carl_workload_free(&wl);
  trace_free(&tr, L);
  free(cluster); free(src); free(tok); free(experts); free(weights);
  free(x); free(z); free(dz); free(probs);
  out->wall_s = carl_now() - t0;
  return st;
}

void carl_sim_result_free(carl_sim_result_t *res) {
  for (int i = 0; i < res->nrun; i++) free(res->runs[i].rows);
  free(res->runs);
  memset(res, 0, sizeof *res);
}

carl_status carl_sim_run(const carl_sim_config_t *cfg, carl_sim_progress_fn progress, void *ctx,
                         carl_sim_result_t *res) {
  memset(res, 0, sizeof *res);
  const int64_t n64 = (int64_t)cfg->nrouter * cfg->ntopo * cfg->nscen * cfg->nseed;
  if (n64 > INT_MAX)
    return carl_fail(CARL_ERR_INVALID, "sim: a grid of %lld runs is more than %d", (long long)n64, INT_MAX);
  const int n = (int)n64;
  res->runs = calloc((size_t)n, sizeof *res->runs);
  if (!res->runs) return carl_fail(CARL_ERR_NOMEM, "sim: out of memory");
  res->nrun = n;
  /* each cell single-threaded (BLAS included); cells in parallel. Results land in grid order. */
  int blas_threads = openblas_get_num_threads();
  openblas_set_num_threads(1);
  carl_status first_err = CARL_OK;
  char errbuf[1024] = "";
  int done = 0;
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < n; i++) {
    int failed;
#pragma omp atomic read
    failed = first_err;
    if (failed) continue;
    int seedi = i % cfg->nseed, rest = i / cfg->nseed;
    int si = rest % cfg->nscen;
    rest /= cfg->nscen;
    int ti = rest % cfg->ntopo, ri = rest / cfg->ntopo;
    carl_status st = carl_sim_run_cell(cfg, ri, ti, si, seedi, &res->runs[i]);
#pragma omp critical(carl_sim_progress)
    {
      if (st != CARL_OK && first_err == CARL_OK) {
        first_err = st;
        snprintf(errbuf, sizeof errbuf, "%s", carl_errmsg());
      }
      done++;
      if (progress && first_err == CARL_OK) progress(ctx, done, n, i);
    }
  }
  openblas_set_num_threads(blas_threads);
  if (first_err != CARL_OK) {
    carl_sim_result_free(res);
    return carl_fail(first_err, "%s", errbuf);
  }
  return CARL_OK;
}
