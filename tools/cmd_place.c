/* carl place: compute an expert placement from routing statistics, report its quality and, with
 * --from, the migration from the current placement. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/array.h"
#include "carl/fs.h"
#include "carl/place.h"
#include "cli.h"

/* Defaults: DeepSeek-V3 sizes (hidden 7168, expert FFN width 2048, bf16 weights, AdamW with fp32
 * master weights and two fp32 moments = 12 bytes of state per parameter). */
#define DEF_TOKEN_BYTES (7168.0 * 2)
#define DEF_EXPERT_BYTES (3.0 * 7168 * 2048 * 2)
#define DEF_STATE_BYTES (3.0 * 7168 * 2048 * 12)

static void place_usage(FILE *f) {
  fprintf(f,
          "usage: carl place --stats DIR --topology T.json --out P.json [options]\n\n"
          "Compute an expert placement for one layer from routing statistics and report its quality.\n\n"
          "required:\n"
          "  --stats DIR          statistics: DIR/load.npy [L,E] (required), DIR/traffic.npy [L,N,E],\n"
          "                       DIR/coact.npy [L,E,E], DIR/batches.npy [L] (optional)\n"
          "  --topology T.json    cluster topology (configs/topologies/)\n"
          "  --out P.json         placement to write: {\"experts\":E,\"devices\":[[e,..],..]}\n"
          "options (default):\n"
          "  --algo NAME          contiguous | roundrobin | eplb | eplb-nodup | traffic | coactivation |\n"
          "                       smartmoe (eplb)\n"
          "  --layer L            layer of the statistics to place (0)\n"
          "  --replicas R         physical experts in all, a multiple of the devices, >= E (0: ceil(E/D)*D)\n"
          "  --slots S            slots per device (0: replicas / devices)\n"
          "  --groups G           eplb, eplb-nodup: expert groups (0: one per node when E %% nodes == 0, else global policy)\n"
          "  --global             eplb, eplb-nodup: use the global policy\n"
          "  --load-bound X       traffic, coactivation: device max/mean load to stay under, or X times\n"
          "                       the floor set by the hottest expert when that is higher (1.25)\n"
          "  --passes N           traffic, coactivation: local-search passes (8)\n"
          "  --seed N             coactivation: METIS seed (1)\n"
          "  --from OLD.json      current placement: report the migration to the new one (smartmoe\n"
          "                       starts from it; without it, from the contiguous placement)\n"
          "  --keep-labels        with --from: do not relabel devices inside a node to save moves\n"
          "  --token-bytes B      bytes of one token's hidden vector (%.0f)\n"
          "  --expert-bytes B     weight bytes of one expert (%.0f)\n"
          "  --state-bytes B      optimizer-state bytes of one expert (%.0f)\n"
          "  --report R.json      machine-readable report (P.json with .report.json in place of .json)\n"
          "  -h, --help           this text\n"
          "The report (stdout): device and node load max/mean, expected bytes per link class under the\n"
          "statistics (dispatch + combine), inter-node copies, co-activation locality, migration bytes.\n",
          DEF_TOKEN_BYTES, DEF_EXPERT_BYTES, DEF_STATE_BYTES);
}

static int parse_num(const char *flag, const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= lo && v <= hi)) {
    carl_fail(CARL_ERR_INVALID, "%s: '%s' is not a number in [%g, %g]", flag, s, lo, hi);
    return 0;
  }
  *out = v;
  return 1;
}

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
  double v;
  if (!parse_num(flag, s, lo, hi, &v)) return 0;
  if (v != (int)v) {
    carl_fail(CARL_ERR_INVALID, "%s: '%s' is not a whole number", flag, s);
    return 0;
  }
  *out = (int)v;
  return 1;
}

static void print_eval(const char *title, const carl_place_eval_t *ev) {
  double nonself = ev->bytes[CARL_LINK_INTRA] + ev->bytes[CARL_LINK_RACK] + ev->bytes[CARL_LINK_INTER];
  printf("| %s | %.4f | %.4f | %.4g | %.4g | %.4g | %.4g | %.4f | %.4g | %.4f |\n", title,
         ev->dev_mean > 0 ? ev->dev_max / ev->dev_mean : 0, ev->node_mean > 0 ? ev->node_max / ev->node_mean : 0,
         ev->bytes[CARL_LINK_SELF], ev->bytes[CARL_LINK_INTRA], ev->bytes[CARL_LINK_RACK], ev->bytes[CARL_LINK_INTER],
         nonself > 0 ? (ev->bytes[CARL_LINK_RACK] + ev->bytes[CARL_LINK_INTER]) / nonself : 0, ev->inter_copies,
         ev->coact_local);
}

static cJSON *eval_json(const carl_place_eval_t *ev) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "device_load_max", ev->dev_max);
  cJSON_AddNumberToObject(o, "device_load_mean", ev->dev_mean);
  cJSON_AddNumberToObject(o, "device_max_over_mean", ev->dev_mean > 0 ? ev->dev_max / ev->dev_mean : 0);
  cJSON_AddNumberToObject(o, "node_load_max", ev->node_max);
  cJSON_AddNumberToObject(o, "node_load_mean", ev->node_mean);
  cJSON_AddNumberToObject(o, "node_max_over_mean", ev->node_mean > 0 ? ev->node_max / ev->node_mean : 0);
  cJSON *b = cJSON_AddObjectToObject(o, "expected_bytes");
  for (int c = 0; c < CARL_NLINK; c++) cJSON_AddNumberToObject(b, carl_link_name(c), ev->bytes[c]);
  cJSON_AddNumberToObject(o, "inter_node_copies", ev->inter_copies);
  cJSON_AddNumberToObject(o, "traffic_cost", ev->traffic_cost);
  cJSON_AddNumberToObject(o, "coact_local_fraction", ev->coact_local);
  return o;
}

int carl_cmd_place(int argc, char **argv) {
  const char *stats_dir = NULL, *topo_path = NULL, *out_path = NULL, *from_path = NULL, *report_path = NULL;
  const char *algo_name = "eplb";
  int layer = 0, relabel = 1;
  double token_bytes = DEF_TOKEN_BYTES, expert_bytes = DEF_EXPERT_BYTES, state_bytes = DEF_STATE_BYTES;
  carl_place_opts_t o;
  carl_place_opts_default(&o);
  double seed = (double)o.seed;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      place_usage(stdout);
      return 0;
    }
    if (!strcmp(a, "--global")) { o.eplb_global = 1; continue; }
    if (!strcmp(a, "--keep-labels")) { relabel = 0; continue; }
    if (a[0] != '-' || a[1] != '-') {
      fprintf(stderr, "carl place: unexpected argument '%s' (carl place --help lists the options)\n", a);
      return 2;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "carl place: %s needs a value (carl place --help)\n", a);
      return 2;
    }
    const char *v = argv[++i];
    int ok = 1;
    if (!strcmp(a, "--stats")) stats_dir = v;
    else if (!strcmp(a, "--topology")) topo_path = v;
    else if (!strcmp(a, "--out")) out_path = v;
    else if (!strcmp(a, "--from")) from_path = v;
    else if (!strcmp(a, "--report")) report_path = v;
    else if (!strcmp(a, "--algo")) algo_name = v;
    else if (!strcmp(a, "--layer")) ok = parse_int(a, v, 0, 1 << 20, &layer);
    else if (!strcmp(a, "--replicas")) ok = parse_int(a, v, 0, 1 << 30, &o.replicas);
    else if (!strcmp(a, "--slots")) ok = parse_int(a, v, 0, CARL_PLACE_MAX_SLOTS, &o.slots);
    else if (!strcmp(a, "--groups")) ok = parse_int(a, v, 0, 1 << 20, &o.groups);
    else if (!strcmp(a, "--passes")) ok = parse_int(a, v, 0, 1000, &o.refine_passes);
    else if (!strcmp(a, "--load-bound")) ok = parse_num(a, v, 1.0, 1e9, &o.load_bound);
    else if (!strcmp(a, "--seed")) ok = parse_num(a, v, 0, 2147483647.0, &seed);
    else if (!strcmp(a, "--token-bytes")) ok = parse_num(a, v, 0, 1e15, &token_bytes);
    else if (!strcmp(a, "--expert-bytes")) ok = parse_num(a, v, 0, 1e15, &expert_bytes);
    else if (!strcmp(a, "--state-bytes")) ok = parse_num(a, v, 0, 1e15, &state_bytes);
    else {
      fprintf(stderr, "carl place: unknown option '%s' (carl place --help lists the options)\n", a);
      return 2;
    }
    if (!ok) return carl_cli_error("place", CARL_ERR_INVALID);
  }
  o.seed = (uint64_t)seed;
  if (!stats_dir || !topo_path || !out_path) {
    fprintf(stderr, "carl place: --stats, --topology and --out are required (carl place --help)\n");
    return 2;
  }
  carl_status st = carl_place_algo_parse(algo_name, &o.algo);
  if (st) return carl_cli_error("place", carl_errctx(st, "--algo"));
  carl_topo_t topo;
  if ((st = carl_topo_load(topo_path, &topo))) return carl_cli_error("place", st);
  carl_place_stats_t stats;
  int has_traffic = 0, has_coact = 0;
  if ((st = carl_place_stats_load(stats_dir, 0.9, &stats, &has_traffic, &has_coact))) return carl_cli_error("place", st);
  carl_placement_t pl = {0}, old = {0};
  carl_migration_t mig = {0};
  carl_place_eval_t ev, ev_old;
  int have_old = 0;
  char rp[4096];
  cJSON *rep = NULL;
  if (layer >= stats.L) {
    st = carl_fail(CARL_ERR_INVALID, "--layer %d: the statistics have %d layers", layer, stats.L);
    goto fail;
  }
  if (has_traffic && stats.N != topo.nodes) {
    st = carl_fail(CARL_ERR_SHAPE, "%s/traffic.npy has %d source nodes but %s has %d nodes", stats_dir, stats.N, topo_path, topo.nodes);
    goto fail;
  }
  carl_place_input_t in;
  carl_place_stats_layer(&stats, layer, &in);
  if (!has_traffic) in.traffic = NULL;
  if (!has_coact) in.coact = NULL;
  in.N = topo.nodes;
  if (from_path) {
    if ((st = carl_placement_load(from_path, &topo, in.E, &old))) goto fail;
    have_old = 1;
    in.prev = &old;
  }
  double t0 = carl_now();
  if ((st = carl_place_compute(&topo, &in, &o, &pl))) goto fail;
  double ms = (carl_now() - t0) * 1e3;
  if ((st = carl_place_evaluate(&topo, &in, &pl, token_bytes, &ev))) goto fail;
  if (from_path) {
    if ((st = carl_place_evaluate(&topo, &in, &old, token_bytes, &ev_old))) goto fail;
    if ((st = carl_place_migrate(&topo, &old, &pl, relabel, expert_bytes + state_bytes, &mig))) goto fail;
  }
  /* report: stdout (Markdown) and JSON */
  printf("carl place: %s, layer %d, %d experts over %d devices (%d nodes x %d), %d slots per device, %d replicas, %.3f ms\n\n",
         carl_place_algo_name(o.algo), layer, in.E, topo.devices, topo.nodes, topo.devices_per_node, pl.slots,
         pl.rep_off[in.E], ms);
  printf("| placement | device max/mean | node max/mean | self B | intra B | rack B | inter B | inter fraction | inter-node copies | co-activation local |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|\n");
  if (have_old) print_eval("current (--from)", &ev_old);
  print_eval(carl_place_algo_name(o.algo), &ev);
  if (!has_traffic) printf("\n(no traffic.npy: expected bytes are 0)\n");
  if (have_old)
    printf("\nmigration: %lld experts move, %lld stay; %.4g bytes (intra %.4g, rack %.4g, inter %.4g) = %lld x %.4g bytes "
           "(weights %.4g + optimizer state %.4g); %.3f ms at the link bandwidths\n",
           (long long)mig.n_moves, (long long)mig.kept, mig.total_bytes, mig.bytes[CARL_LINK_INTRA], mig.bytes[CARL_LINK_RACK],
           mig.bytes[CARL_LINK_INTER], (long long)mig.n_moves, expert_bytes + state_bytes, expert_bytes, state_bytes,
           mig.time_s * 1e3);
  rep = cJSON_CreateObject();
  cJSON_AddStringToObject(rep, "algorithm", carl_place_algo_name(o.algo));
  cJSON_AddNumberToObject(rep, "layer", layer);
  cJSON_AddNumberToObject(rep, "experts", in.E);
  cJSON_AddNumberToObject(rep, "devices", topo.devices);
  cJSON_AddNumberToObject(rep, "nodes", topo.nodes);
  cJSON_AddNumberToObject(rep, "slots", pl.slots);
  cJSON_AddNumberToObject(rep, "replicas", pl.rep_off[in.E]);
  cJSON_AddNumberToObject(rep, "time_ms", ms);
  cJSON_AddNumberToObject(rep, "token_bytes", token_bytes);
  cJSON_AddItemToObject(rep, "placement", eval_json(&ev));
  if (have_old) {
    cJSON_AddItemToObject(rep, "current", eval_json(&ev_old));
    cJSON *m = cJSON_AddObjectToObject(rep, "migration");
    cJSON_AddNumberToObject(m, "moves", (double)mig.n_moves);
    cJSON_AddNumberToObject(m, "kept", (double)mig.kept);
    cJSON_AddNumberToObject(m, "bytes_per_expert", expert_bytes + state_bytes);
    cJSON_AddNumberToObject(m, "total_bytes", mig.total_bytes);
    cJSON *b = cJSON_AddObjectToObject(m, "bytes");
    for (int c = 0; c < CARL_NLINK; c++) cJSON_AddNumberToObject(b, carl_link_name(c), mig.bytes[c]);
    cJSON_AddNumberToObject(m, "time_s", mig.time_s);
    cJSON *mv = cJSON_AddArrayToObject(m, "moves_list");
    for (int64_t i = 0; i < mig.n_moves; i++) {
      cJSON *x = cJSON_CreateObject();
      cJSON_AddNumberToObject(x, "expert", mig.moves[i].expert);
      cJSON_AddNumberToObject(x, "from", mig.moves[i].src);
      cJSON_AddNumberToObject(x, "to", mig.moves[i].dst);
      cJSON_AddNumberToObject(x, "slot", mig.moves[i].slot);
      cJSON_AddStringToObject(x, "link", carl_link_name(mig.moves[i].link));
      cJSON_AddItemToArray(mv, x);
    }
  }
  if (!report_path) {
    size_t n = strlen(out_path);
    if (n >= 5 && !strcmp(out_path + n - 5, ".json"))
      snprintf(rp, sizeof rp, "%.*s.report.json", (int)(n - 5), out_path);
    else
      snprintf(rp, sizeof rp, "%s.report.json", out_path);
    report_path = rp;
  }
  /* the placement and its report appear together or not at all */
  char *text = cJSON_Print(rep), *ptext = NULL;
  size_t plen = 0;
  if (!text) {
    st = carl_fail(CARL_ERR_NOMEM, "report: out of memory");
    goto fail;
  }
  carl_fs_staged_t sp, sr;
  sp.tmp[0] = sr.tmp[0] = '\0';
  st = carl_placement_to_json(&pl, &ptext, &plen);
  if (!st) st = carl_fs_stage(&sp, out_path, &(carl_fs_part_t){ptext, plen}, 1);
  if (!st) st = carl_fs_stage(&sr, report_path, &(carl_fs_part_t){text, strlen(text)}, 1);
  if (!st) st = carl_fs_commit(&sp);
  if (!st) st = carl_fs_commit(&sr);
  carl_fs_discard(&sp);
  carl_fs_discard(&sr);
  free(text);
  free(ptext);
  if (st) goto fail;
  printf("\nwrote %s\nwrote %s\n", out_path, report_path);
  cJSON_Delete(rep);
  carl_migration_free(&mig);
  carl_placement_free(&old);
  carl_placement_free(&pl);
  carl_place_stats_free(&stats);
  return 0;
fail:
  cJSON_Delete(rep);
  carl_migration_free(&mig);
  carl_placement_free(&old);
  carl_placement_free(&pl);
  carl_place_stats_free(&stats);
  return carl_cli_error("place", st);
}
