/* Placement: statistics (hand-computed batches, EMA, merge, .npy round trip), DeepSeek EPLB (the
 * README example and hand-packed cases), placements with known optima, migration plans against a
 * brute force over device relabellings, and bad inputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "carl/array.h"
#include "carl/place.h"

static carl_topo_t topo(int nodes, int per) {
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, nodes, per, 160, 3, 50, 10), CARL_OK);
  return t;
}

/* ---- statistics ---------------------------------------------------------------------------------- */
/* Batch 1 (E=4, N=2): tokens {0,1}@node0, {1,2}@node1, {3,-1}@node1.
 *   load = [1,2,1,1]; traffic node0 = [1,1,0,0], node1 = [0,1,1,1]; coact: (0,1) and (1,2), both ways.
 * Batch 2 (src NULL: token 0 on node 0, token 1 on node 1): {0,0} (counted once), {2,3}.
 *   batch load = [1,0,1,1]; node0 = [1,0,0,0], node1 = [0,0,1,1]; coact (2,3).
 * EMA with decay 0.5: x = 0.5 x + 0.5 b. */
static void test_stats_ema(void **s) {
  (void)s;
  carl_place_stats_t st;
  assert_int_equal(carl_place_stats_init(&st, 2, 4, 2, 0.5), CARL_OK);
  const int32_t ex1[] = {0, 1, 1, 2, 3, -1}, src1[] = {0, 1, 1};
  assert_int_equal(carl_place_stats_add(&st, 1, ex1, src1, 3, 2), CARL_OK);
  const double l1[] = {1, 2, 1, 1}, t1[] = {1, 1, 0, 0, 0, 1, 1, 1};
  for (int e = 0; e < 4; e++) assert_true(st.load[4 + e] == l1[e] && st.load[e] == 0);
  for (int i = 0; i < 8; i++) assert_true(st.traffic[8 + i] == t1[i]);
  const double *C = st.coact + 16;
  assert_true(C[0 * 4 + 1] == 1 && C[1 * 4 + 0] == 1 && C[1 * 4 + 2] == 1 && C[2 * 4 + 1] == 1 && C[0 * 4 + 2] == 0 && C[3 * 4 + 3] == 0);
  const int32_t ex2[] = {0, 0, 2, 3};
  assert_int_equal(carl_place_stats_add(&st, 1, ex2, NULL, 2, 2), CARL_OK);
  const double l2[] = {1, 1, 1, 1}, t2[] = {1, 0.5, 0, 0, 0, 0.5, 1, 1};
  for (int e = 0; e < 4; e++) assert_true(fabs(st.load[4 + e] - l2[e]) < 1e-15);
  for (int i = 0; i < 8; i++) assert_true(fabs(st.traffic[8 + i] - t2[i]) < 1e-15);
  assert_true(C[1] == 0.5 && C[1 * 4 + 2] == 0.5 && C[2 * 4 + 3] == 0.5 && C[3 * 4 + 2] == 0.5 && C[0 * 4 + 3] == 0);
  assert_int_equal(st.batches[1], 2);
  assert_int_equal(st.batches[0], 0);
  /* bad batches change nothing */
  const int32_t bad[] = {0, 4};
  assert_int_equal(carl_place_stats_add(&st, 1, bad, NULL, 1, 2), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "experts[0, 1] = 4"));
  const int32_t badsrc[] = {2};
  assert_int_equal(carl_place_stats_add(&st, 1, ex1, badsrc, 1, 2), CARL_ERR_INVALID);
  assert_int_equal(carl_place_stats_add(&st, 2, ex1, NULL, 1, 2), CARL_ERR_INVALID);
  assert_int_equal(st.batches[1], 2);
  assert_true(st.load[5] == 1);
  carl_place_stats_free(&st);
}

/* Two ranks that each see half of every batch, merged, equal one process that sees all of it
 * (the EMA is linear in the batch). */
static void test_stats_merge(void **s) {
  (void)s;
  const int E = 6, N = 3, T = 40, k = 2;
  carl_place_stats_t all, r0, r1;
  assert_int_equal(carl_place_stats_init(&all, 1, E, N, 0.8), CARL_OK);
  assert_int_equal(carl_place_stats_init(&r0, 1, E, N, 0.8), CARL_OK);
  assert_int_equal(carl_place_stats_init(&r1, 1, E, N, 0.8), CARL_OK);
  int32_t ex[T * k], src[T];
  for (int b = 0; b < 3; b++) {
    for (int i = 0; i < T * k; i++) ex[i] = (int32_t)(carl_rng_uniform(7, 1, (uint64_t)(b * 1000 + i)) * E);
    for (int i = 0; i < T; i++) src[i] = (int32_t)(carl_rng_uniform(7, 2, (uint64_t)(b * 1000 + i)) * N);
    assert_int_equal(carl_place_stats_add(&all, 0, ex, src, T, k), CARL_OK);
    assert_int_equal(carl_place_stats_add(&r0, 0, ex, src, T / 2, k), CARL_OK);
    assert_int_equal(carl_place_stats_add(&r1, 0, ex + T / 2 * k, src + T / 2, T / 2, k), CARL_OK);
  }
  assert_int_equal(carl_place_stats_merge(&r0, &r1), CARL_OK);
  for (int e = 0; e < E; e++) assert_true(fabs(r0.load[e] - all.load[e]) < 1e-12);
  for (int i = 0; i < N * E; i++) assert_true(fabs(r0.traffic[i] - all.traffic[i]) < 1e-12);
  for (int i = 0; i < E * E; i++) assert_true(fabs(r0.coact[i] - all.coact[i]) < 1e-12);
  /* different batch counts or shapes are refused */
  assert_int_equal(carl_place_stats_add(&r1, 0, ex, src, T, k), CARL_OK);
  assert_int_equal(carl_place_stats_merge(&r0, &r1), CARL_ERR_STATE);
  carl_place_stats_t other;
  assert_int_equal(carl_place_stats_init(&other, 1, E + 1, N, 0.8), CARL_OK);
  assert_int_equal(carl_place_stats_merge(&r0, &other), CARL_ERR_SHAPE);
  carl_place_stats_free(&other);
  carl_place_stats_free(&all);
  carl_place_stats_free(&r0);
  carl_place_stats_free(&r1);
}

static void test_stats_files(void **s) {
  (void)s;
  char dir[] = "/tmp/carl_place_statsXXXXXX";
  assert_non_null(mkdtemp(dir));
  carl_place_stats_t st, back;
  assert_int_equal(carl_place_stats_init(&st, 2, 5, 2, 0.9), CARL_OK);
  const int32_t ex[] = {0, 1, 2, 4, 3, 0};
  assert_int_equal(carl_place_stats_add(&st, 0, ex, NULL, 3, 2), CARL_OK);
  assert_int_equal(carl_place_stats_add(&st, 1, ex, NULL, 3, 2), CARL_OK);
  assert_int_equal(carl_place_stats_add(&st, 1, ex + 2, NULL, 2, 2), CARL_OK);
  assert_int_equal(carl_place_stats_save(&st, dir), CARL_OK);
  int ht = 0, hc = 0;
  assert_int_equal(carl_place_stats_load(dir, 0.9, &back, &ht, &hc), CARL_OK);
  assert_true(ht && hc);
  assert_int_equal(back.L, 2);
  assert_int_equal(back.E, 5);
  assert_int_equal(back.N, 2);
  assert_int_equal(back.batches[1], 2);
  assert_memory_equal(back.load, st.load, 2 * 5 * sizeof(double));
  assert_memory_equal(back.traffic, st.traffic, 2 * 2 * 5 * sizeof(double));
  assert_memory_equal(back.coact, st.coact, 2 * 5 * 5 * sizeof(double));
  carl_place_stats_free(&back);
  char p[512];
  /* traffic of the wrong shape: named */
  snprintf(p, sizeof p, "%s/traffic.npy", dir);
  int64_t sh[3] = {2, 2, 6};
  double z[24] = {0};
  assert_int_equal(carl_npy_save(p, CARL_F64, 3, sh, z), CARL_OK);
  assert_int_equal(carl_place_stats_load(dir, 0.9, &back, &ht, &hc), CARL_ERR_SHAPE);
  assert_non_null(strstr(carl_errmsg(), "traffic.npy"));
  unlink(p);
  /* without traffic.npy: loads, flagged */
  assert_int_equal(carl_place_stats_load(dir, 0.9, &back, &ht, &hc), CARL_OK);
  assert_int_equal(ht, 0);
  assert_int_equal(hc, 1);
  carl_place_stats_free(&back);
  /* a negative load is refused */
  snprintf(p, sizeof p, "%s/load.npy", dir);
  double neg[10] = {1, 2, -3, 4, 5, 6, 7, 8, 9, 10};
  int64_t sl[2] = {2, 5};
  assert_int_equal(carl_npy_save(p, CARL_F64, 2, sl, neg), CARL_OK);
  assert_int_equal(carl_place_stats_load(dir, 0.9, &back, &ht, &hc), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "load.npy: element 2"));
  /* 3-d load: shape error */
  int64_t s3[3] = {1, 2, 5};
  assert_int_equal(carl_npy_save(p, CARL_F64, 3, s3, neg), CARL_OK);
  assert_int_equal(carl_place_stats_load(dir, 0.9, &back, &ht, &hc), CARL_ERR_SHAPE);
  const char *names[] = {"load.npy", "traffic.npy", "coact.npy", "batches.npy"};
  for (int i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    unlink(p);
  }
  assert_int_equal(carl_place_stats_load(dir, 0.9, &back, &ht, &hc), CARL_ERR_IO); /* no load.npy */
  rmdir(dir);
  carl_place_stats_free(&st);
}

/* ---- EPLB ---------------------------------------------------------------------------------------- */
/* The example of deepseek-ai/EPLB's README (both layers of its printed output). */
static void test_eplb_readme(void **s) {
  (void)s;
  const double w[2][12] = {{90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86},
                           {20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27}};
  const int32_t want[2][16] = {{5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1},
                               {7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1}};
  for (int l = 0; l < 2; l++) {
    int32_t phy2log[16], cnt[12];
    assert_int_equal(carl_eplb_rebalance(w[l], 12, 16, 4, 2, 8, phy2log, cnt), CARL_OK);
    for (int i = 0; i < 16; i++) assert_int_equal(phy2log[i], want[l][i]);
    int total = 0;
    for (int e = 0; e < 12; e++) total += cnt[e];
    assert_int_equal(total, 16);
  }
  /* the same through carl_place_compute on a 2 x 4 topology: the same table, and the per-GPU loads
   * computed by hand from it: [121.5, 86.5, 125, 113, 147.5, 131.5, 156, 152] (max 156, mean
   * 1033/8), node loads 446 and 587 */
  carl_topo_t t = topo(2, 4);
  carl_place_input_t in = {12, 2, w[0], NULL, NULL, NULL};
  carl_place_opts_t o;
  carl_place_opts_default(&o);
  o.algo = CARL_PLACE_EPLB;
  o.replicas = 16;
  o.groups = 4;
  carl_placement_t p;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
  assert_int_equal(p.slots, 2);
  for (int i = 0; i < 16; i++) assert_int_equal(p.slot_expert[i], want[0][i]);
  carl_place_eval_t ev;
  assert_int_equal(carl_place_evaluate(&t, &in, &p, 1, &ev), CARL_OK);
  assert_true(fabs(ev.dev_max - 156) < 1e-9);
  assert_true(fabs(ev.dev_mean - 1033.0 / 8) < 1e-9);
  assert_true(fabs(ev.node_max - 587) < 1e-9);
  carl_placement_free(&p);
}

/* balanced_packing of w = [5,1,4,2,3,3] into 2 packs of 3, by hand: order 0(5) 2(4) 4(3) 5(3) 3(2) 1(1);
 * 0->p0 (5), 2->p1 (4), 4->p1 (7), 5->p0 (8), 3->p1 (9, full), 1->p0 (9).
 * replicate w = [6,3,2] to 5: +0 (6/1), then 3/1 vs 6/2 tie -> lower index 0; cnt [3,1,1]. */
static void test_eplb_parts(void **s) {
  (void)s;
  const double w[] = {5, 1, 4, 2, 3, 3};
  int32_t pack[6], rank[6];
  assert_int_equal(carl_eplb_balanced_packing(w, 6, 2, pack, rank), CARL_OK);
  const int32_t wp[] = {0, 0, 1, 1, 1, 0}, wr[] = {0, 2, 0, 2, 1, 1};
  for (int i = 0; i < 6; i++) {
    assert_int_equal(pack[i], wp[i]);
    assert_int_equal(rank[i], wr[i]);
  }
  assert_int_equal(carl_eplb_balanced_packing(w, 6, 4, pack, rank), CARL_ERR_INVALID);
  const double w2[] = {6, 3, 2};
  int32_t phy[5], rk[5], cnt[3];
  assert_int_equal(carl_eplb_replicate(w2, 3, 5, phy, rk, cnt), CARL_OK);
  const int32_t wphy[] = {0, 1, 2, 0, 0}, wrk[] = {0, 0, 0, 1, 2};
  for (int i = 0; i < 5; i++) {
    assert_int_equal(phy[i], wphy[i]);
    assert_int_equal(rk[i], wrk[i]);
  }
  assert_int_equal(cnt[0], 3);
  assert_int_equal(cnt[1], 1);
  assert_int_equal(carl_eplb_replicate(w2, 3, 2, phy, rk, cnt), CARL_ERR_INVALID);
  /* float32 as the reference (weight.float()): 16777216 and 16777217 are the same float, so the
   * tie keeps index order: 0 -> GPU 0, 1 -> GPU 1, 3 (2) -> GPU 0 (equal loads: first), 2 -> GPU 1;
   * phy2log [0, 3, 1, 2], which eplb.py prints for these loads. In double, expert 1 would come first
   * and give [1, 2, 0, 3]. */
  const double w3[] = {16777216, 16777217, 1, 2};
  int32_t p3[4], c3[4];
  assert_int_equal(carl_eplb_rebalance(w3, 4, 4, 1, 1, 2, p3, c3), CARL_OK);
  const int32_t want3[] = {0, 3, 1, 2};
  for (int i = 0; i < 4; i++) assert_int_equal(p3[i], want3[i]);
}

/* ---- placements with known optima ------------------------------------------------------------------ */
/* Node 0 sends only to the odd experts, node 1 only to the even ones, equal loads: the optimum keeps
 * every copy inside its node (0 inter-node copies); contiguous sends half of them across. */
static void test_traffic_known(void **s) {
  (void)s;
  carl_topo_t t = topo(2, 2);
  double A[16] = {0}, w[8];
  for (int e = 0; e < 8; e++) {
    A[(e % 2 ? 0 : 1) * 8 + e] = 10;
    w[e] = 10;
  }
  carl_place_input_t in = {8, 2, w, A, NULL, NULL};
  carl_place_opts_t o;
  carl_place_opts_default(&o);
  carl_placement_t p;
  carl_place_eval_t ev;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK); /* contiguous: {0,1},{2,3} | {4,5},{6,7} */
  assert_int_equal(carl_place_evaluate(&t, &in, &p, 100, &ev), CARL_OK);
  assert_true(fabs(ev.inter_copies - 40) < 1e-9); /* 4 experts x 10 on the wrong node */
  assert_true(fabs(ev.bytes[CARL_LINK_INTER] - 40 * 2 * 100) < 1e-6);
  /* the other 40 copies stay in their node: half self, half intra (1/P = 1/2 each) */
  assert_true(fabs(ev.bytes[CARL_LINK_SELF] - 20 * 200) < 1e-6 && fabs(ev.bytes[CARL_LINK_INTRA] - 20 * 200) < 1e-6);
  carl_placement_free(&p);
  o.algo = CARL_PLACE_TRAFFIC;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
  assert_int_equal(carl_place_evaluate(&t, &in, &p, 100, &ev), CARL_OK);
  assert_true(ev.inter_copies == 0);
  assert_true(fabs(ev.dev_max / ev.dev_mean - 1) < 1e-12);
  for (int d = 0; d < 4; d++)
    for (int q = 0; q < 2; q++) assert_int_equal(p.slot_expert[d * 2 + q] % 2, d < 2 ? 1 : 0);
  carl_placement_free(&p);
  /* with 2 replicas per... 12 slots: each node gets 2 extra replicas of the experts it uses */
  o.replicas = 12;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
  assert_int_equal(carl_place_evaluate(&t, &in, &p, 100, &ev), CARL_OK);
  assert_true(ev.inter_copies == 0);
  assert_int_equal(p.rep_off[8], 12);
  carl_placement_free(&p);
}

/* Rack topology (test-rack-4x2: per-device bandwidths intra 200, rack 100/2, inter 50/2 GB/s, so
 * costs intra 25/200 = 0.125, rack 25/50 = 0.5, inter 1). Contiguous, 8 experts, expert e on device e.
 * Node 0 sends 10 copies each to experts 1 (own node), 2 (node 1, same rack), 4 (node 2, other rack).
 * token_bytes 1, so 2 bytes per copy: self 5*2, intra 5*2, rack 10*2, inter 10*2; copies leaving the
 * node 20; cost 10*0.5 + 10*1 + 5*0.125 = 15.625. Then a traffic placement where each node uses its own
 * two experts keeps everything in the node. */
static void test_rack_eval(void **s) {
  (void)s;
  carl_topo_t t;
  assert_int_equal(carl_topo_load("configs/topologies/test-rack-4x2.json", &t), CARL_OK);
  double w[8], A[32] = {0};
  for (int e = 0; e < 8; e++) w[e] = 10;
  A[1] = A[2] = A[4] = 10;
  carl_place_input_t in = {8, 4, w, A, NULL, NULL};
  carl_placement_t p;
  assert_int_equal(carl_placement_contiguous(&p, 8, 8), CARL_OK);
  carl_place_eval_t ev;
  assert_int_equal(carl_place_evaluate(&t, &in, &p, 1, &ev), CARL_OK);
  assert_true(fabs(ev.bytes[CARL_LINK_SELF] - 10) < 1e-12 && fabs(ev.bytes[CARL_LINK_INTRA] - 10) < 1e-12);
  assert_true(fabs(ev.bytes[CARL_LINK_RACK] - 20) < 1e-12 && fabs(ev.bytes[CARL_LINK_INTER] - 20) < 1e-12);
  assert_true(fabs(ev.inter_copies - 20) < 1e-12);
  assert_true(fabs(ev.traffic_cost - 15.625) < 1e-12);
  carl_placement_free(&p);
  /* node n uses experts 7-2n and 6-2n only (the reverse of contiguous) */
  memset(A, 0, sizeof A);
  for (int n = 0; n < 4; n++) A[n * 8 + 7 - 2 * n] = A[n * 8 + 6 - 2 * n] = 10;
  carl_place_opts_t o;
  carl_place_opts_default(&o);
  o.algo = CARL_PLACE_TRAFFIC;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
  assert_int_equal(carl_place_evaluate(&t, &in, &p, 1, &ev), CARL_OK);
  assert_true(ev.inter_copies == 0);
  for (int e = 0; e < 8; e++) assert_int_equal(p.home[e] / 2, (7 - e) / 2);
  carl_placement_free(&p);
}

/* Pairs (0,5) (1,6) (2,7) (3,4) always fire together: the optimum puts each pair on one device. */
static void test_coact_known(void **s) {
  (void)s;
  carl_topo_t t = topo(2, 2);
  double C[64] = {0}, w[8];
  const int pr[4][2] = {{0, 5}, {1, 6}, {2, 7}, {3, 4}};
  for (int i = 0; i < 4; i++) {
    C[pr[i][0] * 8 + pr[i][1]] = C[pr[i][1] * 8 + pr[i][0]] = 50;
  }
  for (int e = 0; e < 8; e++) {
    w[e] = 50;
    C[e * 8 + (e + 1) % 8] += 1; /* a weak ring so that the graph is connected */
    C[((e + 1) % 8) * 8 + e] += 1;
  }
  carl_place_input_t in = {8, 2, w, NULL, C, NULL};
  carl_place_opts_t o;
  carl_place_opts_default(&o);
  o.algo = CARL_PLACE_COACTIVATION;
  carl_placement_t p;
  carl_status st = carl_place_compute(&t, &in, &o, &p);
#ifndef CARL_WITH_METIS
  assert_int_equal(st, CARL_ERR_UNSUPPORTED);
  return;
#endif
  assert_int_equal(st, CARL_OK);
  for (int d = 0; d < 4; d++) {
    int a = p.slot_expert[d * 2], b = p.slot_expert[d * 2 + 1];
    int ok = 0;
    for (int i = 0; i < 4; i++) ok |= (a == pr[i][0] && b == pr[i][1]) || (a == pr[i][1] && b == pr[i][0]);
    assert_true(ok);
  }
  carl_placement_free(&p);
  /* with replicas: every expert still once or more, no device holds one twice (checked by the index) */
  o.replicas = 12;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
  assert_int_equal(p.rep_off[8], 12);
  carl_placement_free(&p);
}

/* Every algorithm gives a valid placement (the index checks ids, duplicates and coverage) with and
 * without replicas, and the same output twice (determinism). */
static void test_all_valid(void **s) {
  (void)s;
  carl_topo_t t = topo(2, 4);
  const int E = 24;
  double w[24], A[48], C[576];
  for (int e = 0; e < E; e++) w[e] = 0;
  for (int n = 0; n < 2; n++)
    for (int e = 0; e < E; e++) {
      A[n * E + e] = floor(100 * carl_rng_uniform(3, 1, (uint64_t)(n * E + e)) / (1 + e % 5));
      w[e] += A[n * E + e];
    }
  for (int i = 0; i < E; i++)
    for (int j = 0; j < E; j++) C[i * E + j] = i == j ? 0 : floor(20 * carl_rng_uniform(3, 2, (uint64_t)(i * E + j)));
  carl_place_input_t in = {E, 2, w, A, C, NULL};
  const int reps[] = {0, 32, 48};
  for (int a = 0; a < CARL_PLACE_NALGO; a++)
    for (int r = 0; r < 3; r++) {
      if ((a <= CARL_PLACE_ROUNDROBIN || a == CARL_PLACE_SMARTMOE) && r > 0) continue; /* no replicas */
#ifndef CARL_WITH_METIS
      if (a == CARL_PLACE_COACTIVATION) continue;
#endif
      carl_place_opts_t o;
      carl_place_opts_default(&o);
      o.algo = (carl_place_algo)a;
      o.replicas = reps[r];
      carl_placement_t p, q;
      assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
      assert_int_equal(carl_place_compute(&t, &in, &o, &q), CARL_OK);
      assert_int_equal(p.slots, reps[r] ? reps[r] / 8 : 3);
      assert_memory_equal(p.slot_expert, q.slot_expert, (size_t)8 * p.slots * sizeof(int32_t));
      const int R = reps[r] ? reps[r] : E;
      if (a == CARL_PLACE_EPLB) {
        /* the reference's table, a second copy of an expert on a GPU left empty */
        int32_t phy2log[48], cnt[24], empty = 0;
        assert_int_equal(carl_eplb_rebalance(w, E, R, 2, 2, 8, phy2log, cnt), CARL_OK);
        for (int i = 0; i < R; i++) {
          int d = i / p.slots, dup = 0;
          for (int j = d * p.slots; j < i; j++) dup |= phy2log[j] == phy2log[i];
          assert_int_equal(p.slot_expert[i], dup ? -1 : phy2log[i]);
          empty += dup;
        }
        assert_int_equal(p.rep_off[E], R - empty);
      } else {
        assert_int_equal(p.rep_off[E], R);
      }
      carl_placement_free(&p);
      carl_placement_free(&q);
    }
}

/* ---- migration ----------------------------------------------------------------------------------- */
/* 1 node x 2 devices: old {0,1},{2,3}; new {2,3},{0,1}. Relabelled: nothing moves; not relabelled:
 * all 4 move, each over intra, 4 x 10 bytes, each device sends 20 and receives 20 bytes:
 * time = 20 / 160e9 s. */
static void test_migrate_hand(void **s) {
  (void)s;
  carl_topo_t t = topo(1, 2);
  const int32_t oldt[] = {0, 1, 2, 3}, newt[] = {3, 2, 1, 0};
  carl_placement_t old, nw;
  carl_migration_t m;
  assert_int_equal(carl_placement_from_table(&old, 4, 2, 2, oldt), CARL_OK);
  assert_int_equal(carl_placement_from_table(&nw, 4, 2, 2, newt), CARL_OK);
  assert_int_equal(carl_place_migrate(&t, &old, &nw, 0, 10, &m), CARL_OK);
  assert_int_equal(m.n_moves, 4);
  assert_true(m.bytes[CARL_LINK_INTRA] == 40 && m.total_bytes == 40);
  assert_true(fabs(m.time_s - 20 / 160e9) < 1e-20);
  carl_migration_free(&m);
  assert_int_equal(carl_place_migrate(&t, &old, &nw, 1, 10, &m), CARL_OK);
  assert_int_equal(m.n_moves, 0);
  assert_int_equal(m.kept, 4);
  for (int i = 0; i < 4; i++) assert_int_equal(nw.slot_expert[i], oldt[i]); /* same slots as before */
  carl_migration_free(&m);
  carl_placement_free(&nw);
  carl_placement_free(&old);
}

/* Random old/new placements on 2 nodes x 3 devices (8 experts + 4 replicas): the plan's moves equal
 * the brute-force minimum over the 3! x 3! relabellings of sum_d |new_d \ old_d|; experts that stay
 * keep their slot; every move reads from a device that held the expert. */
/* A random placement of 8 experts + 4 replicas over 6 devices x 2 slots, no device holding an
 * expert twice (drawn again until valid). */
static void random_table(carl_placement_t *p, uint64_t key) {
  for (uint32_t draw = 0;; draw++) {
    int32_t items[12];
    for (int i = 0; i < 12; i++)
      items[i] = i < 8 ? i : (int32_t)(carl_rng_uniform(key, 100 + draw, (uint64_t)i) * 8);
    for (int i = 11; i > 0; i--) { /* Fisher-Yates */
      int j = (int)(carl_rng_uniform(key, 200 + draw, (uint64_t)i) * (i + 1));
      int32_t x = items[i]; items[i] = items[j]; items[j] = x;
    }
    int ok = 1;
    for (int d = 0; d < 6; d++) ok &= items[d * 2] != items[d * 2 + 1];
    if (ok) {
      assert_int_equal(carl_placement_from_table(p, 8, 6, 2, items), CARL_OK);
      return;
    }
  }
}
static int perm3[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
static void test_migrate_brute(void **s) {
  (void)s;
  carl_topo_t t = topo(2, 3);
  const int D = 6;
  for (int trial = 0; trial < 20; trial++) {
    carl_placement_t pl[2];
    for (int k = 0; k < 2; k++) random_table(&pl[k], (uint64_t)(trial * 2 + k));
    carl_placement_t *old = &pl[0], *nw = &pl[1];
    int32_t newcopy[12];
    memcpy(newcopy, nw->slot_expert, sizeof newcopy);
    int best = 1 << 30;
    for (int a = 0; a < 6; a++)
      for (int b = 0; b < 6; b++) {
        int moves = 0;
        for (int i = 0; i < D; i++) {
          int d = i < 3 ? perm3[a][i] : 3 + perm3[b][i - 3];
          for (int q = 0; q < 2; q++) {
            int e = newcopy[i * 2 + q];
            moves += !(old->slot_expert[d * 2] == e || old->slot_expert[d * 2 + 1] == e);
          }
        }
        if (moves < best) best = moves;
      }
    carl_migration_t m;
    assert_int_equal(carl_place_migrate(&t, old, nw, 1, 7, &m), CARL_OK);
    assert_int_equal(m.n_moves, best);
    assert_int_equal(m.kept + m.n_moves, 12);
    assert_true(fabs(m.total_bytes - 7.0 * best) < 1e-9);
    for (int d = 0; d < D; d++)
      for (int q = 0; q < 2; q++) {
        int e = old->slot_expert[d * 2 + q];
        int there = nw->slot_expert[d * 2] == e || nw->slot_expert[d * 2 + 1] == e;
        if (there) assert_int_equal(nw->slot_expert[d * 2 + q], e);
      }
    for (int64_t i = 0; i < m.n_moves; i++) {
      const carl_move_t *mv = &m.moves[i];
      assert_true(old->slot_expert[mv->src * 2] == mv->expert || old->slot_expert[mv->src * 2 + 1] == mv->expert);
      assert_int_equal(nw->slot_expert[mv->dst * 2 + mv->slot], mv->expert);
    }
    /* node contents are unchanged by the relabelling */
    for (int n = 0; n < 2; n++) {
      int cnt_before[8] = {0}, cnt_after[8] = {0};
      for (int i = n * 6; i < n * 6 + 6; i++) {
        cnt_before[newcopy[i]]++;
        cnt_after[nw->slot_expert[i]]++;
      }
      assert_memory_equal(cnt_before, cnt_after, sizeof cnt_before);
    }
    carl_migration_free(&m);
    carl_placement_free(old);
    carl_placement_free(nw);
  }
}

/* ---- bad inputs ---------------------------------------------------------------------------------- */
static void test_bad_inputs(void **s) {
  (void)s;
  carl_topo_t t = topo(2, 2);
  double w[8] = {1, 2, 3, 4, 5, 6, 7, 8}, A[24] = {0}, C[64] = {0};
  carl_place_input_t in = {8, 2, w, A, C, NULL};
  carl_place_opts_t o;
  carl_placement_t p;
  carl_place_opts_default(&o);
  /* statistics of the wrong shape: traffic with 3 source nodes on a 2-node topology */
  in.N = 3;
  o.algo = CARL_PLACE_TRAFFIC;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_SHAPE);
  assert_non_null(strstr(carl_errmsg(), "traffic has 3 source nodes"));
  in.N = 2;
  /* more experts than slots */
  o.slots = 1;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "cannot hold 8 experts"));
  o.slots = 0;
  /* replicas fewer than experts, or not a multiple of D */
  o.replicas = 4;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "fewer than the 8 experts"));
  o.replicas = 10;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "not a multiple of the 4 devices"));
  o.replicas = 0;
  /* zero devices */
  carl_topo_t z = t;
  z.nodes = 0;
  z.devices = 0;
  assert_int_equal(carl_place_compute(&z, &in, &o, &p), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "at least one device"));
  /* non-finite or negative load */
  w[3] = NAN;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_NUMERIC);
  assert_non_null(strstr(carl_errmsg(), "load[3]"));
  w[3] = -1;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  w[3] = 4;
  /* algorithms without the statistics they need */
  in.traffic = NULL;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "traffic.npy"));
  in.coact = NULL;
  o.algo = CARL_PLACE_COACTIVATION;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "coact.npy"));
  /* baselines do not replicate */
  o.algo = CARL_PLACE_CONTIGUOUS;
  o.replicas = 12;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  o.replicas = 0;
  /* eplb groups that do not divide the experts */
  o.algo = CARL_PLACE_EPLB;
  o.groups = 3;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "groups"));
  /* load bound below 1 */
  o.groups = 0;
  o.load_bound = 0.5;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  carl_place_algo a;
  assert_int_equal(carl_place_algo_parse("metis", &a), CARL_ERR_NOT_FOUND);
  assert_int_equal(carl_place_algo_parse("eplb", &a), CARL_OK);
  assert_int_equal(a, CARL_PLACE_EPLB);
  /* migration between placements of different sizes */
  carl_placement_t a4, a8;
  carl_migration_t m;
  assert_int_equal(carl_placement_contiguous(&a4, 4, 4), CARL_OK);
  assert_int_equal(carl_placement_contiguous(&a8, 8, 4), CARL_OK);
  assert_int_equal(carl_place_migrate(&t, &a4, &a8, 1, 1, &m), CARL_ERR_SHAPE);
  carl_placement_free(&a4);
  carl_placement_free(&a8);
  /* statistics: bad sizes */
  carl_place_stats_t st;
  assert_int_equal(carl_place_stats_init(&st, 1, 0, 2, 0.9), CARL_ERR_INVALID);
  assert_int_equal(carl_place_stats_init(&st, 1, 4, 2, 1.0), CARL_ERR_INVALID);
}

/* SmartMoE's greedy re-placement (ALGORITHMS.md section 4), by hand on 2 devices x 2 slots.
 * (a) loads [5,4,1,2] from the contiguous start (dev0 {0,1}: 9, dev1 {2,3}: 3): order 0 1 3 2;
 *     0 -> dev0 (tie, lower device; also its own) 5; 1 -> dev1 (0 < 5) 4; 3 -> dev1 (4 < 5) 6;
 *     2 -> dev0 (dev1 full) 6. New max 6 < 9: taken, table [0,2 | 1,3].
 * (b) loads [1,5,2,4] from the contiguous start (6 and 6): order 1 3 2 0; 1 -> dev0 5, 3 -> dev1 4,
 *     2 -> dev1 6, 0 -> dev0 6; new max 6 is not below 6: the start is kept, [0,1 | 2,3].
 * (c) the current device wins a tie: from dev0 {2,3}, dev1 {0,1} with loads [4,4,1,1] (2 and 8):
 *     0 -> dev1 (tie 0 = 0, its own device) 4; 1 -> dev0 (0 < 4) 4; 2 -> dev0 (tie, its own) 5;
 *     3 -> dev1 (4 < 5) 5; new max 5 < 8: [1,2 | 0,3] (without the rule it would be [0,2 | 1,3]). */
static void test_smartmoe_hand(void **s) {
  (void)s;
  carl_topo_t t = topo(1, 2);
  carl_place_opts_t o;
  carl_place_opts_default(&o);
  o.algo = CARL_PLACE_SMARTMOE;
  const double wa[] = {5, 4, 1, 2}, wb[] = {1, 5, 2, 4}, wc[] = {4, 4, 1, 1};
  const int32_t want_a[] = {0, 2, 1, 3}, want_b[] = {0, 1, 2, 3}, want_c[] = {1, 2, 0, 3};
  carl_placement_t p;
  carl_place_input_t in = {4, 1, wa, NULL, NULL, NULL};
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
  for (int i = 0; i < 4; i++) assert_int_equal(p.slot_expert[i], want_a[i]);
  carl_placement_free(&p);
  in.load = wb;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
  for (int i = 0; i < 4; i++) assert_int_equal(p.slot_expert[i], want_b[i]);
  carl_placement_free(&p);
  const int32_t cur[] = {2, 3, 0, 1};
  carl_placement_t prev;
  assert_int_equal(carl_placement_from_table(&prev, 4, 2, 2, cur), CARL_OK);
  in.load = wc;
  in.prev = &prev;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
  for (int i = 0; i < 4; i++) assert_int_equal(p.slot_expert[i], want_c[i]);
  carl_placement_free(&p);
  /* no replicas, and a current placement of another shape is named */
  o.replicas = 8;
  assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_ERR_INVALID);
  o.replicas = 0;
  carl_topo_t t4 = topo(1, 4);
  assert_int_equal(carl_place_compute(&t4, &in, &o, &p), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "smartmoe"));
  carl_placement_free(&prev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stats_ema),     cmocka_unit_test(test_stats_merge),   cmocka_unit_test(test_stats_files),
      cmocka_unit_test(test_eplb_readme),   cmocka_unit_test(test_eplb_parts),    cmocka_unit_test(test_traffic_known),
      cmocka_unit_test(test_coact_known),   cmocka_unit_test(test_rack_eval),   cmocka_unit_test(test_all_valid),     cmocka_unit_test(test_migrate_hand),
      cmocka_unit_test(test_migrate_brute), cmocka_unit_test(test_bad_inputs),    cmocka_unit_test(test_smartmoe_hand),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
