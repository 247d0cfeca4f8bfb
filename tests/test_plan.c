/* Dispatch plan and cost model (ALGORITHMS.md section 1, docs/cost-model.md): hand-computed cases,
 * conservation, self-traffic, hierarchical <= flat inter-node bytes, fast == reference. */
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
#include "plan/plan_internal.h"

#define NEAR(x, y) (fabs((x) - (y)) <= 1e-12 * fabs(y) + 1e-18)

/* The test topology of the hand-computed cases: 2 nodes x 2 devices (devices 0,1 on node 0 and
 * 2,3 on node 1), intra 160 GB/s and 3 us, inter 50 GB/s and 10 us; tokens of 1000 bytes.
 * One copy costs 1000/160e9 = 6.25e-9 s intra, 1000/50e9 = 20e-9 s inter. */
static void topo_2x2(carl_topo_t *t) { assert_int_equal(carl_topo_make(t, 2, 2, 160, 3, 50, 10), CARL_OK); }


static void run_both(const carl_topo_t *t, const carl_placement_t *p, const int32_t *ex, const int32_t *src,
                     int64_t T, int k, size_t tb, carl_plan_mode mode, carl_cost_t *fast, carl_cost_t *ref) {
  assert_int_equal(carl_cost_init(fast, t), CARL_OK);
  assert_int_equal(carl_cost_init(ref, t), CARL_OK);
  assert_int_equal(carl_plan_cost_decision(t, p, ex, src, T, k, tb, mode, fast), CARL_OK);
  assert_int_equal(carl__plan_cost_ref(t, p, ex, src, T, k, tb, mode, ref), CARL_OK);
}

static void assert_same_cost(const carl_cost_t *a, const carl_cost_t *b) {
  assert_int_equal(a->D, b->D);
  const int D = a->D;
  for (int i = 0; i < D * CARL_NLINK; i++) {
    assert_true(a->send_bytes[i] == b->send_bytes[i]);
    assert_true(a->recv_bytes[i] == b->recv_bytes[i]);
    assert_int_equal(a->send_msgs[i], b->send_msgs[i]);
    assert_int_equal(a->recv_msgs[i], b->recv_msgs[i]);
  }
  for (int i = 0; i < D * D; i++) {
    assert_true(a->traffic[i] == b->traffic[i]);
    assert_true(a->dispatch[i] == b->dispatch[i]);
  }
  for (int c = 0; c < CARL_NLINK; c++) assert_true(a->bytes[c] == b->bytes[c]);
  assert_int_equal(a->copies, b->copies);
  assert_int_equal(a->calls, b->calls);
  assert_true(NEAR(a->a2a_s, b->a2a_s));
  assert_true(NEAR(a->inter_fraction, b->inter_fraction));
}

/* Tokens (k = 2) on the 2x2 topology with expert e on device e:
 *   t0: src 0, experts {1, 2}    -> devices {1, 2}
 *   t1: src 0, experts {2, 3}    -> devices {2, 3}
 *   t2: src 1, experts {1, 0}    -> devices {1 (self), 0}
 *   t3: src 3, experts {2, -1}   -> device  {2} (the second choice was dropped) */
static const int32_t hand_ex[8] = {1, 2, 2, 3, 1, 0, 2, -1};
static const int32_t hand_src[4] = {0, 0, 1, 3};

static void test_hand_flat(void **s) {
  (void)s;
  carl_topo_t t;
  topo_2x2(&t);
  carl_placement_t p;
  assert_int_equal(carl_placement_contiguous(&p, 4, 4), CARL_OK);
  carl_cost_t c, r;
  run_both(&t, &p, hand_ex, hand_src, 4, 2, 1000, CARL_PLAN_FLAT, &c, &r);
  /* Flat dispatch copies: 0->1 (intra), 0->2 twice (inter), 0->3 (inter), 1->1 (self), 1->0 (intra),
   * 3->2 (intra): 7 copies. Dispatch bytes: intra 3000, inter 3000, self 1000; with the combine
   * mirror every figure doubles: intra 6000, inter 6000, self 2000; inter fraction 6000/12000. */
  assert_int_equal(c.copies, 7);
  assert_true(c.bytes[CARL_LINK_INTRA] == 6000);
  assert_true(c.bytes[CARL_LINK_INTER] == 6000);
  assert_true(c.bytes[CARL_LINK_SELF] == 2000);
  assert_true(c.bytes[CARL_LINK_RACK] == 0);
  assert_true(c.inter_fraction == 0.5);
  /* Traffic matrix (dispatch + combine): [0][2] = 2000 out + 0 back-dispatch = 2000, [2][0] = 2000. */
  assert_true(c.dispatch[0 * 4 + 2] == 2000);
  assert_true(c.traffic[0 * 4 + 2] == 2000 && c.traffic[2 * 4 + 0] == 2000);
  assert_true(c.traffic[0 * 4 + 1] == 2000); /* 0->1 dispatch 1000 + 1->0 dispatch 1000 */
  assert_true(c.traffic[1 * 4 + 1] == 2000); /* self, dispatch + combine */
  /* Device 0: dispatch sends intra 1000 (1 peer) + inter 3000 (2 peers), receives intra 1000 (1 peer).
   * send_bytes = dispatch send + combine send (= dispatch receive): intra 2000, inter 3000. */
  assert_true(c.send_bytes[0 * CARL_NLINK + CARL_LINK_INTRA] == 2000);
  assert_true(c.send_bytes[0 * CARL_NLINK + CARL_LINK_INTER] == 3000);
  assert_int_equal(c.send_msgs[0 * CARL_NLINK + CARL_LINK_INTRA], 2);
  assert_int_equal(c.send_msgs[0 * CARL_NLINK + CARL_LINK_INTER], 2);
  /* Device 2 receives inter 2000 (1 peer) and intra 1000 (1 peer) in dispatch. */
  assert_true(c.recv_bytes[2 * CARL_NLINK + CARL_LINK_INTER] == 2000);
  assert_int_equal(c.recv_msgs[2 * CARL_NLINK + CARL_LINK_INTER], 1);
  /* Phase time: device 0 sending, 1000/160e9 + 3e-6 + 3000/50e9 + 2 * 10e-6 = 23.06625e-6 s, the
   * largest (device 2 receiving: 40e-9 + 10e-6 + 6.25e-9 + 3e-6 = 13.04625e-6). Combine mirrors:
   * a2a = 2 x 23.06625e-6 = 46.1325e-6 s. */
  assert_true(NEAR(c.a2a_s, 46.1325e-6));
  assert_same_cost(&c, &r);
  carl_cost_free(&c);
  carl_cost_free(&r);
  carl_placement_free(&p);
}

static void test_hand_hier(void **s) {
  (void)s;
  carl_topo_t t;
  topo_2x2(&t);
  carl_placement_t p;
  assert_int_equal(carl_placement_contiguous(&p, 4, 4), CARL_OK);
  carl_cost_t c, r;
  run_both(&t, &p, hand_ex, hand_src, 4, 2, 1000, CARL_PLAN_HIER, &c, &r);
  /* Hierarchical: a copy to node 1 from device 0 (local index 0) goes to device 2, which forwards.
   *   t0: 0->1 intra; 0->2 inter (2 is the destination itself)
   *   t1: 0->2 inter once for node 1; 2->3 intra (forward)
   *   t2: 1->1 self, 1->0 intra;   t3: 3->2 intra
   * Dispatch: inter 2000 (flat had 3000), intra 4000, self 1000; doubled by combine: inter 4000,
   * intra 8000, self 2000; inter fraction 4000/12000 = 1/3. Copies still 7 (token, device) pairs. */
  assert_int_equal(c.copies, 7);
  assert_true(c.bytes[CARL_LINK_INTER] == 4000);
  assert_true(c.bytes[CARL_LINK_INTRA] == 8000);
  assert_true(c.bytes[CARL_LINK_SELF] == 2000);
  assert_true(NEAR(c.inter_fraction, 1.0 / 3.0));
  assert_true(c.dispatch[2 * 4 + 3] == 1000); /* the forwarded copy */
  assert_true(c.dispatch[0 * 4 + 3] == 0);
  /* Device 0 sends intra 1000 (1 msg) + inter 2000 (1 msg): 6.25e-9 + 3e-6 + 40e-9 + 10e-6 =
   * 13.04625e-6; device 2 receives the same amount; all others need 3.00625e-6.
   * a2a = 2 x 13.04625e-6 = 26.0925e-6. */
  assert_true(NEAR(c.a2a_s, 26.0925e-6));
  assert_same_cost(&c, &r);
  carl_cost_free(&c);
  carl_cost_free(&r);
  carl_placement_free(&p);
}

/* The mpi executor's time (carl_plan_time_mpi) on the hand case, small-message latencies 1 us
 * intra and 2 us inter:
 * - flat: every device's count exchange reaches 1 intra + 2 inter peers: 1 + 2 x 2 = 5 us per
 *   phase; the copies as carl_plan_cost, 23.06625 us per phase (device 0); total 2 x (5 +
 *   23.06625) = 56.1325 us, of which counts 10 us and data 46.1325 us (= a2a_s above).
 * - flat, self copies at 1e-4 GB/s (1e5 bytes/s): device 1's self copy of t2 (1000 bytes) takes
 *   10 ms; device 1 sends 1000 intra (1 peer) + that: 6.25e-9 + 3e-6 + 0.01 = 0.01000300625 s,
 *   the slowest; total 2 x (5e-6 + 0.01000300625) = 0.0200160125 s.
 * - hierarchical: counts over the inter-node communicator (1 peer, 2 us) and twice over the node
 *   communicator (1 peer, 1 us): 4 us per phase. Inter-node hop: device 0 sends 2000 bytes to 2 in
 *   one message, 40e-9 + 10e-6 = 10.04 us (device 2 receives the same). The node hops: device 0
 *   sends 1000 to 1 and receives 1000 from 1 (3.00625 us), device 2 forwards 1000 to 3 and
 *   receives 1000 from 3 (3.00625 us): 3.00625 us. Total 2 x (4 + 10.04 + 3.00625) = 34.0925 us. */
static void test_hand_mpi_time(void **s) {
  (void)s;
  carl_topo_t t;
  topo_2x2(&t);
  carl_placement_t p;
  assert_int_equal(carl_placement_contiguous(&p, 4, 4), CARL_OK);
  carl_plan_t flat = {0}, hier = {0};
  assert_int_equal(carl_plan_build(&t, &p, hand_ex, hand_src, 4, 2, CARL_PLAN_FLAT, -1, CARL_PLAN_COUNTS, &flat), CARL_OK);
  assert_int_equal(carl_plan_build(&t, &p, hand_ex, hand_src, 4, 2, CARL_PLAN_HIER, -1, CARL_PLAN_COUNTS, &hier), CARL_OK);
  carl_mpi_cost_opts_t o = {{0}, 0};
  o.ctl_latency_us[CARL_LINK_INTRA] = 1;
  o.ctl_latency_us[CARL_LINK_INTER] = 2;
  carl_mpi_time_t m;
  assert_int_equal(carl_plan_time_mpi(&t, &flat, 1000, &o, &m), CARL_OK);
  assert_true(NEAR(m.counts_s, 10e-6));
  assert_true(NEAR(m.data_s, 46.1325e-6));
  assert_true(NEAR(m.total_s, 56.1325e-6));
  o.self_GBps = 1e-4;
  assert_int_equal(carl_plan_time_mpi(&t, &flat, 1000, &o, &m), CARL_OK);
  assert_true(NEAR(m.total_s, 0.0200160125));
  o.self_GBps = 0;
  assert_int_equal(carl_plan_time_mpi(&t, &hier, 1000, &o, &m), CARL_OK);
  assert_true(NEAR(m.counts_s, 8e-6));
  assert_true(NEAR(m.data_s, 2 * (10.04e-6 + 3.00625e-6)));
  assert_true(NEAR(m.total_s, 34.0925e-6));
  /* bad input */
  o.ctl_latency_us[CARL_LINK_INTER] = -1;
  assert_int_equal(carl_plan_time_mpi(&t, &flat, 1000, &o, &m), CARL_ERR_INVALID);
  o.ctl_latency_us[CARL_LINK_INTER] = 2, o.self_GBps = NAN;
  assert_int_equal(carl_plan_time_mpi(&t, &flat, 1000, &o, &m), CARL_ERR_INVALID);
  o.self_GBps = 0;
  assert_int_equal(carl_plan_time_mpi(&t, &flat, 0, &o, &m), CARL_ERR_INVALID);
  carl_plan_free(&flat);
  carl_plan_free(&hier);
  carl_placement_free(&p);
}

static void test_replicas(void **s) {
  (void)s;
  carl_topo_t t;
  topo_2x2(&t);
  /* Expert 0 on devices 0 and 2, expert 3 on devices 0 and 3, 1 on 1, 2 on 2. */
  const int32_t table[8] = {0, 3, 1, -1, 2, 0, 3, -1};
  carl_placement_t p;
  assert_int_equal(carl_placement_from_table(&p, 4, 4, 2, table), CARL_OK);
  /* Nearest replica: from device 1, expert 0 is on 0 (intra) or 2 (inter): 0. From device 3: 2. */
  assert_int_equal(carl_plan_replica(&t, &p, 0, 1, 0), 0);
  assert_int_equal(carl_plan_replica(&t, &p, 0, 3, 0), 2);
  assert_int_equal(carl_plan_replica(&t, &p, 0, 2, 7), 2); /* self */
  assert_int_equal(carl_plan_replica(&t, &p, 3, 2, 0), 3);
  assert_int_equal(carl_plan_replica(&t, &p, 3, 1, 5), 0);
  assert_int_equal(carl_plan_replica(&t, &p, 1, 3, 0), 1); /* single replica */
  /* Tokens (k = 2):
   *   t0: src 1, experts {0, 3} -> both nearest on device 0: one copy 1->0 (intra; dedup per device)
   *   t1: src 3, experts {0, 1} -> 0 on device 2 (intra), 1 on device 1 (inter): 3->2, 3->1
   *   t2: src 2, experts {3, 0} -> 3 on device 3 (intra), 0 on device 2 (self): 2->3, 2->2
   * Copies 5. Dispatch intra 3000, inter 1000, self 1000; doubled: 6000, 2000, 2000; inter
   * fraction 2000/8000 = 0.25. Slowest device: 3 sending intra 1000 + inter 1000 (2 messages):
   * 6.25e-9 + 3e-6 + 20e-9 + 10e-6 = 13.02625e-6; a2a = 26.0525e-6. Hierarchical is the same here:
   * device 3 (local index 1) reaches node 0 at device 1, the destination itself. */
  const int32_t ex[6] = {0, 3, 0, 1, 3, 0}, src[3] = {1, 3, 2};
  for (int mode = 0; mode < 2; mode++) {
    carl_cost_t c, r;
    run_both(&t, &p, ex, src, 3, 2, 1000, (carl_plan_mode)mode, &c, &r);
    assert_int_equal(c.copies, 5);
    assert_true(c.bytes[CARL_LINK_INTRA] == 6000);
    assert_true(c.bytes[CARL_LINK_INTER] == 2000);
    assert_true(c.bytes[CARL_LINK_SELF] == 2000);
    assert_true(c.inter_fraction == 0.25);
    assert_true(NEAR(c.a2a_s, 26.0525e-6));
    assert_same_cost(&c, &r);
    carl_cost_free(&c);
    carl_cost_free(&r);
  }
  carl_placement_free(&p);
  /* Tie rule: expert 2 on devices 2 and 3, both inter from device 0: token index even -> 2 (the
   * first in ascending order), odd -> 3. */
  const int32_t tie[4] = {0, 1, 2, 2};
  assert_int_equal(carl_placement_from_table(&p, 3, 4, 1, tie), CARL_OK);
  assert_int_equal(carl_plan_replica(&t, &p, 2, 0, 0), 2);
  assert_int_equal(carl_plan_replica(&t, &p, 2, 0, 1), 3);
  assert_int_equal(carl_plan_replica(&t, &p, 2, 0, 4), 2);
  assert_int_equal(carl_plan_replica(&t, &p, 2, 1, 3), 3);
  assert_int_equal(carl_plan_replica(&t, &p, 2, 3, 0), 3); /* self wins */
  carl_placement_free(&p);
}

/* Tokens whose experts are all on their own device cost nothing. */
static void test_self_free(void **s) {
  (void)s;
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, 2, 4, 160, 3, 50, 10), CARL_OK);
  carl_placement_t p;
  assert_int_equal(carl_placement_contiguous(&p, 16, 8), CARL_OK); /* experts 2d, 2d+1 on device d */
  enum { T = 64 };
  int32_t ex[T * 2], src[T];
  for (int i = 0; i < T; i++) {
    src[i] = i % 8;
    ex[2 * i] = 2 * src[i];
    ex[2 * i + 1] = 2 * src[i] + 1;
  }
  for (int mode = 0; mode < 2; mode++) {
    carl_cost_t c, r;
    run_both(&t, &p, ex, src, T, 2, 512, (carl_plan_mode)mode, &c, &r);
    assert_true(c.a2a_s == 0.0);
    assert_true(c.bytes[CARL_LINK_INTRA] == 0 && c.bytes[CARL_LINK_INTER] == 0);
    assert_true(c.bytes[CARL_LINK_SELF] == 2.0 * T * 512); /* one copy per token, dispatch + combine */
    assert_int_equal(c.copies, T);
    assert_true(c.inter_fraction == 0.0);
    assert_same_cost(&c, &r);
    carl_cost_free(&c);
    carl_cost_free(&r);
  }
  carl_placement_free(&p);
}

/* ---- random cases ---- */

static uint64_t rnd(uint64_t seed, uint64_t i, uint64_t n) {
  return (uint64_t)(carl_rng_uniform64(seed, CARL_STREAM_DATA, i) * (double)n);
}

/* A random placement: contiguous plus one extra slot per device holding a random replica (or empty). */
static void random_placement(carl_placement_t *p, int E, int D, uint64_t seed) {
  int base = (E + D - 1) / D, S = base + 1;
  carl_placement_t c;
  assert_int_equal(carl_placement_contiguous(&c, E, D), CARL_OK);
  int32_t *tab = malloc((size_t)D * S * sizeof *tab);
  for (int d = 0; d < D; d++) {
    for (int s2 = 0; s2 < base; s2++) tab[d * S + s2] = c.slot_expert[d * base + s2];
    int e = (int)rnd(seed, (uint64_t)d, (uint64_t)E + 2);
    int dup = 0;
    for (int s2 = 0; s2 < base; s2++) dup |= tab[d * S + s2] == e;
    tab[d * S + base] = (e >= E || dup) ? -1 : e;
  }
  assert_int_equal(carl_placement_from_table(p, E, D, S, tab), CARL_OK);
  free(tab);
  carl_placement_free(&c);
}

static void random_case(const carl_topo_t *t, int E, int k, int64_t T, uint64_t seed, int with_src) {
  carl_placement_t p;
  if (seed % 2)
    random_placement(&p, E, t->devices, seed);
  else
    assert_int_equal(carl_placement_contiguous(&p, E, t->devices), CARL_OK); /* no replicas */
  int32_t *ex = malloc((size_t)T * k * sizeof *ex), *src = malloc((size_t)T * sizeof *src);
  for (int64_t i = 0; i < T * k; i++) {
    uint64_t r = rnd(seed + 1, (uint64_t)i, (uint64_t)E + 1);
    ex[i] = r == (uint64_t)E ? -1 : (int32_t)r; /* about 1/(E+1) dropped */
  }
  for (int64_t i = 0; i < T; i++) src[i] = (int32_t)rnd(seed + 2, (uint64_t)i, (uint64_t)t->devices);
  carl_cost_t cost[2][2]; /* [mode][fast, ref] */
  for (int mode = 0; mode < 2; mode++) {
    carl_cost_t *c = &cost[mode][0], *r = &cost[mode][1];
    run_both(t, &p, ex, with_src ? src : NULL, T, k, 7168, (carl_plan_mode)mode, c, r);
    /* a second call accumulates (one more layer) */
    assert_int_equal(carl_plan_cost_decision(t, &p, ex, with_src ? src : NULL, T, k, 7168, (carl_plan_mode)mode, c), CARL_OK);
    assert_int_equal(carl__plan_cost_ref(t, &p, ex, with_src ? src : NULL, T, k, 7168, (carl_plan_mode)mode, r),
                     CARL_OK);
    assert_same_cost(c, r);
    /* conservation: per class, bytes sent = bytes received = the class total */
    for (int cls = 0; cls < CARL_NLINK; cls++) {
      double sb = 0, rb = 0;
      int64_t sm = 0, rm = 0;
      for (int a = 0; a < t->devices; a++) {
        sb += c->send_bytes[a * CARL_NLINK + cls];
        rb += c->recv_bytes[a * CARL_NLINK + cls];
        sm += c->send_msgs[a * CARL_NLINK + cls];
        rm += c->recv_msgs[a * CARL_NLINK + cls];
      }
      assert_true(sb == rb);
      assert_true(sb == c->bytes[cls]);
      assert_int_equal(sm, rm);
    }
    /* flat: every (token, device) copy moves once per phase */
    if (mode == CARL_PLAN_FLAT) {
      double all = 0;
      for (int cls = 0; cls < CARL_NLINK; cls++) all += c->bytes[cls];
      assert_true(all == 2.0 * (double)c->copies * 7168);
    }
  }
  /* brute-force copy count: distinct nearest-replica devices per token, two calls */
  int64_t copies = 0;
  for (int64_t i = 0; i < T; i++) {
    int a = with_src ? src[i] : (int)(i * t->devices / T);
    char seen[256] = {0};
    for (int j = 0; j < k; j++) {
      int e = ex[i * k + j];
      if (e < 0) continue;
      int b = carl_plan_replica(t, &p, e, a, i);
      if (!seen[b]) copies++;
      seen[b] = 1;
    }
  }
  assert_int_equal(cost[0][0].copies, 2 * copies);
  /* hierarchical never moves more bytes across nodes than flat */
  assert_true(cost[1][0].bytes[CARL_LINK_INTER] + cost[1][0].bytes[CARL_LINK_RACK] <=
              cost[0][0].bytes[CARL_LINK_INTER] + cost[0][0].bytes[CARL_LINK_RACK]);
  for (int mode = 0; mode < 2; mode++)
    for (int w = 0; w < 2; w++) carl_cost_free(&cost[mode][w]);
  free(ex);
  free(src);
  carl_placement_free(&p);
}

/* Odd seeds use placements with replicas, even seeds contiguous ones: together they reach every
 * kernel of the fast path (with AVX-512 where the CPU has it and, in a second pass, without). */
static void test_random_fast_vs_ref(void **s) {
  (void)s;
  for (int pass = 0; pass < 2; pass++) {
  carl__plan_simd = pass == 0 ? -1 : 0;
  carl_topo_t t;
  uint64_t seed = 100;
  /* small bit-mask path (D <= 64) */
  topo_2x2(&t);
  random_case(&t, 4, 2, 300, seed++, 1);
  random_case(&t, 9, 3, 501, seed++, 0);
  assert_int_equal(carl_topo_make(&t, 2, 8, 160, 3.4, 50, 9.6), CARL_OK);
  random_case(&t, 64, 8, 2000, seed++, 1);
  random_case(&t, 16, 4, 1000, seed++, 0);
  assert_int_equal(carl_topo_make(&t, 8, 8, 160, 3.4, 50, 9.6), CARL_OK);
  random_case(&t, 256, 8, 3000, seed++, 1);
  random_case(&t, 256, 8, 40000, seed++, 1); /* several threads */
  /* rack level and shared NICs */
  assert_int_equal(carl_topo_load("configs/topologies/test-rack-4x2.json", &t), CARL_OK);
  random_case(&t, 12, 4, 800, seed++, 1);
  /* list path (D > 64): 9 nodes x 8, and 3 nodes x 32 */
  assert_int_equal(carl_topo_make(&t, 9, 8, 160, 3.4, 50, 9.6), CARL_OK);
  random_case(&t, 144, 6, 2000, seed++, 1);
  random_case(&t, 144, 6, 20000, seed++, 0);
  assert_int_equal(carl_topo_make(&t, 3, 32, 160, 3.4, 50, 9.6), CARL_OK);
  random_case(&t, 96, 8, 1500, seed++, 1);
  /* one device per node */
  assert_int_equal(carl_topo_make(&t, 5, 1, 160, 3.4, 50, 9.6), CARL_OK);
  random_case(&t, 10, 2, 700, seed++, 1);
  random_case(&t, 10, 3, 900, seed++, 1);
  /* more than 8 nodes within 64 devices; 64 nodes of 1; one node of 64 */
  assert_int_equal(carl_topo_make(&t, 16, 4, 160, 3.4, 50, 9.6), CARL_OK);
  random_case(&t, 128, 8, 30000, seed++, 1);
  random_case(&t, 64, 5, 3000, seed++, 1);
  random_case(&t, 64, 6, 3000, seed++, 0);
  assert_int_equal(carl_topo_make(&t, 64, 1, 160, 3.4, 50, 9.6), CARL_OK);
  random_case(&t, 64, 8, 20000, seed++, 1);
  random_case(&t, 64, 4, 2000, seed++, 1);
  assert_int_equal(carl_topo_make(&t, 1, 64, 160, 3.4, 50, 9.6), CARL_OK);
  random_case(&t, 256, 8, 20000, seed++, 0);
  random_case(&t, 256, 8, 2000, seed++, 0);
  assert_int_equal(carl_topo_make(&t, 8, 8, 160, 3.4, 50, 9.6), CARL_OK);
  random_case(&t, 256, 8, 20000, seed++, 0); /* sources NULL: long runs of one source device */
  random_case(&t, 256, 8, 20001, seed++, 1);
  random_case(&t, 256, 8, 20000, seed++, 1);
  /* contiguous placements with 2^s experts per device and k = 8 (even seeds: no replicas), where the
   * AVX-512 kernel forms device(e) = e >> s without a table; odd T leaves one token after the pairs */
  random_case(&t, 64, 8, 3001, 200, 1);   /* s = 0 */
  random_case(&t, 512, 8, 5003, 202, 1);  /* s = 3 */
  random_case(&t, 128, 8, 20001, 204, 0); /* s = 1, sources NULL */
  assert_int_equal(carl_topo_make(&t, 4, 4, 160, 3.4, 50, 9.6), CARL_OK); /* 4 devices per node */
  random_case(&t, 32, 8, 2001, 206, 1);   /* s = 1 */
  random_case(&t, 256, 8, 3000, 208, 1);  /* s = 4 */
  assert_int_equal(carl_topo_make(&t, 2, 16, 160, 3.4, 50, 9.6), CARL_OK); /* 16 devices per node */
  random_case(&t, 128, 8, 2999, 210, 1);  /* s = 2 */
  }
  carl__plan_simd = -1;
}

static void test_errors(void **s) {
  (void)s;
  carl_topo_t t;
  topo_2x2(&t);
  carl_placement_t p;
  assert_int_equal(carl_placement_contiguous(&p, 4, 4), CARL_OK);
  carl_cost_t c;
  assert_int_equal(carl_cost_init(&c, &t), CARL_OK);
  int32_t ex[4] = {0, 1, 7, 2}, src[2] = {0, 1};
  assert_int_equal(carl_plan_cost_decision(&t, &p, ex, src, 2, 2, 100, CARL_PLAN_FLAT, &c), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "experts[1, 0] = 7 is not an expert id in [-1, 4)");
  assert_int_equal(carl__plan_cost_ref(&t, &p, ex, src, 2, 2, 100, CARL_PLAN_FLAT, &c), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "experts[1, 0] = 7 is not an expert id in [-1, 4)");
  ex[2] = -2;
  assert_int_equal(carl_plan_cost_decision(&t, &p, ex, src, 2, 2, 100, CARL_PLAN_HIER, &c), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "= -2 is not an expert id"));
  ex[2] = 3;
  src[1] = 4;
  assert_int_equal(carl_plan_cost_decision(&t, &p, ex, src, 2, 2, 100, CARL_PLAN_FLAT, &c), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "src[1] = 4 is not a device in [0, 4)");
  src[1] = 1;
  assert_int_equal(carl_plan_cost_decision(&t, &p, ex, src, 2, 0, 100, CARL_PLAN_FLAT, &c), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "k must be in [1,"));
  assert_int_equal(carl_plan_cost_decision(&t, &p, ex, src, 2, 2, 0, CARL_PLAN_FLAT, &c), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "token_bytes must be > 0");
  /* nothing was accumulated by the failed calls */
  assert_int_equal(c.calls, 0);
  assert_true(c.bytes[CARL_LINK_INTRA] == 0 && c.a2a_s == 0);
  carl_placement_t q;
  assert_int_equal(carl_placement_contiguous(&q, 4, 8), CARL_OK);
  assert_int_equal(carl_plan_cost_decision(&t, &q, ex, src, 2, 2, 100, CARL_PLAN_FLAT, &c), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "placement has 8 devices but the topology has 4");
  carl_placement_free(&q);
  /* T = 0 is a valid empty step */
  assert_int_equal(carl_plan_cost_decision(&t, &p, NULL, NULL, 0, 2, 100, CARL_PLAN_FLAT, &c), CARL_OK);
  assert_true(c.a2a_s == 0 && c.copies == 0);
  carl_cost_free(&c);
  carl_placement_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hand_flat),  cmocka_unit_test(test_hand_hier),          cmocka_unit_test(test_hand_mpi_time),          cmocka_unit_test(test_replicas),
      cmocka_unit_test(test_self_free),  cmocka_unit_test(test_random_fast_vs_ref), cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
