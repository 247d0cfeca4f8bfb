/* Step time of a MoE layer (carl/steptime.h, docs/cost-model.md "Step time"): hand-computed cases
 * on 2 nodes x 2 devices, the pipelined formula against its closed form, stragglers from load and
 * from a slow device, shared experts, the replica rule of the loads, agreement with the cost
 * model's phase time, and the errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/plan.h"
#include "carl/steptime.h"

#define NEAR(x, y) (fabs((x) - (y)) <= 1e-12 * fabs(y) + 1e-18)

/* The worked example of docs/cost-model.md (tests/test_plan.c): 2 nodes x 2 devices, intra
 * 160 GB/s and 3 us, inter 50 GB/s and 10 us, expert e on device e, k = 2, tokens of 1000 bytes:
 *   t0: src 0 -> {1, 2};  t1: src 0 -> {2, 3};  t2: src 1 -> {1, 0};  t3: src 3 -> {2, dropped}.
 * Expert rows per device: 0: t2 (1); 1: t0, t2 (2); 2: t0, t1, t3 (3); 3: t1 (1).
 * Tokens per device: 0: 2, 1: 1, 2: 0, 3: 1.
 * Flat dispatch phase: device 0 sends 1000 B intra to one peer and 3000 B inter to two:
 * 1000/160e9 + 3e-6 + 3000/50e9 + 2 x 10e-6 = 23.06625 us, the slowest device. */
static const int32_t hand_ex[8] = {1, 2, 2, 3, 1, 0, 2, -1};
static const int32_t hand_src[4] = {0, 0, 1, 3};
#define HAND_A 23.06625e-6

typedef struct {
  carl_topo_t t;
  carl_placement_t p;
  carl_cost_t c;
  int64_t rows[4], tokens[4];
} hand_t;

static void hand_setup(hand_t *h, double lat_intra, double lat_inter, size_t token_bytes) {
  assert_int_equal(carl_topo_make(&h->t, 2, 2, 160, lat_intra, 50, lat_inter), CARL_OK);
  assert_int_equal(carl_placement_contiguous(&h->p, 4, 4), CARL_OK);
  assert_int_equal(carl_cost_init(&h->c, &h->t), CARL_OK);
  assert_int_equal(carl_plan_cost_decision(&h->t, &h->p, hand_ex, hand_src, 4, 2, token_bytes, CARL_PLAN_FLAT, &h->c),
                   CARL_OK);
  assert_int_equal(carl_steptime_load(&h->t, &h->p, hand_ex, hand_src, 4, 2, h->rows, h->tokens), CARL_OK);
}

static void hand_free(hand_t *h) {
  carl_cost_free(&h->c);
  carl_placement_free(&h->p);
}

static void test_load_hand(void **s) {
  (void)s;
  hand_t h;
  hand_setup(&h, 3, 10, 1000);
  const int64_t rows[4] = {1, 2, 3, 1}, tokens[4] = {2, 1, 0, 1};
  for (int b = 0; b < 4; b++) {
    assert_int_equal(h.rows[b], rows[b]);
    assert_int_equal(h.tokens[b], tokens[b]);
  }
  hand_free(&h);
}

/* Forward only, no overlap: d = 10, f = 1000: 6 d f = 60,000 FLOPs per row; at 6e9 FLOP/s a row
 * takes 10 us. Device 2 (3 rows) is the straggler: C = 30 us; the mean is 7/4 x 10 = 17.5 us.
 * T = A + C + B = 23.06625 + 30 + 23.06625 = 76.1325 us. */
static void test_forward_serial(void **s) {
  (void)s;
  hand_t h;
  hand_setup(&h, 3, 10, 1000);
  h.t.flops = 6e9;
  carl_steptime_opts_t o;
  carl_steptime_opts_default(&o);
  o.d = 10;
  o.f = 1000;
  o.backward = 0;
  carl_steptime_t st;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_OK);
  assert_true(NEAR(st.dispatch_s, HAND_A));
  assert_true(NEAR(st.combine_s, HAND_A));
  assert_true(NEAR(st.comm_s, 2 * HAND_A));
  assert_true(NEAR(st.compute_s, 30e-6));
  assert_true(NEAR(st.compute_mean_s, 17.5e-6));
  assert_int_equal(st.straggler, 2);
  assert_int_equal(st.rows_max, 3);
  assert_true(NEAR(st.serial_s, 76.1325e-6));
  assert_true(NEAR(st.layer_s, 76.1325e-6));
  /* the same from the decision and its priced cost in one call */
  carl_steptime_t st2;
  assert_int_equal(carl_steptime_decision(&h.t, &h.p, hand_ex, hand_src, 4, 2, &h.c, &o, &st2), CARL_OK);
  assert_true(NEAR(st2.layer_s, 76.1325e-6));
  assert_int_equal(st2.straggler, 2);
  hand_free(&h);
}

/* Training (forward + backward), no overlap: four phases of 23.06625 us = 92.265 us, compute
 * 30 + 60 = 90 us (mean 52.5 us): 182.265 us. */
static void test_training_serial(void **s) {
  (void)s;
  hand_t h;
  hand_setup(&h, 3, 10, 1000);
  h.t.flops = 6e9;
  carl_steptime_opts_t o;
  carl_steptime_opts_default(&o);
  o.d = 10;
  o.f = 1000;
  carl_steptime_t st;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_OK);
  assert_true(NEAR(st.comm_s, 92.265e-6));
  assert_true(NEAR(st.compute_s, 90e-6));
  assert_true(NEAR(st.compute_mean_s, 52.5e-6));
  assert_true(NEAR(st.layer_s, 182.265e-6));
  hand_free(&h);
}

/* Pipelined, 2 chunks, forward: half the bytes, the same messages. Device 0 sends 500 B intra and
 * 1500 B inter: 500/160e9 + 3e-6 + 1500/50e9 + 20e-6 = 23.033125 us (device 2 receives
 * 1000/50e9 + 10e-6 + 500/160e9 + 3e-6 = 13.023125 us). c = 30/2 = 15 us.
 * T = (a + c + b) + (2 - 1) max(a + b, c) = 61.06625 + 46.06625 = 107.1325 us: slower than
 * without overlap (76.1325 us), because every chunk pays the latencies again. */
static void test_pipeline_latency_bound(void **s) {
  (void)s;
  hand_t h;
  hand_setup(&h, 3, 10, 1000);
  h.t.flops = 6e9;
  carl_steptime_opts_t o;
  carl_steptime_opts_default(&o);
  o.d = 10;
  o.f = 1000;
  o.backward = 0;
  o.overlap = CARL_OVERLAP_PIPELINE;
  o.chunks = 2;
  carl_steptime_t st;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_OK);
  assert_true(NEAR(carl_steptime_phase(&h.t, h.c.dispatch, 0.5), 23.033125e-6));
  assert_true(NEAR(st.pipelined_s, 107.1325e-6));
  assert_true(NEAR(st.layer_s, 107.1325e-6));
  assert_true(NEAR(st.serial_s, 76.1325e-6));
  /* one chunk is no overlap */
  o.chunks = 1;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_OK);
  assert_true(NEAR(st.pipelined_s, st.serial_s));
  hand_free(&h);
}

/* Bandwidth-bound: no latencies, tokens of 1e6 bytes. A = device 0 sending 1e6/160e9 + 3e6/50e9 =
 * 66.25 us (device 2 receives 2e6/50e9 + 1e6/160e9 = 46.25 us). Rows at 1.5e9 FLOP/s take 40 us:
 * C = 120 us. Forward serial 66.25 + 120 + 66.25 = 252.5 us. With 4 chunks a = b = 16.5625 us,
 * c = 30 us: T = 63.125 + 3 x max(33.125, 30) = 162.5 us, which is the closed form
 * (A + B + C)/n + (n - 1)/n max(A + B, C) = 252.5/4 + 3/4 x 132.5. Backward pass (c = 60 us):
 * 93.125 + 3 x 60 = 273.125 us; training 435.625 us against 4 x 66.25 + 3 x 120 = 625 us serial. */
static void test_pipeline_bandwidth_bound(void **s) {
  (void)s;
  hand_t h;
  hand_setup(&h, 0, 0, 1000000);
  h.t.flops = 1.5e9;
  carl_steptime_opts_t o;
  carl_steptime_opts_default(&o);
  o.d = 10;
  o.f = 1000;
  o.backward = 0;
  o.overlap = CARL_OVERLAP_PIPELINE;
  o.chunks = 4;
  carl_steptime_t st;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_OK);
  assert_true(NEAR(st.dispatch_s, 66.25e-6));
  assert_true(NEAR(st.compute_s, 120e-6));
  assert_true(NEAR(st.serial_s, 252.5e-6));
  assert_true(NEAR(st.pipelined_s, 162.5e-6));
  o.backward = 1;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_OK);
  assert_true(NEAR(st.pipelined_s, 435.625e-6));
  assert_true(NEAR(st.serial_s, 625e-6));
  assert_true(NEAR(st.layer_s, 435.625e-6));
  hand_free(&h);
}

/* A slow device: device 3 at 1.2e9 FLOP/s (the others 6e9) computes its one row in 50 us, longer
 * than device 2's three rows (30 us): it is the straggler. Mean (10 + 20 + 30 + 50)/4 = 27.5 us. */
static void test_slow_device(void **s) {
  (void)s;
  hand_t h;
  hand_setup(&h, 3, 10, 1000);
  const double rate[4] = {6e9, 6e9, 6e9, 1.2e9};
  carl_steptime_opts_t o;
  carl_steptime_opts_default(&o);
  o.d = 10;
  o.f = 1000;
  o.backward = 0;
  o.flops = rate;
  carl_steptime_t st;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_OK);
  assert_int_equal(st.straggler, 3);
  assert_true(NEAR(st.compute_s, 50e-6));
  assert_true(NEAR(st.compute_mean_s, 27.5e-6));
  assert_true(NEAR(st.serial_s, 2 * HAND_A + 50e-6));
  hand_free(&h);
}

/* Shared experts of total width 2000: 6 x 10 x 2000 = 120,000 FLOPs = 20 us per token at 6e9.
 * Device 0: 1 row + 2 tokens = 50 us; 1: 2 rows + 1 token = 40 us; 2: 30 us; 3: 10 + 20 = 30 us.
 * The straggler is device 0 (50 us), the mean 37.5 us. */
static void test_shared_experts(void **s) {
  (void)s;
  hand_t h;
  hand_setup(&h, 3, 10, 1000);
  h.t.flops = 6e9;
  carl_steptime_opts_t o;
  carl_steptime_opts_default(&o);
  o.d = 10;
  o.f = 1000;
  o.f_shared = 2000;
  o.backward = 0;
  carl_steptime_t st;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_OK);
  assert_int_equal(st.straggler, 0);
  assert_true(NEAR(st.compute_s, 50e-6));
  assert_true(NEAR(st.compute_mean_s, 37.5e-6));
  hand_free(&h);
}

/* Replicas: expert 0 on devices 0 and 1, expert 1 on 2, expert 2 on 3 (2 x 2 topology).
 *   t0: src 2 -> {0, 1}: expert 0's replicas are both inter-node from device 2; the tie rule
 *       takes the (0 mod 2)-th: device 0; expert 1 on device 2 (self);
 *   t1: src 3 -> {0, 2}: the (1 mod 2)-th replica of expert 0: device 1; expert 2 on device 3;
 *   t2: src 0 -> {0, dropped}: expert 0 on device 0 itself.
 * Rows: 2, 1, 1, 1. Tokens: 1, 0, 1, 1. */
static void test_load_replicas(void **s) {
  (void)s;
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, 2, 2, 160, 3, 50, 10), CARL_OK);
  const int32_t table[4] = {0, 0, 1, 2};
  carl_placement_t p;
  assert_int_equal(carl_placement_from_table(&p, 3, 4, 1, table), CARL_OK);
  const int32_t ex[6] = {0, 1, 0, 2, 0, -1}, src[3] = {2, 3, 0};
  int64_t rows[4], tokens[4];
  assert_int_equal(carl_steptime_load(&t, &p, ex, src, 3, 2, rows, tokens), CARL_OK);
  const int64_t want_rows[4] = {2, 1, 1, 1}, want_tok[4] = {1, 0, 1, 1};
  for (int b = 0; b < 4; b++) {
    assert_int_equal(rows[b], want_rows[b]);
    assert_int_equal(tokens[b], want_tok[b]);
  }
  /* NULL src: token t on device t * D / T: t0 -> 0, t1 -> 1, t2 -> 2 */
  assert_int_equal(carl_steptime_load(&t, &p, ex, NULL, 3, 2, rows, tokens), CARL_OK);
  assert_int_equal(tokens[0], 1);
  assert_int_equal(tokens[1], 1);
  assert_int_equal(tokens[2], 1);
  assert_int_equal(tokens[3], 0);
  carl_placement_free(&p);
}

/* On random decisions (2 x 8 and 4 x 4, flat and hierarchical, with replicas): the rows per device
 * are those of the plan's row lists, and twice the phase time is the cost model's a2a_s. */
static void test_agrees_with_plan(void **s) {
  (void)s;
  const int shapes[2][2] = {{2, 8}, {4, 4}};
  for (int sh = 0; sh < 2; sh++)
    for (int mode = 0; mode < 2; mode++) {
      carl_topo_t t;
      assert_int_equal(carl_topo_make(&t, shapes[sh][0], shapes[sh][1], 160, 3.4, 50, 9.6), CARL_OK);
      const int D = t.devices, E = 32, k = 4, S = 3;
      int32_t *table = malloc(sizeof(int32_t) * D * S);
      for (int b = 0; b < D; b++)
        for (int j = 0; j < S; j++) table[b * S + j] = j < 2 ? (b * 2 + j) % E : (b * 2 + 19) % E; /* third slot: a replica */
      carl_placement_t p;
      assert_int_equal(carl_placement_from_table(&p, E, D, S, table), CARL_OK);
      const int64_t T = 500;
      int32_t *ex = malloc(sizeof(int32_t) * T * k), *src = malloc(sizeof(int32_t) * T);
      uint64_t x = 12345 + sh * 7 + mode;
      for (int64_t i = 0; i < T; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        src[i] = (int32_t)((x >> 33) % (uint64_t)D);
        for (int j = 0; j < k; j++) {
          x = x * 6364136223846793005ULL + 1442695040888963407ULL;
          int e = (int)((x >> 33) % (uint64_t)(E + 1)) - 1; /* -1 sometimes */
          for (int q = 0; q < j; q++)
            if (ex[i * k + q] == e) e = -1;
          ex[i * k + j] = e;
        }
      }
      carl_plan_t plan = {0};
      assert_int_equal(carl_plan_build(&t, &p, ex, src, T, k, (carl_plan_mode)mode, -1, CARL_PLAN_ROWS, &plan), CARL_OK);
      int64_t rows[16], tokens[16];
      assert_int_equal(carl_steptime_load(&t, &p, ex, src, T, k, rows, tokens), CARL_OK);
      int64_t total = 0;
      for (int b = 0; b < D; b++) {
        assert_int_equal(rows[b], plan.recv_off[(b + 1) * S] - plan.recv_off[b * S]);
        total += tokens[b];
      }
      assert_int_equal(total, T);
      carl_cost_t c;
      assert_int_equal(carl_cost_init(&c, &t), CARL_OK);
      assert_int_equal(carl_plan_cost(&t, &plan, 8192, &c), CARL_OK);
      assert_true(NEAR(2 * carl_steptime_phase(&t, c.dispatch, 1.0), c.a2a_s));
      carl_cost_free(&c);
      carl_plan_free(&plan);
      carl_placement_free(&p);
      free(table);
      free(ex);
      free(src);
    }
}

static void test_errors(void **s) {
  (void)s;
  hand_t h;
  hand_setup(&h, 3, 10, 1000);
  carl_steptime_opts_t o;
  carl_steptime_opts_default(&o);
  o.d = 10;
  o.f = 1000;
  carl_steptime_t st;
  /* carl_topo_make gives no device rate */
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "flops"));
  h.t.flops = 1e12;
  o.d = 0;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "d (model width)"));
  o.d = 10;
  o.chunks = 0;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "chunks"));
  o.chunks = 2;
  o.f_shared = 100;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, NULL, &o, &st), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "tokens per device"));
  o.f_shared = 0;
  const double rate[4] = {1e12, 0, 1e12, 1e12};
  o.flops = rate;
  assert_int_equal(carl_steptime_layer(&h.t, h.c.dispatch, h.rows, h.tokens, &o, &st), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "flops[1]"));
  o.flops = NULL;
  const int32_t bad_ex[2] = {0, 4}, bad_src[1] = {5};
  int64_t rows[4];
  assert_int_equal(carl_steptime_load(&h.t, &h.p, bad_ex, NULL, 1, 2, rows, NULL), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "experts[1] = 4"));
  assert_int_equal(carl_steptime_load(&h.t, &h.p, hand_ex, bad_src, 1, 2, rows, NULL), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "src[0] = 5"));
  hand_free(&h);
}

/* The "flops" field of a topology file: peak x efficiency, errors naming the field. */
static void test_topo_flops(void **s) {
  (void)s;
  carl_topo_t t;
  const char *ok = "{\"nodes\":2,\"devices_per_node\":8,\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3.4},"
                   "\"inter\":{\"GBps\":50,\"latency_us\":9.6}},"
                   "\"flops\":{\"device\":\"H800 SXM5\",\"peak_TFLOPS\":989.4,\"efficiency\":0.5}}";
  assert_int_equal(carl_topo_parse(ok, strlen(ok), &t), CARL_OK);
  assert_true(NEAR(t.flops, 494.7e12));
  assert_string_equal(t.device, "H800 SXM5");
  const char *none = "{\"nodes\":1,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},"
                     "\"inter\":{\"GBps\":1,\"latency_us\":1}}}";
  assert_int_equal(carl_topo_parse(none, strlen(none), &t), CARL_OK);
  assert_true(t.flops == 0);
  static const struct {
    const char *flops, *msg;
  } bad[] = {
      {"{\"peak_TFLOPS\":989.4}", "flops.efficiency: missing"},
      {"{\"peak_TFLOPS\":989.4,\"efficiency\":0}", "flops.efficiency must be in (0, 1], got 0"},
      {"{\"peak_TFLOPS\":989.4,\"efficiency\":1.5}", "flops.efficiency must be in (0, 1], got 1.5"},
      {"{\"peak_TFLOPS\":-1,\"efficiency\":0.5}", "flops.peak_TFLOPS must be in [1e-06, 1e+09], got -1"},
      {"{\"peak_TFLOPS\":1e308,\"efficiency\":0.5}", "flops.peak_TFLOPS must be in [1e-06, 1e+09], got 1e+308"},
      {"{\"peak_tflops\":1,\"efficiency\":0.5}", "unknown key \"peak_tflops\""},
      {"3", "flops"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char j[512];
    snprintf(j, sizeof j,
             "{\"nodes\":1,\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":1,\"latency_us\":1},"
             "\"inter\":{\"GBps\":1,\"latency_us\":1}},\"flops\":%s}",
             bad[i].flops);
    assert_int_equal(carl_topo_parse(j, strlen(j), &t), CARL_ERR_INVALID);
    if (!strstr(carl_errmsg(), bad[i].msg)) fail_msg("case %zu: got '%s', want '%s'", i, carl_errmsg(), bad[i].msg);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_hand),        cmocka_unit_test(test_forward_serial),
      cmocka_unit_test(test_training_serial),  cmocka_unit_test(test_pipeline_latency_bound),
      cmocka_unit_test(test_pipeline_bandwidth_bound), cmocka_unit_test(test_slow_device),
      cmocka_unit_test(test_shared_experts),   cmocka_unit_test(test_load_replicas),
      cmocka_unit_test(test_agrees_with_plan), cmocka_unit_test(test_errors),
      cmocka_unit_test(test_topo_flops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
