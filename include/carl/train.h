/* carl/train.h: training the MoE transformer on a text corpus, checkpoints, resume, sampling.
 *
 * Usage:
 *   carl_train_config_t cfg;
 *   CARL_TRY(carl_train_config_load("configs/models/small.json", &cfg));  // errors name the field
 *   carl_train_opts_t o = {.out_dir = "out/small", .progress = print_line, .ud = NULL};
 *   carl_train_result_t res;
 *   CARL_TRY(carl_train_run(&cfg, &o, &res));   // metrics.csv + checkpoints in out/small
 *   // later: o.resume = 1 continues from out/small's latest checkpoint, bitwise as if never stopped
 *
 *   carl_model_t *m; carl_train_config_t ck; int64_t step;
 *   CARL_TRY(carl_ckpt_load_model("out/small", &ck, &m, &step));    // for sampling
 *   CARL_TRY(carl_sample_text(m, "In the beginning", 200, 0.8, 1, buf, sizeof buf));
 *
 * Config file (JSON; unknown keys are errors):
 *   {"name": "small",
 *    "model": {"vocab": 256, "max_seq": 128, "d_model": 128, "n_layers": 4, "n_heads": 4,
 *              "d_ff": 128, "n_experts": 16, "top_k": 2, "d_shared": 0, "init_std": 0.02,
 *              "norm_eps": 1e-5, "seed": 1, "router": "topk", "router_opts": {"aux": 0.01}},
 *    "train": {"batch": 16, "seq_len": 128, "steps": 600, "lr": 3e-3, "lr_min": 3e-4,
 *              "warmup": 50, "weight_decay": 0.1, "grad_clip": 1.0, "beta1": 0.9, "beta2": 0.95,
 *              "eval_every": 50, "eval_batches": 8, "ckpt_every": 100, "log_every": 10,
 *              "data_seed": 1, "train_data": "data/kjv.train.txt", "val_data": "data/kjv.val.txt",
 *              "topology": "configs/topologies/h800-2x8.json"}}
 * Every field of "model" and "train" except the sizes has a default (carl_train_config_default).
 * A router option "k" also sets model.top_k (the two must agree).
 * "topology" "" means one device (no simulated dispatch). Relative paths are taken as given
 * (relative to the working directory).
 *
 * Output directory: metrics.csv (one row per logged step, see carl_train_csv_header), and
 * checkpoints ckpt_<step>/ holding model.safetensors (parameters by name, loadable by PyTorch;
 * metadata "config" = the config JSON, "step"), optimizer.safetensors (AdamW moments "m.<name>",
 * "v.<name>" and "adam_t"), router_<layer>.state for stateful routers (carl_router_save), and
 * state.json ({"format": "carl-checkpoint-2", "run_id", "step", "config", "metrics", "crc32c", ...}:
 * crc32c holds the CRC32C of each other file). A checkpoint is written into ckpt_<step>.tmp/, every
 * file fsync'ed, then the directory is renamed; "latest" names the newest one and is itself
 * replaced atomically. The two newest checkpoints of the run (its run_id) are kept; other runs'
 * checkpoints are never pruned. metrics.csv holds whole rows only: a row that cannot be written
 * stops the run with CARL_ERR_IO naming the file, the step and the last good checkpoint.
 *
 * Loading (resume, carl_ckpt_load_model) checks each file's CRC32C (CARL_ERR_PARSE) and every
 * parameter, moment and router-state value for NaN/Inf (CARL_ERR_NUMERIC, naming the tensor and
 * element). Resolving an output directory: its "latest", or, when "latest" is missing or names a
 * missing or incomplete checkpoint, the newest complete ckpt_<step> (with a warning).
 *
 * A fresh run into a directory that holds a run ("latest", a ckpt_<step> or metrics.csv) is refused
 * with CARL_ERR_STATE unless opts.overwrite.
 *
 * Resume: everything a step depends on is in the checkpoint (parameters, AdamW moments and step,
 * router state) or is a function of (seed, step) (data order, router jitter), so a resumed run
 * produces bitwise the same parameters and losses as an uninterrupted one. The checkpoint's model
 * config and router must equal the config given (an error names the first field that differs).
 * metrics.csv keeps the rows before the checkpoint's step and continues from there.
 *
 * Non-finite loss or gradient norm: training stops with CARL_ERR_NUMERIC naming the step; nothing
 * is written after the last good checkpoint, which stays the "latest".
 *
 * Ownership: the config is plain data. carl_train_run borrows its arguments. carl_ckpt_load_model
 * gives a model the caller frees with carl_model_free.
 */
#ifndef CARL_TRAIN_H
#define CARL_TRAIN_H

#include <stdio.h>

#include "carl/model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CARL_PATH_MAX 512

typedef struct {
  char name[64];
  carl_model_config_t model;
  int batch;             /* B sequences per step */
  int seq_len;           /* S tokens per sequence (<= model.max_seq) */
  int64_t steps;         /* total optimizer steps (the schedule's length) */
  double lr, lr_min;     /* cosine from lr to lr_min after warmup */
  int64_t warmup;
  double weight_decay, grad_clip, beta1, beta2, adam_eps;
  int64_t eval_every;    /* validation every n steps and at the end (0: only at the end) */
  int eval_batches;      /* validation batches of B sequences, windows spread over the split */
  int64_t ckpt_every;    /* checkpoint every n steps and at the end (0: only at the end) */
  int64_t log_every;     /* progress line + CSV row every n steps */
  uint64_t data_seed;    /* data order */
  char train_data[CARL_PATH_MAX], val_data[CARL_PATH_MAX], topology[CARL_PATH_MAX];
  int64_t refresh_every; /* placement refresh every n steps (0: static placement) */
  char place[32];        /* placement algorithm of the refresh and of the initial replicas (carl place) */
  int dispatch_hier;     /* train.dispatch: "flat" (0, the default) or "hier" (1): one copy per
                            destination node, forwarded inside the node (carl/plan.h) */
  int replicas;          /* physical experts in all (slots over every device, >= E, a multiple of D);
                            0: ceil(E / D) per device. Sets model.n_slots. */
} carl_train_config_t;

/* Defaults for everything (model from carl_model_config_default). */
void carl_train_config_default(carl_train_config_t *c);
/* Parse and check (sizes consistent, router known with valid options); `what` names the source. */
carl_status carl_train_config_parse(const char *json, size_t len, const char *what, carl_train_config_t *c);
carl_status carl_train_config_load(const char *path, carl_train_config_t *c);
/* The config as JSON text that carl_train_config_parse reads back to the same config (caller frees). */
char *carl_train_config_to_json(const carl_train_config_t *c);
/* Set the router (keeps options only when the name is unchanged) or one router option. */
carl_status carl_train_config_set_router(carl_train_config_t *c, const char *name);
/* 0 when the model parts (sizes, seed, router and its options) are equal; otherwise 1 and the first
 * differing field's name and both values in `why`. */
int carl_train_config_model_diff(const carl_train_config_t *a, const carl_train_config_t *b, char *why, size_t cap);

/* One logged step (and validation when has_val). */
typedef struct {
  int64_t step;            /* steps done (1-based after the step) */
  int64_t steps;           /* of the run */
  double loss, ce, router_loss; /* training: total, cross-entropy (nats/byte), router losses; mean since last log */
  int has_val;
  double val_ce, val_bpb;  /* validation cross-entropy (nats/byte) and bits per byte */
  double lr, grad_norm;
  double tokens_per_s;     /* since the last logged step (wall clock) */
  double skew_expert, skew_device, skew_node; /* max/mean load, mean over layers, this step */
  double inter_bytes, intra_bytes; /* simulated dispatch+combine bytes of this step, summed over layers */
  double inter_bytes_total;        /* since step 0 (carried across resume) */
  double inter_fraction, a2a_ms;   /* this step: inter-node share of moved bytes, all-to-all time (sum over layers) */
  double drop_rate;        /* dropped (token, slot) pairs / all, this step */
  double elapsed_s;        /* wall clock of this process's run */
} carl_train_metrics_t;

/* CSV header line (no newline) and one row for m. */
const char *carl_train_csv_header(void);
void carl_train_csv_row(FILE *f, const carl_train_metrics_t *m);

typedef struct {
  const char *out_dir;     /* required: created when missing */
  int resume;              /* continue from out_dir's latest checkpoint (error when there is none) */
  int overwrite;           /* a fresh run into a directory that holds another run (else refused) */
  const char *dump_trace;  /* directory for router logits per layer (.npy) or NULL */
  int64_t dump_every;      /* trace: record every n-th step (0: log_every) */
  int64_t stop_after;      /* stop (with a checkpoint) once this many steps are done; 0: run all */
  void (*progress)(const carl_train_metrics_t *m, void *ud); /* called per log row; may be NULL */
  void *ud;
  int expert_parallel;     /* N > 0: this process is one of N MPI ranks, one per device of the
                              topology (the mpi executor, docs/mpi.md); rank 0 writes metrics,
                              checkpoints and the trace and calls progress. 0: one process */
  const char *device;      /* NULL or "cpu": the CPU; "cuda" or "cuda:N": the whole model on GPU N in
                              float32 (carl_model_to_device; one process; every step's routing
                              decisions stay on the host, docs/gpu.md); the planned device memory is
                              checked against the free memory before the first step */
} carl_train_opts_t;

typedef struct {
  int64_t step;            /* steps done */
  double final_loss;       /* last logged training loss */
  double val_ce, val_bpb;  /* last validation */
  double tokens_per_s;     /* training tokens / training wall time of this process */
  double inter_bytes_total;
  double skew_expert_mean, skew_device_mean; /* mean over logged steps of this process */
  char last_ckpt[CARL_PATH_MAX + 64];
  int rank, ranks;         /* this process and the run's processes (0 and 1 without expert_parallel) */
  int failed_together;     /* on error: 1 when every rank stopped at the same input check (nothing
                              to abort), 0 when the others may wait for this one */
} carl_train_result_t;

carl_status carl_train_run(const carl_train_config_t *cfg, const carl_train_opts_t *o, carl_train_result_t *res);

/* ---- checkpoints -------------------------------------------------------------------------------- */
/* path: a checkpoint directory, or an output directory (its "latest" is used). Writes the resolved
 * checkpoint directory into dir. */
carl_status carl_ckpt_resolve(const char *path, char *dir, size_t cap);
/* Read the config and step from a checkpoint's state.json. */
carl_status carl_ckpt_read_config(const char *ckpt_dir, carl_train_config_t *cfg, int64_t *step);
/* Create the model of a checkpoint and load its parameters (for sampling and evaluation). */
carl_status carl_ckpt_load_model(const char *path, carl_train_config_t *cfg, carl_model_t **m, int64_t *step);

/* ---- sampling ------------------------------------------------------------------------------------- */
/* Continue `prompt` by n bytes: each byte drawn from softmax(logits / temperature) over the last
 * max_seq bytes (temperature <= 0: argmax), uniform numbers from carl_rng(seed, CARL_STREAM_SAMPLE, i).
 * out receives prompt + continuation, NUL-terminated (truncated to cap - 1). */
carl_status carl_sample_text(carl_model_t *m, const char *prompt, int n, double temperature, uint64_t seed,
                             char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
