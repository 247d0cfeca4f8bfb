/* Simulator runs: config checks before any work, hand-computed metrics and migration costs, trace
 * replay against closed forms, and byte-identical results for 1 and 2 threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "carl/array.h"
#include "carl/balance.h"
#include "carl/sim.h"
#include "carl/step.h"

#define TOPO_1x2 "{\"name\":\"t1x2\",\"nodes\":1,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3},\"inter\":{\"GBps\":50,\"latency_us\":10}}}"
#define TOPO_2x2 "{\"name\":\"t2x2\",\"nodes\":2,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3},\"inter\":{\"GBps\":50,\"latency_us\":10}}}"

static carl_status parse(const char *json, carl_sim_config_t *c) { return carl_sim_config_parse(json, strlen(json), NULL, c); }

static void expect_error(const char *json, carl_status want, const char *needle) {
  carl_sim_config_t c;
  carl_status st = parse(json, &c);
  if (st != want || !strstr(carl_errmsg(), needle)) {
    fprintf(stderr, "got %d '%s', wanted %d with '%s'\n", st, carl_errmsg(), want, needle);
    fail();
  }
}

static void test_config_errors(void **s) {
  (void)s;
  expect_error("{\"routers\":[\"nosuch\"],\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_NOT_FOUND, "routers[0]: unknown router 'nosuch'");
  expect_error("{\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"zipff\"],\"seeds\":[1]}",
               CARL_ERR_NOT_FOUND, "scenarios[0]: unknown scenario 'zipff'");
  expect_error("{\"steps\":\"ten\",\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "steps: must be a number");
  expect_error("{\"steps\":2.5,\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "steps: 2.5 must be an integer");
  expect_error("{\"stepz\":3,\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "stepz: unknown field");
  expect_error("{\"workload\":{\"zipf\":\"high\"},\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2
               "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "workload.zipf: must be a number");
  expect_error("{\"routers\":[{\"name\":\"topk\",\"opts\":{\"k\":\"two\"}}],\"topologies\":[" TOPO_2x2
               "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "routers[0].opts.k: must be a number");
  expect_error("{\"routers\":[\"topk\",\"topk\"],\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "used twice");
  expect_error("{\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"zipf\"],\"seeds\":[-1]}",
               CARL_ERR_INVALID, "seeds[0]");
  expect_error("{\"routers\":[\"topk\"],\"topologies\":[],\"scenarios\":[\"zipf\"],\"seeds\":[1]}", CARL_ERR_INVALID,
               "topologies: must be a non-empty array");
  expect_error("{\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"zipf\"],\"seeds\":[1],", CARL_ERR_PARSE,
               "malformed JSON");
  expect_error("{\"experts\":2,\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "more than experts");
  /* an unknown router option is refused by the registry, named with the router */
  carl_sim_config_t c;
  assert_int_not_equal(parse("{\"routers\":[{\"name\":\"topk\",\"opts\":{\"kk\":2}}],\"topologies\":[" TOPO_2x2
                             "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
                             &c),
                       CARL_OK);
  assert_non_null(strstr(carl_errmsg(), "routers[0]"));
  assert_non_null(strstr(carl_errmsg(), "kk"));
}

/* Configs as handles: the default study (its grid is written out in config.c's default_json: six
 * routers, one topology, three scenarios, seed 1), JSON text, and a file; describe names the grid. */
static void test_config_handle(void **s) {
  (void)s;
  carl_sim_config_t *c = NULL;
  assert_int_equal(carl_sim_config_create(NULL, NULL, 0, NULL, &c), CARL_OK);
  char *txt = NULL;
  size_t n = 0;
  assert_int_equal(carl_sim_config_describe(c, &txt, &n), CARL_OK);
  assert_int_equal(n, strlen(txt));
  assert_non_null(strstr(txt, "\"name\":\t\"default\""));
  assert_non_null(strstr(txt, "\"steps\":\t200"));
  assert_non_null(strstr(txt, "\"label\":\t\"topk+aux\""));
  assert_non_null(strstr(txt, "\"aux\":\t0.01"));
  assert_non_null(strstr(txt, "\"refresh_every\":\t50"));
  assert_non_null(strstr(txt, "\"name\":\t\"h800-2x8\""));
  assert_non_null(strstr(txt, "\"scenario\":\t\"hot_device\""));
  assert_non_null(strstr(txt, "\"tokens\":\t2048"));
  assert_non_null(strstr(txt, "\"bytes_inter\""));
  carl_mem_free(txt);
  carl_sim_config_destroy(c);
  const char *j = "{\"name\":\"h\",\"steps\":3,\"tokens_per_device\":8,\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2
                  "],\"scenarios\":[\"zipf\",\"balanced\"],\"seeds\":[4,5]}";
  assert_int_equal(carl_sim_config_create(NULL, j, strlen(j), NULL, &c), CARL_OK);
  assert_int_equal(c->nrouter * c->ntopo * c->nscen * c->nseed, 4);
  assert_int_equal(carl_sim_config_describe(c, &txt, NULL), CARL_OK);
  assert_non_null(strstr(txt, "\"tokens\":\t32")); /* 8 per device x 4 devices */
  assert_non_null(strstr(txt, "\"seeds\":\t[4, 5]"));
  carl_mem_free(txt);
  carl_sim_config_destroy(c);
  /* errors: the message of the parser; nothing is returned */
  c = (carl_sim_config_t *)1;
  const char *bad = "{\"stepz\":3}";
  assert_int_equal(carl_sim_config_create(NULL, bad, strlen(bad), NULL, &c), CARL_ERR_INVALID);
  assert_null(c);
  assert_non_null(strstr(carl_errmsg(), "stepz: unknown field"));
  assert_int_equal(carl_sim_config_create("/nonexistent/x.json", NULL, 0, NULL, &c), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "/nonexistent/x.json"));
  assert_int_equal(carl_sim_config_create("a", bad, 1, NULL, &c), CARL_ERR_INVALID);
  assert_int_equal(carl_sim_config_describe(NULL, &txt, NULL), CARL_ERR_INVALID);
  carl_sim_config_destroy(NULL);
}

/* T = 4, E = 4, k = 2 on 2 nodes x 1 device, experts 0,1 on device 0 and 2,3 on device 1.
 * chosen: {0,1}, {0,2}, {0,-}, {3,0}: expert loads 4,1,1,1 (mean 1.75): skew 4/1.75; CV =
 * sqrt(((2.25)^2 + 3 (0.75)^2)/4)/1.75; device loads 5, 2: skew 5/3.5; drop 1/8. Retained mass and
 * Jaccard from a brute-force top-2 over the softmax here. */
static void test_metrics_hand(void **s) {
  (void)s;
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 1, 160, 3, 50, 10), CARL_OK);
  carl_placement_t pl;
  assert_int_equal(carl_placement_contiguous(&pl, 4, 2), CARL_OK);
  const float z[16] = {2, 1, 0, 0, 0, 0, 3, 1, 1, 0, 0, 0, 0, 0, 0, 5};
  const int32_t ex[8] = {0, 1, 0, 2, 0, -1, 3, 0};
  carl_step_metrics_t m;
  assert_int_equal(carl_step_metrics(&topo, &pl, 4, 4, 2, 0, z, ex, &m, NULL, NULL, NULL), CARL_OK);
  assert_true(fabs(m.skew_expert - 4 / 1.75) < 1e-9);
  assert_true(fabs(m.cv_expert - sqrt((2.25 * 2.25 + 3 * 0.75 * 0.75) / 4) / 1.75) < 1e-9);
  assert_true(fabs(m.skew_device - 5 / 3.5) < 1e-9);
  assert_true(fabs(m.skew_node - 5 / 3.5) < 1e-9);
  assert_true(fabs(m.drop_rate - 0.125) < 1e-12);
  double ret = 0, jac = 0;
  for (int t = 0; t < 4; t++) {
    double sm[4], sum = 0;
    for (int e = 0; e < 4; e++) sum += exp(z[t * 4 + e]);
    for (int e = 0; e < 4; e++) sm[e] = exp(z[t * 4 + e]) / sum;
    int a = 0; /* brute-force top-2, ties to the lower index */
    for (int e = 1; e < 4; e++)
      if (sm[e] > sm[a]) a = e;
    int b = a == 0 ? 1 : 0;
    for (int e = 0; e < 4; e++)
      if (e != a && sm[e] > sm[b]) b = e;
    double got = 0;
    int inter = 0, chosen = 0;
    for (int j = 0; j < 2; j++) {
      int e = ex[t * 2 + j];
      if (e < 0) continue;
      chosen++;
      got += sm[e];
      inter += (e == a || e == b);
    }
    ret += got / (sm[a] + sm[b]);
    jac += (double)inter / (chosen + 2 - inter);
  }
  assert_true(fabs(m.retained - ret / 4) < 1e-6);
  assert_true(fabs(m.jaccard - jac / 4) < 1e-12);
  /* the balance module's definitions agree */
  double r2, j2, h2;
  assert_int_equal(carl_retained_mass(z, 4, 4, 0, ex, 2, &r2), CARL_OK);
  assert_int_equal(carl_topk_jaccard(z, 4, 4, 0, ex, 2, &j2), CARL_OK);
  assert_int_equal(carl_routing_entropy(z, 4, 4, 0, NULL, 2, &h2, NULL), CARL_OK);
  assert_true(fabs(m.retained - r2) < 1e-12 && fabs(m.jaccard - j2) < 1e-12 && fabs(m.entropy - h2) < 1e-9);
  /* by hand: Jaccards 1, 1/3, 1/2, 1 */
  assert_true(fabs(m.jaccard - (1 + 1.0 / 3 + 0.5 + 1) / 4) < 1e-12);
  carl_placement_free(&pl);
}

static char tmpdir[256];

static void make_trace(int E, int64_t N, int bad_src) {
  float *z = malloc((size_t)N * E * sizeof(float));
  int32_t *src = malloc((size_t)N * sizeof(int32_t));
  for (int64_t t = 0; t < N; t++) {
    for (int e = 0; e < E; e++) z[t * E + e] = e == 0 ? 4.0f : e == 1 ? 3.0f : (float)(e % 3) * 0.1f;
    src[t] = (int32_t)((t % 64) * 2 / 64); /* per step of 64: first half device 0, second device 1 */
  }
  if (bad_src) src[N - 1] = 5;
  char path[512];
  int64_t shp[2] = {N, E};
  snprintf(path, sizeof path, "%s/layer_0.npy", tmpdir);
  assert_int_equal(carl_npy_save(path, CARL_F32, 2, shp, z), CARL_OK);
  snprintf(path, sizeof path, "%s/src.npy", tmpdir);
  assert_int_equal(carl_npy_save(path, CARL_I32, 1, &N, src), CARL_OK);
  free(z);
  free(src);
}

/* Trace replay: every token's top-2 is {0, 1}, both on device 0 (E = 8 on 2 devices). Dropless
 * topk: expert loads 64, 64, 0 x 6: skew = 64 / (128/8) = 4. Tokens on device 1 (32 per step) send
 * one copy each (dedup per device) to device 0 and get one back: intra bytes = 32 x 2 x 100. */
static void test_trace_replay(void **s) {
  (void)s;
  make_trace(8, 256, 0);
  char json[2048];
  snprintf(json, sizeof json,
           "{\"steps\":6,\"tokens\":64,\"experts\":8,\"token_bytes\":100,"
           "\"routers\":[{\"name\":\"topk\",\"opts\":{\"k\":2,\"capacity_factor\":0}}],"
           "\"topologies\":[" TOPO_1x2 "],\"scenarios\":[{\"trace\":\"%s\",\"label\":\"tr\"}],\"seeds\":[3]}",
           tmpdir);
  carl_sim_config_t c;
  assert_int_equal(parse(json, &c), CARL_OK);
  carl_sim_run_t run;
  assert_int_equal(carl_sim_run_cell(&c, 0, 0, 0, 0, &run), CARL_OK);
  for (int step = 0; step < 6; step++) {
    const double *row = run.rows + step * CARL_SIM_NCOL;
    assert_true(fabs(row[CARL_SIM_SKEW_EXPERT] - 4.0) < 1e-12);
    assert_true(fabs(row[CARL_SIM_BYTES_INTRA] - 32 * 2 * 100) < 1e-9);
    assert_true(row[CARL_SIM_BYTES_INTER] == 0);
    assert_true(fabs(row[CARL_SIM_RETAINED] - 1) < 1e-6);
    assert_true(isnan(row[CARL_SIM_TASK_KL]));
  }
  free(run.rows);
  carl_sim_config_free(&c);
  /* the trace's src names device 5, the topology has 2 devices: refused at parse time */
  make_trace(8, 256, 1);
  assert_int_equal(parse(json, &c), CARL_ERR_SHAPE);
  assert_non_null(strstr(carl_errmsg(), "device 5"));
  /* 6 experts in the file, 8 in the config */
  make_trace(6, 256, 0);
  assert_int_equal(parse(json, &c), CARL_ERR_SHAPE);
  assert_non_null(strstr(carl_errmsg(), "experts = 8"));
}

/* Step time on the same trace: all 128 rows of a step (64 tokens x {0, 1}) land on device 0; the
 * tokens live 32 on each device (tokens_per_device 32 on 2 devices: 64 per step). Rate 6e9 FLOP/s
 * (peak 0.006 TFLOPS, efficiency 1); d = 10, f = 100: a row is 6 x 10 x 100 = 6000 FLOPs = 1 us
 * forward; shared f = 50: 0.5 us per token. Device 0: 128 + 16 = 144 us, device 1: 16 us (mean
 * 80 us). Training: compute 3 x 144 = 432 us (mean 240 us). Each phase: device 1 sends 32 x 100 B
 * intra to device 0: 3200/160e9 + 3e-6 = 3.02 us; four phases 12.08 us. No overlap: 444.08 us.
 * Pipelined in 2 chunks: a = b = 1600/160e9 + 3e-6 = 3.01 us; forward (6.02 + 72) + max(6.02, 72)
 * = 150.02 us, backward (6.02 + 144) + 144 = 294.02 us: 444.04 us. No refresh: step = MoE time. */
#define TOPO_1x2_FLOPS "{\"name\":\"t1x2\",\"nodes\":1,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3},\"inter\":{\"GBps\":50,\"latency_us\":10}},\"flops\":{\"peak_TFLOPS\":0.006,\"efficiency\":1}}"
static void test_trace_steptime(void **s) {
  (void)s;
  make_trace(8, 256, 0);
  static const char *const overlap[2] = {"none", "pipelined"};
  const double want_ms[2] = {0.44408, 0.44404};
  for (int o = 0; o < 2; o++) {
    char json[2048];
    snprintf(json, sizeof json,
             "{\"steps\":4,\"tokens_per_device\":32,\"experts\":8,\"token_bytes\":100,"
             "\"step_time\":{\"hidden\":10,\"ffn\":100,\"shared_ffn\":50,\"overlap\":\"%s\",\"chunks\":2},"
             "\"routers\":[{\"name\":\"topk\",\"opts\":{\"k\":2,\"capacity_factor\":0}}],"
             "\"topologies\":[" TOPO_1x2_FLOPS "],\"scenarios\":[{\"trace\":\"%s\",\"label\":\"tr\"}],\"seeds\":[3]}",
             overlap[o], tmpdir);
    carl_sim_config_t c;
    assert_int_equal(parse(json, &c), CARL_OK);
    assert_int_equal(carl_sim_tokens(&c, 0), 64);
    carl_sim_run_t run;
    assert_int_equal(carl_sim_run_cell(&c, 0, 0, 0, 0, &run), CARL_OK);
    for (int step = 0; step < 4; step++) {
      const double *row = run.rows + step * CARL_SIM_NCOL;
      assert_true(fabs(row[CARL_SIM_COMPUTE_MS] - 0.432) < 1e-12);
      assert_true(fabs(row[CARL_SIM_COMPUTE_MEAN_MS] - 0.240) < 1e-12);
      assert_true(fabs(row[CARL_SIM_MOE_MS] - want_ms[o]) < 1e-12);
      assert_true(fabs(row[CARL_SIM_STEP_MS] - want_ms[o]) < 1e-12);
    }
    free(run.rows);
    carl_sim_config_free(&c);
  }
  /* without step_time the columns are NaN */
  char json[2048];
  snprintf(json, sizeof json,
           "{\"steps\":2,\"tokens\":64,\"experts\":8,\"routers\":[{\"name\":\"topk\",\"opts\":{\"k\":2}}],"
           "\"topologies\":[" TOPO_1x2_FLOPS "],\"scenarios\":[{\"trace\":\"%s\",\"label\":\"tr\"}],\"seeds\":[3]}",
           tmpdir);
  carl_sim_config_t c;
  assert_int_equal(parse(json, &c), CARL_OK);
  carl_sim_run_t run;
  assert_int_equal(carl_sim_run_cell(&c, 0, 0, 0, 0, &run), CARL_OK);
  assert_true(isnan(run.rows[CARL_SIM_STEP_MS]) && isnan(run.rows[CARL_SIM_COMPUTE_MS]));
  free(run.rows);
  carl_sim_config_free(&c);
  /* errors */
  expect_error("{\"step_time\":{\"hidden\":10,\"ffn\":100},\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2
               "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "step_time: topologies[0] ('t2x2') has no device rate");
  expect_error("{\"step_time\":{\"ffn\":100},\"routers\":[\"topk\"],\"topologies\":[" TOPO_1x2_FLOPS
               "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "hidden and ffn");
  expect_error("{\"step_time\":{\"hidden\":10,\"ffn\":100,\"overlap\":\"full\"},\"routers\":[\"topk\"],\"topologies\":["
               TOPO_1x2_FLOPS "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "step_time.overlap: 'full'");
  expect_error("{\"step_time\":{\"hidden\":10,\"ffn\":100,\"chunk\":2},\"routers\":[\"topk\"],\"topologies\":["
               TOPO_1x2_FLOPS "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "step_time.chunk: unknown field");
  expect_error("{\"tokens\":64,\"tokens_per_device\":32,\"routers\":[\"topk\"],\"topologies\":[" TOPO_2x2
               "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "not both");
}

/* The same grid with 1 and 2 threads: identical rows and identical report bytes. The gate learns:
 * the task KL of the last step is below that of the first. */
static void test_determinism_threads(void **s) {
  (void)s;
  const char *json =
      "{\"steps\":30,\"tokens\":256,\"workload\":{\"seq_coherence\":0,\"home_bias\":0},\"experts\":16,\"d\":16,\"layers\":2,\"lr\":0.1,"
      "\"routers\":[{\"label\":\"topk+aux\",\"name\":\"topk\",\"opts\":{\"k\":2,\"aux\":0.01}},\"switch\"],"
      "\"topologies\":[" TOPO_2x2 "," TOPO_1x2 "],\"scenarios\":[\"zipf\",\"burst\"],\"seeds\":[1,2]}";
  carl_sim_config_t c;
  assert_int_equal(parse(json, &c), CARL_OK);
  carl_sim_result_t r1, r2;
#ifdef _OPENMP
  omp_set_num_threads(1);
#endif
  assert_int_equal(carl_sim_run(&c, NULL, NULL, &r1), CARL_OK);
#ifdef _OPENMP
  omp_set_num_threads(2);
#endif
  assert_int_equal(carl_sim_run(&c, NULL, NULL, &r2), CARL_OK);
  assert_int_equal(r1.nrun, 2 * 2 * 2 * 2);
  for (int i = 0; i < r1.nrun; i++) {
    assert_int_equal(r1.runs[i].nrow, 30);
    assert_memory_equal(r1.runs[i].rows, r2.runs[i].rows, 30 * CARL_SIM_NCOL * sizeof(double));
    assert_true(r1.runs[i].rows[29 * CARL_SIM_NCOL + CARL_SIM_TASK_KL] < r1.runs[i].rows[CARL_SIM_TASK_KL]);
  }
  char d1[600], d2[600];
  snprintf(d1, sizeof d1, "%s/r1", tmpdir);
  snprintf(d2, sizeof d2, "%s/r2", tmpdir);
  assert_int_equal(carl_sim_write_reports(&c, &r1, d1), CARL_OK);
  assert_int_equal(carl_sim_write_reports(&c, &r2, d2), CARL_OK);
  const char *files[] = {"steps.csv", "summary.csv", "summary.md"};
  for (int f = 0; f < 3; f++) {
    char p1[700], p2[700];
    snprintf(p1, sizeof p1, "%s/%s", d1, files[f]);
    snprintf(p2, sizeof p2, "%s/%s", d2, files[f]);
    char *a, *b;
    size_t na, nb;
    assert_int_equal(carl_read_file(p1, &a, &na), CARL_OK);
    assert_int_equal(carl_read_file(p2, &b, &nb), CARL_OK);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    free(a);
    free(b);
  }
  carl_sim_result_free(&r1);
  carl_sim_result_free(&r2);
  carl_sim_config_free(&c);
}

/* A router entry's placement: "place" names the refresh algorithm, "replicas" the physical experts
 * (>= E, a multiple of every topology's devices; errors name the field). EPLB with 8 slots for 4
 * experts on 2x2 devices, refreshed every 5 steps, gives the hot expert of hot_expert more replicas:
 * the device load max/mean after the refreshes is below that of the static contiguous placement
 * (1.36 against 1.82 here), and the first refresh moves experts. */
static void test_router_place_replicas(void **s) {
  (void)s;
  expect_error("{\"experts\":4,\"routers\":[{\"name\":\"topk\",\"replicas\":3}],\"topologies\":[" TOPO_2x2
               "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "routers[0].replicas: 3, fewer than experts = 4");
  expect_error("{\"experts\":4,\"routers\":[{\"name\":\"topk\",\"replicas\":6}],\"topologies\":[" TOPO_2x2
               "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "routers[0].replicas: 6 is not a multiple of the 4 devices");
  expect_error("{\"experts\":4,\"routers\":[{\"name\":\"topk\",\"place\":\"nosuch\"}],\"topologies\":[" TOPO_2x2
               "],\"scenarios\":[\"zipf\"],\"seeds\":[1]}",
               CARL_ERR_INVALID, "routers[0].place: must be a placement algorithm name");
  const char *json =
      "{\"steps\":40,\"tokens\":512,\"experts\":4,\"d\":8,\"summary_from\":20,"
      "\"routers\":[{\"label\":\"eplb\",\"name\":\"topk\",\"opts\":{\"k\":1},\"refresh_every\":5,\"place\":\"eplb\","
      "\"replicas\":8},{\"label\":\"static\",\"name\":\"topk\",\"opts\":{\"k\":1}}],"
      "\"topologies\":[" TOPO_2x2 "],\"scenarios\":[\"hot_expert\"],\"seeds\":[1]}";
  carl_sim_config_t c;
  assert_int_equal(parse(json, &c), CARL_OK);
  assert_int_equal(c.routers[0].replicas, 8);
  char *txt;
  assert_int_equal(carl_sim_config_describe(&c, &txt, NULL), CARL_OK);
  assert_non_null(strstr(txt, "\"place\":\t\"eplb\""));
  assert_non_null(strstr(txt, "\"replicas\":\t8"));
  carl_mem_free(txt);
  carl_sim_run_t a, b;
  assert_int_equal(carl_sim_run_cell(&c, 0, 0, 0, 0, &a), CARL_OK);
  assert_int_equal(carl_sim_run_cell(&c, 1, 0, 0, 0, &b), CARL_OK);
  assert_true(a.summary[CARL_SIM_SKEW_DEVICE] < b.summary[CARL_SIM_SKEW_DEVICE]);
  /* the first refresh (after step 4) moves experts; migration is charged only to refresh steps */
  assert_true(a.rows[4 * CARL_SIM_NCOL + CARL_SIM_MIGRATE_MS] > 0);
  for (int i = 0; i < 40; i++) {
    if (i % 5 != 4) assert_true(a.rows[i * CARL_SIM_NCOL + CARL_SIM_MIGRATE_MS] == 0);
    assert_true(b.rows[i * CARL_SIM_NCOL + CARL_SIM_MIGRATE_MS] == 0);
  }
  free(a.rows);
  free(b.rows);
  carl_sim_config_free(&c);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/carl_test_sim_%d", (int)getpid());
  mkdir(tmpdir, 0755);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_errors), cmocka_unit_test(test_config_handle), cmocka_unit_test(test_metrics_hand),
      cmocka_unit_test(test_trace_replay), cmocka_unit_test(test_trace_steptime),
      cmocka_unit_test(test_determinism_threads), cmocka_unit_test(test_router_place_replicas),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  return rc;
}
