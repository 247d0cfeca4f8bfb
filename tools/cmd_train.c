/* carl train: train the MoE transformer on the prepared corpus (carl/train.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/exec.h"
#include "carl/route.h"
#include "carl/train.h"
#include "cli.h"

#define DEFAULT_CONFIG "configs/models/small.json"

static void train_usage(FILE *f, const char *router) {
  fprintf(f,
          "usage: carl train [--config FILE] [options]\n\n"
          "Train a Mixture-of-Experts transformer on the CPU (or a GPU: --device cuda) on the prepared text corpus\n"
          "(run scripts/prepare_data.sh first). Writes OUT/metrics.csv and checkpoints OUT/ckpt_<step>/\n"
          "(model.safetensors, optimizer.safetensors, router state, state.json; OUT/latest names the newest).\n\n"
          "options (default in brackets):\n"
          "  --config FILE        model and training config [" DEFAULT_CONFIG "]\n"
          "  --router NAME        router, replacing the config's (its options are then reset) [config's]\n"
          "  --router-opt K=V     set a router option; repeatable [router defaults / config's router_opts]\n"
          "  --topology FILE      simulated cluster for routing and dispatch accounting; 'none' = one device\n"
          "                       [config's train.topology]\n"
          "  --out DIR            output directory [out/<config name>-<router>]\n"
          "  --steps N            total training steps (the schedule's length) [config's train.steps]\n"
          "  --log-every N        progress line and CSV row every N steps [config's]\n"
          "  --eval-every N       validation every N steps (0: only at the end) [config's]\n"
          "  --ckpt-every N       checkpoint every N steps (0: only at the end) [config's]\n"
          "  --seed N             model init and data order seed (sets model.seed and train.data_seed) [config's]\n"
          "  --resume             continue from OUT's latest checkpoint, bitwise as if never stopped (without\n"
          "                       'latest', or when it names an incomplete checkpoint: the newest complete one) [off]\n"
          "  --overwrite          start a new run in an OUT that holds another run (its metrics.csv is replaced,\n"
          "                       its checkpoints are kept and never pruned); without it that is refused [off]\n"
          "  --stop-after N       stop (with a checkpoint) after N steps, e.g. to resume later [run all]\n"
          "  --dump-trace DIR     write router logits per layer (DIR/layer_<l>.npy [N, E] float32), token\n"
          "                       source devices (DIR/src.npy [N] int32) and token ids (DIR/tokens.npy)\n"
          "                       for `carl sim` [off]\n"
          "  --dump-every N       record every N-th step into the trace [log-every]\n"
          "  --refresh-every N    recompute every layer's expert placement every N steps from its routing\n"
          "                       statistics; expert weights and AdamW moments move with their experts\n"
          "                       (0: static placement) [config's train.refresh_every]\n"
          "  --place ALGO         placement algorithm of the refresh and of the initial replicas:\n"
          "                       contiguous, roundrobin, eplb, eplb-nodup, traffic, coactivation, smartmoe\n"
          "                       [config's train.place]\n"
          "  --replicas N         physical experts in all (>= experts, a multiple of the devices; needs a\n"
          "                       topology) [config's train.replicas, 0: ceil(E / D) per device]\n"
          "  --dispatch MODE      flat (one copy per destination device) or hier (one per destination node,\n"
          "                       forwarded inside it) [config's train.dispatch, flat]\n"
          "  --expert-parallel N  run as one of N MPI ranks, one per device of the topology (N = its devices):\n"
          "                       mpirun -np N carl train ... --expert-parallel N; rank 0 writes OUT [off]\n"
          "  --device DEV         cpu, or cuda / cuda:N: the whole model on GPU N in float32 (the routing\n"
          "                       decisions stay on the host, docs/gpu.md) [cpu]\n"
          "  --quiet              no progress lines, only the summary [off]\n"
          "  -h, --help           this help\n\n"
          "routers:");
  for (const char *const *n = carl_router_names(); *n; n++) fprintf(f, " %s", *n);
  fprintf(f, "\n(`carl train --router NAME --help` lists that router's options with their defaults.)\n");
  if (!router) return;
  const carl_opt_t *opts[CARL_ROUTER_MAX_OPTS];
  int no = carl_router_options(router, opts, CARL_ROUTER_MAX_OPTS);
  if (no < 0 || !carl_router_find(router)) {
    fprintf(f, "\nunknown router '%s'\n", router);
    return;
  }
  fprintf(f, "\noptions of router %s (--router-opt K=V; default in brackets):\n", router);
  for (int i = 0; i < no && i < CARL_ROUTER_MAX_OPTS; i++) fprintf(f, "  %-14s %s [%g]\n", opts[i]->name, opts[i]->help, opts[i]->def);
}

static void progress(const carl_train_metrics_t *m, void *ud) {
  (void)ud;
  char val[64] = "";
  if (m->has_val) snprintf(val, sizeof val, " | val %.4f (%.3f bpb)", m->val_ce, m->val_bpb);
  printf("step %6lld/%lld | loss %.4f (ce %.4f)%s | %7.0f tok/s | skew E %.2f D %.2f N %.2f | inter %.2f MB/step "
         "(%.0f%%) | lr %.2e\n",
         (long long)m->step, (long long)m->steps, m->loss, m->ce, val, m->tokens_per_s,
         m->skew_expert, m->skew_device, m->skew_node, m->inter_bytes / 1e6, 100 * m->inter_fraction, m->lr);
  fflush(stdout);
}

static int parse_i64(const char *opt, const char *v, long long lo, long long *out) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || end == v || *end || x < lo) {
    fprintf(stderr, "carl train: %s needs an integer >= %lld, got '%s'\n", opt, lo, v);
    return 0;
  }
  *out = x;
  return 1;
}

int carl_cmd_train(int argc, char **argv) {
  const char *dispatch = NULL, *device = NULL;
  const char *config = DEFAULT_CONFIG, *router = NULL, *topology = NULL, *out = NULL, *trace = NULL, *place = NULL;
  const char *ropt_k[CARL_MODEL_MAX_ROUTER_OPTS];
  double ropt_v[CARL_MODEL_MAX_ROUTER_OPTS];
  int nropt = 0, resume = 0, quiet = 0, overwrite = 0;
  long long steps = -1, expert_parallel = 0, log_every = -1, eval_every = -1, ckpt_every = -1, seed = -1, stop_after = 0, dump_every = 0, refresh_every = -1, replicas = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      train_usage(stdout, router);
      return 0;
    }
    if (!strcmp(a, "--resume")) {
      resume = 1;
      continue;
    }
    if (!strcmp(a, "--quiet")) {
      quiet = 1;
      continue;
    }
    if (!strcmp(a, "--overwrite")) {
      overwrite = 1;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "carl train: %s needs a value (carl train --help)\n", a);
      return 2;
    }
    const char *v = argv[++i];
    if (!strcmp(a, "--config")) config = v;
    else if (!strcmp(a, "--router")) router = v;
    else if (!strcmp(a, "--topology")) topology = v;
    else if (!strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--dump-trace")) trace = v;
    else if (!strcmp(a, "--device")) device = v;
    else if (!strcmp(a, "--router-opt")) {
      const char *eq = strchr(v, '=');
      char *end;
      double val = eq ? strtod(eq + 1, &end) : 0;
      if (!eq || eq == v || end == eq + 1 || *end) {
        fprintf(stderr, "carl train: --router-opt needs KEY=NUMBER, got '%s'\n", v);
        return 2;
      }
      if (nropt == CARL_MODEL_MAX_ROUTER_OPTS) {
        fprintf(stderr, "carl train: at most %d --router-opt\n", CARL_MODEL_MAX_ROUTER_OPTS);
        return 2;
      }
      static char keys[CARL_MODEL_MAX_ROUTER_OPTS][CARL_ROUTER_NAME_MAX];
      if ((size_t)(eq - v) >= sizeof keys[0]) {
        fprintf(stderr, "carl train: --router-opt key too long in '%s'\n", v);
        return 2;
      }
      memcpy(keys[nropt], v, (size_t)(eq - v));
      keys[nropt][eq - v] = '\0';
      ropt_k[nropt] = keys[nropt];
      ropt_v[nropt++] = val;
    } else if (!strcmp(a, "--steps")) {
      if (!parse_i64(a, v, 1, &steps)) return 2;
    } else if (!strcmp(a, "--log-every")) {
      if (!parse_i64(a, v, 1, &log_every)) return 2;
    } else if (!strcmp(a, "--eval-every")) {
      if (!parse_i64(a, v, 0, &eval_every)) return 2;
    } else if (!strcmp(a, "--ckpt-every")) {
      if (!parse_i64(a, v, 0, &ckpt_every)) return 2;
    } else if (!strcmp(a, "--seed")) {
      if (!parse_i64(a, v, 0, &seed)) return 2;
    } else if (!strcmp(a, "--stop-after")) {
      if (!parse_i64(a, v, 1, &stop_after)) return 2;
    } else if (!strcmp(a, "--dump-every")) {
      if (!parse_i64(a, v, 1, &dump_every)) return 2;
    } else if (!strcmp(a, "--refresh-every")) {
      if (!parse_i64(a, v, 0, &refresh_every)) return 2;
    } else if (!strcmp(a, "--replicas")) {
      if (!parse_i64(a, v, 1, &replicas)) return 2;
      if (replicas > CARL_MODEL_MAX_SLOTS) {
        fprintf(stderr, "carl train: --replicas %lld exceeds %d\n", replicas, CARL_MODEL_MAX_SLOTS);
        return 2;
      }
    } else if (!strcmp(a, "--expert-parallel")) {
      if (!parse_i64(a, v, 1, &expert_parallel)) return 2;
      if (expert_parallel > CARL_MODEL_MAX_SLOTS) { /* a rank needs at least one expert slot */
        fprintf(stderr, "carl train: --expert-parallel %lld exceeds %d\n", expert_parallel, CARL_MODEL_MAX_SLOTS);
        return 2;
      }
    } else if (!strcmp(a, "--dispatch")) {
      if (strcmp(v, "flat") && strcmp(v, "hier")) {
        fprintf(stderr, "carl train: --dispatch needs flat or hier, got '%s'\n", v);
        return 2;
      }
      dispatch = v;
    } else if (!strcmp(a, "--place")) {
      place = v;
    } else {
      fprintf(stderr, "carl train: unknown option '%s' (carl train --help)\n", a);
      return 2;
    }
  }

  carl_train_config_t cfg;
  carl_status st = carl_train_config_load(config, &cfg);
  if (st) return carl_cli_error("train", st);
  if (router && (st = carl_train_config_set_router(&cfg, router))) return carl_cli_error("train", st);
  for (int i = 0; i < nropt; i++)
    if ((st = carl_model_config_set_router_opt(&cfg.model, ropt_k[i], ropt_v[i]))) return carl_cli_error("train", st);
  if (topology) snprintf(cfg.topology, sizeof cfg.topology, "%s", strcmp(topology, "none") ? topology : "");
  if (steps > 0) cfg.steps = steps;
  if (log_every > 0) cfg.log_every = log_every;
  if (eval_every >= 0) cfg.eval_every = eval_every;
  if (ckpt_every >= 0) cfg.ckpt_every = ckpt_every;
  if (seed >= 0) cfg.model.seed = cfg.data_seed = (uint64_t)seed;
  if (refresh_every >= 0) cfg.refresh_every = refresh_every;
  if (replicas > 0) cfg.replicas = (int)replicas;
  if (dispatch) cfg.dispatch_hier = !strcmp(dispatch, "hier");
  if (place) {
    if (strlen(place) >= sizeof cfg.place) {
      fprintf(stderr, "carl train: --place '%s' is not a placement algorithm\n", place);
      return 2;
    }
    snprintf(cfg.place, sizeof cfg.place, "%s", place);
  }
  /* re-check with the overrides (router name and options against the registry) */
  char *text = carl_train_config_to_json(&cfg);
  st = text ? carl_train_config_parse(text, strlen(text), "options", &cfg) : CARL_ERR_NOMEM;
  free(text);
  if (st) return carl_cli_error("train", st);

  char outbuf[CARL_PATH_MAX];
  if (!out) {
    snprintf(outbuf, sizeof outbuf, "out/%s-%s", cfg.name, cfg.model.router);
    out = outbuf;
  }
  /* under mpirun only the first rank prints the header (the run itself knows its rank later) */
  const char *env_rank = getenv("OMPI_COMM_WORLD_RANK");
  if (!quiet && (!expert_parallel || !env_rank || !strcmp(env_rank, "0"))) {
    printf("carl train: %s, router %s, %d layers x %d experts (top-%d), d %d, batch %d x %d tokens, %lld steps, "
           "topology %s, device %s -> %s%s\n",
           cfg.name, cfg.model.router, cfg.model.n_layers, cfg.model.n_experts, cfg.model.top_k, cfg.model.d_model,
           cfg.batch, cfg.seq_len, (long long)cfg.steps, cfg.topology[0] ? cfg.topology : "none", device ? device : "cpu",
           out, resume ? " (resuming)" : "");
    fflush(stdout);
  }
  if (resume && overwrite) {
    fprintf(stderr, "carl train: --resume and --overwrite exclude each other\n");
    return 2;
  }
  carl_train_opts_t o = {.out_dir = out, .resume = resume, .overwrite = overwrite, .dump_trace = trace, .dump_every = dump_every,
                         .stop_after = stop_after, .progress = quiet ? NULL : progress,
                         .expert_parallel = (int)expert_parallel, .device = device};
  carl_train_result_t res;
  st = carl_train_run(&cfg, &o, &res);
  if (st) {
    char who[64] = "train";
    if (res.ranks > 1) snprintf(who, sizeof who, "train (rank %d of %d)", res.rank, res.ranks);
    int rc = carl_cli_error(who, st);
    fflush(stderr);
    /* a failure the other ranks cannot know of: they would wait for this rank; stop them all */
    if (res.ranks > 1 && !res.failed_together) carl_exec_mpi_abort(rc);
    carl_exec_mpi_finalize();
    return rc;
  }
  carl_exec_mpi_finalize();
  if (res.rank != 0) return 0;
  char val[96] = "no validation yet";
  if (res.val_ce == res.val_ce)
    snprintf(val, sizeof val, "val %.4f nats/byte = %.3f bits/byte", res.val_ce, res.val_bpb);
  printf("done: %lld steps, %s, %.0f tokens/s, simulated inter-node bytes %.3g, skew E %.2f D %.2f, checkpoint %s\n",
         (long long)res.step, val, res.tokens_per_s, res.inter_bytes_total, res.skew_expert_mean, res.skew_device_mean,
         res.last_ckpt);
  if (trace) printf("trace: %s\n", trace);
  return 0;
}
