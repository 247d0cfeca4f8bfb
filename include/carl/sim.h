/* carl/sim.h: the routing simulator (ALGORITHMS.md sections 3 and 5).
 *
 * Usage (one study from a JSON config, as `carl sim --config FILE` does):
 *   carl_sim_config_t cfg;
 *   CARL_TRY(carl_sim_config_load("configs/experiments/main.json", &cfg)); // all checks happen here
 *   carl_sim_result_t res;
 *   CARL_TRY(carl_sim_run(&cfg, progress_fn, NULL, &res));  // grid: router x topology x scenario x seed
 *   CARL_TRY(carl_sim_write_reports(&cfg, &res, "results/main"));  // CSV, Markdown, gnuplot scripts
 *   carl_sim_result_free(&res);
 *   carl_sim_config_free(&cfg);
 *
 * Lower level (used by the grid and by tests):
 *   carl_workload_t w;                                    // synthetic tokens for one scenario
 *   CARL_TRY(carl_workload_init(&w, &wcfg));
 *   carl_workload_tokens(&w, step, T, cluster, src, token_id);          // [T] each
 *   carl_workload_features(&w, step, layer, T, cluster, x);             // x: [T, d]
 *   carl_workload_teacher(&w, step, layer, probs);                      // probs: [clusters, E]
 *   carl_gate_t g; carl_gate_init(&g, d, E, seed, layer);                 // linear router W [d, E]
 *   carl_gate_forward(&g, x, T, z);                                     // z = x W
 *   carl_sim_kl_grad(T, E, z, cluster, probs, dz);                      // dz += d KL(p||softmax z)/dz
 *   carl_gate_sgd(&g, x, T, dz, lr);                                    // W -= lr x^T dz
 *
 * Determinism: every random number comes from carl_rng_* keyed by (seed, stream, index); a run of
 * one grid cell is sequential (single-threaded BLAS), cells run in parallel and are reported in
 * grid order, so the CSV output is byte-identical for any thread count.
 * Ownership: init/free pairs; the config owns its strings and router option arrays; the result
 * owns its rows. Caller storage for every per-step array.
 */
#ifndef CARL_SIM_H
#define CARL_SIM_H

#include "carl/plan.h"
#include "carl/route.h"
#include "carl/steptime.h"
#include "carl/topo.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- scenarios ------------------------------------------------------------------------------- */
typedef enum {
  CARL_SCEN_BALANCED = 0, /* uniform topic popularity, no hotspot */
  CARL_SCEN_ZIPF,         /* Zipf topic popularity only */
  CARL_SCEN_HOT_EXPERT,   /* Zipf + one expert favoured by every topic's teacher */
  CARL_SCEN_HOT_DEVICE,   /* Zipf + the experts of device 0 (contiguous placement) favoured */
  CARL_SCEN_ROTATING,     /* Zipf + a hot device-sized expert group that moves every `period` steps */
  CARL_SCEN_BURST,        /* Zipf + every `period` steps, `burst_len` steps where one topic floods */
  CARL_SCEN_DRIFT,        /* Zipf + teacher affinities rotate from one table to another over the run */
  CARL_SCEN_COUNT
} carl_scenario;

const char *carl_scenario_name(int s); /* "balanced", "zipf", "hot_expert", ... */
/* CARL_ERR_NOT_FOUND (message lists the valid names) for an unknown name. */
carl_status carl_scenario_parse(const char *name, int *out);

/* ---- synthetic workload ---------------------------------------------------------------------- */
typedef struct {
  int scenario;          /* carl_scenario */
  int E;                 /* experts */
  int d;                 /* router input width */
  int D;                 /* devices (token sources; hot_device/rotating groups are E/D experts) */
  int layers;            /* MoE layers (each its own centres and teacher) */
  int clusters;          /* topic clusters */
  double zipf;           /* popularity exponent s: p_c ~ 1/(c+1)^s (ignored by balanced) */
  double noise;          /* feature noise std per dimension (centres have unit variance) */
  double teacher_scale;  /* std of the per-topic teacher logits */
  int seq_len;           /* tokens per sequence; a sequence has one topic */
  double seq_coherence;  /* probability that a token takes its sequence's topic */
  double home_bias;      /* probability that a sequence's topic is one of its device's home topics */
  double hot;            /* hotspot strength: teacher logit boost of the hot experts */
  int period;            /* rotating: steps per position; burst: steps between bursts */
  int burst_len;         /* steps a burst lasts */
  double burst_frac;     /* fraction of tokens drawn from the burst topic */
  int64_t steps;         /* run length (drift completes over it) */
  uint64_t seed;
} carl_workload_cfg_t;

/* Defaults for every field (scenario balanced; E, d, D, layers, steps must still be set). */
void carl_workload_defaults(carl_workload_cfg_t *c);

typedef struct {
  carl_workload_cfg_t cfg;
  float *centers;  /* [layers, clusters, d] topic centres */
  float *teach0;   /* [layers, clusters, E] teacher logits at step 0 */
  float *teach1;   /* [layers, clusters, E] teacher logits at the last step (drift only) */
  double *cdf;     /* [clusters] cumulative topic popularity, last = 1 */
} carl_workload_t;

carl_status carl_workload_init(carl_workload_t *w, const carl_workload_cfg_t *cfg);
void carl_workload_free(carl_workload_t *w);

/* Tokens of one step: topic, source device (token t on device t*D/T) and a vocabulary id
 * (64 ids per topic, for the hash router). Any of the outputs may be NULL. */
void carl_workload_tokens(const carl_workload_t *w, int64_t step, int64_t T, int32_t *cluster /* [T] */,
                          int32_t *src /* [T] */, int32_t *token_id /* [T] */);
/* Router inputs of one layer: x[t] = centre[layer, cluster[t]] + noise * N(0, I). */
void carl_workload_features(const carl_workload_t *w, int64_t step, int layer, int64_t T, const int32_t *cluster,
                            float *x /* [T, d] */);
/* Teacher distribution of every topic at this step and layer: softmax of the (scenario-adjusted)
 * teacher logits. */
void carl_workload_teacher(const carl_workload_t *w, int64_t step, int layer, float *probs /* [clusters, E] */);

/* ---- linear gate trained by SGD -------------------------------------------------------------- */
typedef struct {
  int d, E;
  float *W; /* [d, E] */
} carl_gate_t;

/* W ~ N(0, 0.01^2), keyed by (seed, CARL_STREAM_INIT, layer). */
carl_status carl_gate_init(carl_gate_t *g, int d, int E, uint64_t seed, int layer);
void carl_gate_free(carl_gate_t *g);
/* z = x W (cblas_sgemm). */
void carl_gate_forward(const carl_gate_t *g, const float *x /* [T, d] */, int64_t T, float *z /* [T, E] */);
/* W -= lr * x^T dz (cblas_sgemm). */
void carl_gate_sgd(carl_gate_t *g, const float *x /* [T, d] */, int64_t T, const float *dz /* [T, E] */, float lr);
/* Task term: L = (1/T) sum_t KL(p[cluster[t]] || softmax(z_t)); dz += (softmax(z_t) - p)/T.
 * Returns L. */
double carl_sim_kl_grad(int64_t T, int E, const float *z /* [T, E] */, const int32_t *cluster /* [T] */,
                        const float *probs /* [clusters, E] */, float *dz /* [T, E], accumulated */);

/* ---- experiment config ----------------------------------------------------------------------- */
#define CARL_SIM_MAX_OPTS 32
typedef struct {
  char *label;   /* column name in reports, e.g. "topk+aux" */
  char *name;    /* registry name, e.g. "topk" */
  int nopt;
  char *keys[CARL_SIM_MAX_OPTS];
  double vals[CARL_SIM_MAX_OPTS];
  int refresh_every; /* placement refresh period in steps (0: static placement) */
  int place_algo;    /* carl_place_algo of the refresh and of a replicated initial placement; -1: the
                        step's default (traffic) */
  int replicas;      /* physical experts (slots in all) per layer, >= E and a multiple of each
                        topology's devices; 0: one slot per expert (contiguous start). With replicas
                        the initial placement is place_algo on uniform statistics */
} carl_sim_router_t;

typedef struct {
  char *label;         /* scenario name, or the trace directory's base name */
  int scenario;        /* carl_scenario, or -1 for a trace */
  char *trace_dir;     /* trace: directory with layer_<l>.npy [N, E] (float32), optional src.npy and
                          tokens.npy [N] (int32/int64) */
  int has_tokens;      /* trace: tokens.npy present */
} carl_sim_scen_t;

typedef struct {
  char *name;
  int64_t steps, tokens;    /* steps per run, tokens per step (carl_sim_tokens: per topology) */
  int64_t tokens_per_device;/* > 0: tokens per step = tokens_per_device x the topology's devices */
  int layers, d, E;         /* MoE layers, router width, experts */
  double lr;                /* gate SGD learning rate */
  double task_weight;       /* weight of the task (KL) term against the router's balancing losses */
  double token_bytes;       /* bytes of one hidden vector */
  double expert_bytes;      /* bytes moved when an expert migrates (weights + optimizer state) */
  int plan_mode;            /* carl_plan_mode */
  double place_ema;         /* EMA factor of the traffic statistics for placement refresh */
  int64_t summary_from;     /* summary averages steps >= this */
  int c2r_profile;          /* c2r: steps of profiling (routing as topk) before its table is built */
  int csv_every;            /* per-step CSV: one row every n steps */
  int step_time;            /* 1: the step-time columns are computed (config field "step_time") */
  carl_steptime_opts_t steptime; /* model widths, passes and overlap of the step time */
  carl_workload_cfg_t work; /* workload knobs (scenario, E, d, D, layers, steps, seed set per cell) */
  int nrouter, ntopo, nscen, nseed;
  carl_sim_router_t *routers; /* [nrouter] */
  carl_topo_t *topos;         /* [ntopo] */
  carl_sim_scen_t *scens;     /* [nscen] */
  uint64_t *seeds;            /* [nseed] */
} carl_sim_config_t;

/* Parse and check everything (types, names, router options, topologies, trace shapes) before any
 * work: errors name the field ("routers[2].opts.k: must be a number"). base_dir resolves relative
 * paths (may be NULL). */
/* Longest study name ("name"): A-Z a-z 0-9 . _ -, not starting with '.'. */
#define CARL_SIM_NAME_MAX 64
/* Most runs (routers x topologies x scenarios x seeds) carl sim starts without --force. */
#define CARL_SIM_MAX_RUNS 10000
carl_status carl_sim_config_parse(const char *json, size_t len, const char *base_dir, carl_sim_config_t *cfg);
carl_status carl_sim_config_load(const char *path, carl_sim_config_t *cfg);
/* The default study of `carl sim` with no arguments (runs in well under a minute on 2 cores). */
carl_status carl_sim_config_default(carl_sim_config_t *cfg);
void carl_sim_config_free(carl_sim_config_t *cfg);
/* Tokens per step on topology t: tokens_per_device x its devices when set, else tokens. */
int64_t carl_sim_tokens(const carl_sim_config_t *cfg, int t);
/* A config on the heap, for callers that hold it as an opaque handle (bindings): from the file
 * path, from JSON text (json, len; base_dir as in carl_sim_config_parse), or the default study
 * (path and json NULL). Free with carl_sim_config_destroy. */
carl_status carl_sim_config_create(const char *path, const char *json, size_t len, const char *base_dir,
                                   carl_sim_config_t **out);
void carl_sim_config_destroy(carl_sim_config_t *cfg);
/* The grid of a config as JSON text, NUL-terminated and malloc'ed (free with carl_mem_free): name,
 * steps, tokens, tokens_per_device, layers, d, experts, lr, task_weight, token_bytes,
 * expert_bytes, plan, summary_from, csv_every, step_time, routers [{label, name, opts,
 * refresh_every}], topologies [{name, nodes, devices_per_node, tokens}], scenarios [{label,
 * scenario | trace}], seeds, columns (carl_sim_col_names: the columns of carl_sim_run_t.rows).
 * len (may be NULL) without the NUL. */
carl_status carl_sim_config_describe(const carl_sim_config_t *cfg, char **text, size_t *len);

/* ---- results --------------------------------------------------------------------------------- */
/* Per-step values of a run (layers summed for bytes/time, averaged for the rest). The step-time
 * columns (compute_ms .. step_ms) are NaN unless the config has "step_time". */
enum {
  CARL_SIM_BYTES_INTER = 0, CARL_SIM_BYTES_INTRA, CARL_SIM_INTER_FRAC, CARL_SIM_A2A_MS, CARL_SIM_MIGRATE_MS,
  CARL_SIM_COMM_MS, CARL_SIM_SKEW_EXPERT, CARL_SIM_SKEW_DEVICE, CARL_SIM_SKEW_NODE, CARL_SIM_CV_EXPERT,
  CARL_SIM_DROP_RATE, CARL_SIM_RETAINED, CARL_SIM_JACCARD, CARL_SIM_ENTROPY, CARL_SIM_TASK_KL,
  CARL_SIM_BAL_LOSS, CARL_SIM_COMPUTE_MS, CARL_SIM_COMPUTE_MEAN_MS, CARL_SIM_MOE_MS, CARL_SIM_STEP_MS, CARL_SIM_NCOL
};
extern const char *const carl_sim_col_names[CARL_SIM_NCOL]; /* CSV column names */

typedef struct {
  int router, topo, scen, seed; /* indices into the config */
  int64_t nrow;                 /* steps */
  double *rows;                 /* [nrow, CARL_SIM_NCOL] */
  double summary[CARL_SIM_NCOL];/* mean over steps >= summary_from */
  double wall_s;                /* not written to CSV (not deterministic) */
} carl_sim_run_t;

typedef struct {
  int nrun;
  carl_sim_run_t *runs; /* [nrun] in grid order: router, topology, scenario, seed (seed fastest) */
} carl_sim_result_t;

/* Progress callback: called from one thread at a time after each finished run; run is that run's
 * index in res->runs, complete when the call is made (runs not yet reported may be in progress in
 * other threads: read only the reported ones). */
typedef void (*carl_sim_progress_fn)(void *ctx, int done, int total, int run);

/* One grid cell (router r, topology t, scenario s, seed index i). */
carl_status carl_sim_run_cell(const carl_sim_config_t *cfg, int r, int t, int s, int i, carl_sim_run_t *out);
/* The whole grid, cells in parallel (OpenMP), each cell sequential. */
carl_status carl_sim_run(const carl_sim_config_t *cfg, carl_sim_progress_fn progress, void *ctx,
                         carl_sim_result_t *res);
void carl_sim_result_free(carl_sim_result_t *res);

/* ---- statistics over seeds (docs/sim.md "Statistics") --------------------------------------- */
/* t_{0.975, dof}: the two-sided 95% quantile of Student's t (table for dof <= 30, Cornish-Fisher
 * beyond); NaN for dof < 1. */
double carl_sim_t975(int dof);
/* Mean of x[0..n) and the half-width of its 95% interval, t_{0.975, n-1} s / sqrt(n) with s the
 * sample standard deviation (n - 1 in the denominator); half is NaN for n < 2, both for n < 1. */
void carl_sim_ci95(const double *x, int n, double *mean, double *half);
/* Verdict of a figure where lower is better, mean m1 +- h1 against m2 +- h2: a win or a loss only
 * when the two intervals do not overlap. */
enum { CARL_SIM_UNDECIDED = 0, CARL_SIM_WIN, CARL_SIM_LOSS, CARL_SIM_OVERLAP };
int carl_sim_compare(double m1, double h1, double m2, double h2);

/* ---- reports --------------------------------------------------------------------------------- */
/* Writes dir/steps.csv, dir/summary.csv, dir/summary.md, dir/plots.dat (first seed, gnuplot blocks)
 * and dir/plots.gp (gnuplot script that writes the PNG plots when run with `gnuplot dir/plots.gp`).
 * Creates dir if needed. res may hold a part of the grid (the runs finished so far, in grid order):
 * the figures are then over those runs and summary.md says "partial: N of M runs". */
carl_status carl_sim_write_reports(const carl_sim_config_t *cfg, const carl_sim_result_t *res, const char *dir);
/* Rewrite dir/plots.dat and dir/plots.gp from an existing dir/steps.csv of this config (to redraw). */
carl_status carl_sim_replot(const carl_sim_config_t *cfg, const char *dir);
/* The Markdown comparison table (routers x key metrics, mean over scenarios and seeds, one table per
 * topology) into a malloc'ed string (caller frees). */
carl_status carl_sim_table_md(const carl_sim_config_t *cfg, const carl_sim_result_t *res, char **out);

#ifdef __cplusplus
}
#endif
#endif
