/* carl router: every component off equals topk; the comm-aware utility and the hierarchical
 * selection by hand; the Sinkhorn warm start against a reference written here; the adaptive
 * controller against hand-iterated values; the total loss gradient by finite differences; fewer
 * inter-node copies than topk (brute-force count); save/load; bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <omp.h>
#include <stdio.h>
#include <unistd.h>

#include "carl/adaptive.h"
#include "carl/topo.h"
#include "route_testutil.h"

static carl_topo_t topo(int nodes, int per) {
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, nodes, per, 160, 3, 50, 10), CARL_OK);
  return t;
}

static double loss_named(const carl_route_out_t *o, const char *name) {
  for (int i = 0; i < o->nloss; i++)
    if (!strcmp(o->loss[i].name, name)) return o->loss[i].value;
  return NAN;
}

/* comm = hier = adaptive = warm = queue = 0 (alpha0 = 0): the router is topk, bitwise: experts, weights,
 * losses and their gradient, with and without capacity. */
static void test_all_off_is_topk(void **st) {
  (void)st;
  enum { T = 512, E = 16, k = 2 };
  float *z = malloc(sizeof(float) * T * E);
  double off[E] = {1, 0.5, 0, 0, 0.2, 0, 0, 0, 0, 0.7, 0, 0, 0, 0, 0, 0.3};
  tu_logits(z, T, E, off, 1.0, 21);
  int32_t src[T];
  for (int t = 0; t < T; t++) src[t] = (t * 5) % 4;
  carl_topo_t tp = topo(2, 2);
  const char *extra[] = {"aux=0.01", "capacity_factor=1 aux=0", "jitter=0.1 aux=0.02 z_loss=0.002"};
  for (int m = 0; m < 3; m++) {
    char oa[160], ob[64];
    snprintf(oa, sizeof oa, "comm=0 hier=0 adaptive=0 warm=0 queue=0 %s", extra[m]);
    snprintf(ob, sizeof ob, "%s", extra[m]);
    carl_router_t *a, *b;
    assert_int_equal(tu_create("carl", oa, &a), CARL_OK);
    assert_int_equal(tu_create("topk", ob, &b), CARL_OK);
    tu_out_t x, y;
    tu_out_init(&x, T, E, k, 1);
    tu_out_init(&y, T, E, k, 1);
    carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = src, .topo = &tp, .seed = 5, .step = 3};
    assert_int_equal(carl_router_route(a, &in, &x.out), CARL_OK);
    assert_int_equal(carl_router_route(b, &in, &y.out), CARL_OK);
    assert_memory_equal(x.experts, y.experts, sizeof(int32_t) * T * k);
    assert_memory_equal(x.weights, y.weights, sizeof(float) * T * k);
    assert_memory_equal(x.dlogits, y.dlogits, sizeof(float) * T * E);
    assert_true(x.out.loss_total == y.out.loss_total);
    assert_int_equal(x.out.dropped, y.out.dropped);
    if (m == 1) assert_true(x.out.dropped > 0);
    /* the update of carl does not change its decisions when adaptive = 0 */
    assert_int_equal(carl_router_update(a, &in, &x.out), CARL_OK);
    assert_int_equal(carl_router_route(a, &in, &x.out), CARL_OK);
    assert_memory_equal(x.experts, y.experts, sizeof(int32_t) * T * k);
    tu_out_free(&x);
    tu_out_free(&y);
    carl_router_free(a);
    carl_router_free(b);
  }
  free(z);
}

/* Comm-aware utility, flat selection (hier = 0): 2 nodes x 1 device, E = 4, experts {0,1} on
 * device 0 and {2,3} on device 1; c^ = 1 across nodes; lambda_c = .1; s = [.25, .3, .32, .13].
 *   token on device 0: u = [.25, .3, .22, .03] -> {1, 0}; gates .3/.55 = .5454545, .25/.55 = .4545455
 *     (topk would pick {2, 1});
 *   token on device 1: u = [.15, .2, .32, .13] -> {2, 1}; gates .32/.62 = .5161290, .3/.62 = .4838710. */
static void test_comm_hand(void **st) {
  (void)st;
  float z[8];
  const float s[4] = {.25f, .3f, .32f, .13f};
  for (int e = 0; e < 4; e++) z[e] = z[4 + e] = logf(s[e]);
  int32_t src[2] = {0, 1};
  carl_topo_t tp = topo(2, 1);
  carl_router_t *r;
  assert_int_equal(tu_create("carl", "hier=0 warm=0", &r), CARL_OK);
  assert_float_equal(carl_router_get(r, "lambda_c"), 0.1, 0);
  tu_out_t o;
  tu_out_init(&o, 2, 4, 2, 0);
  carl_route_in_t in = {.T = 2, .E = 4, .logits = z, .src = src, .topo = &tp};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  int32_t want[4] = {1, 0, 2, 1};
  assert_memory_equal(o.experts, want, sizeof want);
  assert_float_equal(o.weights[0], .3 / .55, 1e-6);
  assert_float_equal(o.weights[1], .25 / .55, 1e-6);
  assert_float_equal(o.weights[2], .32 / .62, 1e-6);
  assert_float_equal(o.weights[3], .3 / .62, 1e-6);
  tu_out_free(&o);
  carl_router_free(r);
}

/* The queue term (straggler-aware utility), by hand. The set-up of test_comm_hand (2 nodes x 1
 * device, experts {0,1} on device 0 and {2,3} on device 1, lambda_c = .1, s = [.25, .3, .32, .13],
 * tokens on devices 0 and 1), eta_q = .1.
 *   route 1 (q = 0): {1, 0} and {2, 1} as in test_comm_hand; rows per device [3, 1], mean 2;
 *   update: q_0 = .1 (3/2 - 1) = .05, q_1 = .1 (1/2 - 1) = -.05 (mean 0: the centring is a no-op);
 *   route 2: token on device 0: u = [.25 - .05, .3 - .05, .32 - .1 + .05, .13 - .1 + .05]
 *            = [.20, .25, .27, .08] -> {2, 1} (expert 0 gives way to expert 2 across the nodes:
 *            the queue of device 0 outweighs the copy cost), gates .32/.62, .3/.62;
 *            token on device 1: u = [.10, .15, .37, .18] -> {2, 3}, gates .32/.45, .13/.45;
 *            rows [1, 3];
 *   update: q = [.05 + .1 (1/2 - 1), -.05 + .1 (3/2 - 1)] = [0, 0].
 * With q_max = .01 the prices after route 1 are clipped to [.01, -.01]; token on device 0:
 * u = [.24, .29, .23, .04] -> {1, 0}, no flip. A state saved with the prices loads them back; one
 * of the three values written before the queue term loads with q = 0. */
static void test_queue_hand(void **st) {
  (void)st;
  float z[8];
  const float s[4] = {.25f, .3f, .32f, .13f};
  for (int e = 0; e < 4; e++) z[e] = z[4 + e] = logf(s[e]);
  int32_t src[2] = {0, 1};
  carl_topo_t tp = topo(2, 1);
  carl_router_t *r;
  assert_int_equal(tu_create("carl", "hier=0 warm=0 adaptive=0 eta_q=0.1", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, 2, 4, 2, 0);
  carl_route_in_t in = {.T = 2, .E = 4, .logits = z, .src = src, .topo = &tp};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  int32_t want1[4] = {1, 0, 2, 1};
  assert_memory_equal(o.experts, want1, sizeof want1);
  assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  /* a copy of the state now (q = [.05, -.05]) for the load checks below */
  char path[] = "/tmp/carl_queue_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(carl_router_save(r, path), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  int32_t want2[4] = {2, 1, 2, 3};
  assert_memory_equal(o.experts, want2, sizeof want2);
  assert_float_equal(o.weights[0], .32 / .62, 1e-6);
  assert_float_equal(o.weights[1], .3 / .62, 1e-6);
  assert_float_equal(o.weights[2], .32 / .45, 1e-6);
  assert_float_equal(o.weights[3], .13 / .45, 1e-6);
  assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK); /* q = [0, 0]: route 1 again */
  assert_memory_equal(o.experts, want1, sizeof want1);
  carl_router_free(r);
  /* the saved prices load back: route 2's decisions */
  assert_int_equal(tu_create("carl", "hier=0 warm=0 adaptive=0 eta_q=0.1", &r), CARL_OK);
  assert_int_equal(carl_router_load(r, path), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_memory_equal(o.experts, want2, sizeof want2);
  carl_router_free(r);
  /* a state of 3 values (alpha_E, alpha_G, steps: the format before the queue term): q = 0 */
  const double old[3] = {0, 0, 1};
  assert_int_equal(carl_route_state_save(path, "carl", CARL_STATE_F64, 3, old), CARL_OK);
  assert_int_equal(tu_create("carl", "hier=0 warm=0 adaptive=0 eta_q=0.1", &r), CARL_OK);
  assert_int_equal(carl_router_load(r, path), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_memory_equal(o.experts, want1, sizeof want1);
  carl_router_free(r);
  unlink(path);
  /* clipped prices: no flip */
  assert_int_equal(tu_create("carl", "hier=0 warm=0 adaptive=0 eta_q=0.1 q_max=0.01", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_memory_equal(o.experts, want1, sizeof want1);
  carl_router_free(r);
  /* queue = 0: the prices stay off */
  assert_int_equal(tu_create("carl", "hier=0 warm=0 adaptive=0 eta_q=0.1 queue=0", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_memory_equal(o.experts, want1, sizeof want1);
  carl_router_free(r);
  tu_out_free(&o);
}

/* Copy cost per (token, device) (dedup), by hand. 2 nodes x 2 devices, E = 8 (expert e on device
 * e/2), k = 2, lambda_c = .1, token on device 0; c^ = 0 (device 0), .3125 (device 1), 1 (node 1),
 * and .3125 from device 2 (the forwarder of device 0 on node 1) to device 3. hier = 0.
 * Case A: s = [.05, .04, .40, .10, .18, .08, .08, .07].
 *   dedup = 0: u = s - .1 c^ = [.05, .04, .36875, .06875, .08, -.02, -.02, -.03] -> {2, 4};
 *   dedup = 1: first 2 (.36875); device 1 is then reached, u_3 = .10 > u_4 = .08 > u_0 = .05
 *              -> {2, 3}, gates .4/.5, .1/.5.
 * Case B: s = [.05, .04, .06, .02, .60, .03, .13, .07]; first pick 4 (u = .50) in every mode.
 *   dedup = 1 (flat): u_6 = .13 - .1 = .03, u_5 = .03 (device 2 reached), u_0 = .05 -> {4, 0};
 *   dedup = 2 (hierarchical): node 1 is reached, expert 6 costs the forward 2 -> 3 only:
 *              u_6 = .13 - .03125 = .09875 > u_0 -> {4, 6}, gates .6/.73, .13/.73;
 *   dedup = 0: u as in the first pick -> {4, 0}. */
static void test_dedup_hand(void **st) {
  (void)st;
  const float sa[8] = {.05f, .04f, .40f, .10f, .18f, .08f, .08f, .07f};
  const float sb[8] = {.05f, .04f, .06f, .02f, .60f, .03f, .13f, .07f};
  const float *ss[2] = {sa, sb};
  const int32_t want[2][3][2] = {{{2, 4}, {2, 3}, {2, 3}}, {{4, 0}, {4, 0}, {4, 6}}};
  const double gates[2][3][2] = {{{.4 / .58, .18 / .58}, {.4 / .5, .1 / .5}, {.4 / .5, .1 / .5}},
                                 {{.6 / .65, .05 / .65}, {.6 / .65, .05 / .65}, {.6 / .73, .13 / .73}}};
  int32_t src[1] = {0};
  carl_topo_t tp = topo(2, 2);
  for (int c = 0; c < 2; c++)
    for (int m = 0; m < 3; m++) {
      float z[8];
      for (int e = 0; e < 8; e++) z[e] = logf(ss[c][e]);
      char opts[96];
      snprintf(opts, sizeof opts, "hier=0 warm=0 adaptive=0 queue=0 dedup=%d", m);
      carl_router_t *r;
      assert_int_equal(tu_create("carl", opts, &r), CARL_OK);
      tu_out_t o;
      tu_out_init(&o, 1, 8, 2, 0);
      carl_route_in_t in = {.T = 1, .E = 8, .logits = z, .src = src, .topo = &tp};
      assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
      assert_int_equal(o.experts[0], want[c][m][0]);
      assert_int_equal(o.experts[1], want[c][m][1]);
      assert_float_equal(o.weights[0], gates[c][m][0], 1e-6);
      assert_float_equal(o.weights[1], gates[c][m][1], 1e-6);
      tu_out_free(&o);
      carl_router_free(r);
    }
}

/* Hierarchical selection: 2 nodes x 2 devices, E = 8 (expert e on device e/2, node e/4), k = 2,
 * M = 1 (k/M = 2 utilities per node), token on device 0.
 * s = [.2, .15, .05, .05 | .02, .25, .18, .1].
 *   comm = 0: node scores .35 and .43 -> node 1 -> {5, 6}, gates .25/.43, .18/.43.
 *   comm = 0, lambda_loc = .1: node 0 scores .45 > .43 -> {0, 1}, gates .2/.35, .15/.35.
 *   comm = 1 (lambda_c = .1; c^ = 0 on device 0, 50/160 = .3125 on device 1, 1 on node 1):
 *     node 1 scores (.25 - .1) + (.18 - .1) = .23 < .35 -> {0, 1}. */
static void test_hier_hand(void **st) {
  (void)st;
  const float s[8] = {.2f, .15f, .05f, .05f, .02f, .25f, .18f, .1f};
  float z[8];
  for (int e = 0; e < 8; e++) z[e] = logf(s[e]);
  int32_t src[1] = {0};
  carl_topo_t tp = topo(2, 2);
  carl_route_in_t in = {.T = 1, .E = 8, .logits = z, .src = src, .topo = &tp};
  struct {
    const char *opts;
    int32_t e0, e1;
    double w0, w1;
  } cases[] = {{"comm=0 M=1 warm=0", 5, 6, .25 / .43, .18 / .43},
               {"comm=0 M=1 warm=0 lambda_loc=0.1", 0, 1, .2 / .35, .15 / .35},
               {"comm=1 M=1 warm=0", 0, 1, .2 / .35, .15 / .35}};
  for (int i = 0; i < 3; i++) {
    carl_router_t *r;
    assert_int_equal(tu_create("carl", cases[i].opts, &r), CARL_OK);
    tu_out_t o;
    tu_out_init(&o, 1, 8, 2, 0);
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
    assert_int_equal(o.experts[0], cases[i].e0);
    assert_int_equal(o.experts[1], cases[i].e1);
    assert_float_equal(o.weights[0], cases[i].w0, 1e-6);
    assert_float_equal(o.weights[1], cases[i].w1, 1e-6);
    tu_out_free(&o);
    carl_router_free(r);
  }
}

/* Replicas: the cost is to the nearest replica. 2 nodes x 1 device, E = 3, k = 1, lambda_c = .1;
 * token on device 1, s = [.4, .35, .25].
 *   expert 1 on both devices (table [[0,1],[2,1]]): u = [.4 - .1, .35 - 0, .25] -> expert 1;
 *     hier, M = 1 (q = 1): node 0 scores max(.3, .25) = .3, node 1 max(.25, .35) = .35 -> expert 1;
 *   expert 1 on device 0 only (table [[0,1],[2,-1]]): u = [.3, .25, .25] -> expert 0, and hier
 *     keeps node 0 (.3 > .25) -> expert 0. */
static void test_replicas_nearest(void **st) {
  (void)st;
  const float s[3] = {.4f, .35f, .25f};
  float z[3];
  for (int e = 0; e < 3; e++) z[e] = logf(s[e]);
  int32_t src[1] = {1};
  carl_topo_t tp = topo(2, 1);
  int32_t rep[4] = {0, 1, 2, 1}, single[4] = {0, 1, 2, -1};
  const int32_t *tabs[2] = {rep, single};
  const int32_t want[2] = {1, 0};
  for (int p = 0; p < 2; p++) {
    carl_placement_t pl;
    assert_int_equal(carl_placement_from_table(&pl, 3, 2, 2, tabs[p]), CARL_OK);
    carl_route_in_t in = {.T = 1, .E = 3, .logits = z, .src = src, .topo = &tp, .place = &pl};
    for (int hier = 0; hier < 2; hier++) {
      carl_router_t *r;
      assert_int_equal(tu_create("carl", hier ? "k=1 warm=0 M=1" : "k=1 warm=0 hier=0", &r), CARL_OK);
      tu_out_t o;
      tu_out_init(&o, 1, 3, 1, 0);
      assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
      assert_int_equal(o.experts[0], want[p]);
      tu_out_free(&o);
      carl_router_free(r);
    }
    carl_placement_free(&pl);
  }
}

/* Hierarchical selection with experts replicated across nodes (the router's own path) against a
 * brute-force reference written here: 2 nodes x 2 devices, slots [[0,1,6],[2,3,-],[4,5,1],[6,7,-]]
 * (experts 1 and 6 on both nodes), k = 2, M = 1 (q = 2), lambda_c = .2, lambda_loc = .05.
 * Node score of n: top-2 of s - .2 c^(src, replica of e in n) + .05 [n = own node]; then TopK of
 * s - .2 min over kept nodes' replicas. Sets compared. */
static void test_replicas_hier_reference(void **st) {
  (void)st;
  enum { T = 300, E = 8, k = 2, D = 4, S = 3 };
  int32_t tab[D * S] = {0, 1, 6, 2, 3, -1, 4, 5, 1, 6, 7, -1};
  carl_placement_t pl;
  assert_int_equal(carl_placement_from_table(&pl, E, D, S, tab), CARL_OK);
  carl_topo_t tp = topo(2, 2);
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.0, 88);
  int32_t src[T];
  for (int t = 0; t < T; t++) src[t] = (t * 3) % D;
  carl_router_t *r;
  assert_int_equal(tu_create("carl", "warm=0 M=1 lambda_c=0.2 lambda_loc=0.05", &r), CARL_OK);
  tu_out_t o;
  tu_out_init(&o, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = src, .topo = &tp, .place = &pl};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  for (int t = 0; t < T; t++) {
    double s[E], cn[2][E];
    tu_scores(z + t * E, E, 0, s);
    int a = src[t];
    for (int n = 0; n < 2; n++)
      for (int e = 0; e < E; e++) {
        cn[n][e] = INFINITY;
        for (int d = 2 * n; d < 2 * n + 2; d++)
          for (int j = 0; j < S; j++)
            if (tab[d * S + j] == e) {
              double c = d == a ? 0 : (d / 2 == a / 2 ? 50.0 / 160 : 1);
              if (c < cn[n][e]) cn[n][e] = c;
            }
      }
    double score[2];
    for (int n = 0; n < 2; n++) {
      double b1 = -INFINITY, b2 = -INFINITY; /* the two largest utilities on node n */
      for (int e = 0; e < E; e++) {
        if (!isfinite(cn[n][e])) continue;
        double v = s[e] - 0.2 * cn[n][e];
        if (v > b1) {
          b2 = b1;
          b1 = v;
        } else if (v > b2) {
          b2 = v;
        }
      }
      score[n] = b1 + b2 + (n == a / 2 ? 0.05 : 0);
    }
    int keep = score[1] > score[0] ? 1 : 0;
    double u[E];
    for (int e = 0; e < E; e++) u[e] = isfinite(cn[keep][e]) ? s[e] - 0.2 * cn[keep][e] : -INFINITY;
    int32_t want[2];
    tu_topk(u, E, 2, want);
    int32_t got[2] = {o.experts[t * k], o.experts[t * k + 1]};
    assert_true(o.weights[t * k] >= o.weights[t * k + 1]);
    if (got[0] > got[1]) { int32_t x = got[0]; got[0] = got[1]; got[1] = x; }
    if (want[0] > want[1]) { int32_t x = want[0]; want[0] = want[1]; want[1] = x; }
    assert_memory_equal(got, want, sizeof got);
  }
  tu_out_free(&o);
  carl_router_free(r);
  carl_placement_free(&pl);
  free(z);
}

/* hier with M = N (every node kept) and the default M = min(N, k) = N selects the same sets as the
 * flat path (comm on), on random logits; the flat path lists slots by gate as well. */
static void test_hier_all_nodes_is_flat(void **st) {
  (void)st;
  enum { T = 400, E = 16, k = 2 };
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.0, 33);
  carl_topo_t tp = topo(2, 4);
  carl_router_t *a, *b;
  assert_int_equal(tu_create("carl", "warm=0", &a), CARL_OK);
  assert_int_equal(tu_create("carl", "warm=0 hier=0", &b), CARL_OK);
  tu_out_t x, y;
  tu_out_init(&x, T, E, k, 0);
  tu_out_init(&y, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .topo = &tp};
  assert_int_equal(carl_router_route(a, &in, &x.out), CARL_OK);
  assert_int_equal(carl_router_route(b, &in, &y.out), CARL_OK);
  assert_memory_equal(x.experts, y.experts, sizeof(int32_t) * T * k);
  assert_memory_equal(x.weights, y.weights, sizeof(float) * T * k);
  for (int t = 0; t < T; t++) assert_true(x.weights[t * k] >= x.weights[t * k + 1]);
  tu_out_free(&x);
  tu_out_free(&y);
  carl_router_free(a);
  carl_router_free(b);
  free(z);
}

/* Sinkhorn (ALGORITHMS.md 2.3) in double, written here: C = exp(u), d1 = 1;
 * repeat d0 = (1/T)/(C d1 + 1e-8), d1 = (1/E)/(C^T d0 + 1e-8) until mean|d1 - d1_old| <= 1e-4. */
static void ref_sinkhorn_topk(const double *u, int T, int E, int k, int32_t *idx) {
  double *C = malloc(sizeof(double) * T * E), d0[4096], d1[64];
  for (int i = 0; i < T * E; i++) C[i] = exp(u[i]);
  for (int e = 0; e < E; e++) d1[e] = 1;
  for (int it = 0; it < 1000; it++) {
    for (int t = 0; t < T; t++) {
      double a = 0;
      for (int e = 0; e < E; e++) a += C[t * E + e] * d1[e];
      d0[t] = (1.0 / T) / (a + 1e-8);
    }
    double diff = 0;
    for (int e = 0; e < E; e++) {
      double a = 0;
      for (int t = 0; t < T; t++) a += C[t * E + e] * d0[t];
      double n = (1.0 / E) / (a + 1e-8);
      diff += fabs(n - d1[e]);
      d1[e] = n;
    }
    if (diff / E <= 1e-4) break;
  }
  for (int t = 0; t < T; t++) {
    double v[64];
    for (int e = 0; e < E; e++) v[e] = d0[t] * C[t * E + e] * d1[e];
    tu_topk(v, E, k, idx + t * k);
  }
  free(C);
}

static void sort2(int32_t *a) {
  if (a[0] > a[1]) {
    int32_t x = a[0];
    a[0] = a[1];
    a[1] = x;
  }
}

/* Warm start: for the first W = 2 steps carl selects TopK(sinkhorn(exp(u))) (sets compared with
 * the reference above), adds no L_E / L_G, and balances the load better than topk on skewed
 * logits; from step W on it is the regular path. */
static void test_warm_start(void **st) {
  (void)st;
  enum { T = 256, E = 8, k = 2 };
  float *z = malloc(sizeof(float) * T * E);
  double off[E] = {2, 1.5, 0, 0, 0, 0, 0, 0};
  tu_logits(z, T, E, off, 1.0, 44);
  int32_t src[T];
  for (int t = 0; t < T; t++) src[t] = t % 4;
  carl_topo_t tp = topo(2, 2);
  carl_router_t *r, *reg, *rt;
  /* queue = 0: the device prices would carry the warm steps' loads into step 2 (test_queue_hand) */
  assert_int_equal(tu_create("carl", "W=2 alpha_E0=0.01 alpha_G0=0.01 queue=0", &r), CARL_OK);
  assert_int_equal(tu_create("carl", "warm=0 alpha_E0=0.01 alpha_G0=0.01 queue=0", &reg), CARL_OK);
  assert_int_equal(tu_create("topk", "", &rt), CARL_OK);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = src, .topo = &tp};
  tu_out_t o, og, ot;
  tu_out_init(&o, T, E, k, 0);
  tu_out_init(&og, T, E, k, 0);
  tu_out_init(&ot, T, E, k, 0);
  /* reference: u = s - .1 c^(src, e), expert e on device e/2 */
  double *u = malloc(sizeof(double) * T * E);
  for (int t = 0; t < T; t++) {
    double s[E];
    tu_scores(z + t * E, E, 0, s);
    for (int e = 0; e < E; e++) {
      int a = src[t], b = e / 2;
      double c = a == b ? 0 : (a / 2 == b / 2 ? 50.0 / 160 : 1);
      u[t * E + e] = s[e] - 0.1 * c;
    }
  }
  int32_t *ref = malloc(sizeof(int32_t) * T * k);
  ref_sinkhorn_topk(u, T, E, k, ref);
  for (int step = 0; step < 2; step++) {
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
    assert_true(isnan(loss_named(&o.out, "L_E")));
    for (int t = 0; t < T; t++) {
      int32_t a[2] = {o.experts[t * k], o.experts[t * k + 1]}, b[2] = {ref[t * k], ref[t * k + 1]};
      sort2(a);
      sort2(b);
      assert_memory_equal(a, b, sizeof a);
    }
    assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  }
  assert_int_equal(carl_router_route(rt, &in, &ot.out), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK); /* step 2: warm start over */
  assert_int_equal(carl_router_route(reg, &in, &og.out), CARL_OK);
  assert_memory_equal(o.experts, og.experts, sizeof(int32_t) * T * k);
  assert_false(isnan(loss_named(&o.out, "L_E")));
  /* balance: the warm-start assignment (ref) against topk */
  double mv_ref = tu_maxvio(ref, T, k, E), mv_topk = tu_maxvio(ot.experts, T, k, E);
  assert_true(mv_ref < 0.5 * mv_topk);
  free(u);
  free(ref);
  free(z);
  tu_out_free(&o);
  tu_out_free(&og);
  tu_out_free(&ot);
  carl_router_free(r);
  carl_router_free(reg);
  carl_router_free(rt);
}

/* alpha <- beta alpha + (1 - beta) min(xi (r - 1), alpha_max); beta = .5, xi = .2, max = .01:
 *   r = 1.5: target min(.1, .01) = .01  -> alpha = .5 * 0 + .5 * .01 = .005
 *   r = 1.02: target .004               -> alpha = .0025 + .002 = .0045
 *   r = 3: target .01                   -> alpha = .00225 + .005 = .00725
 *   r = 1 (balanced): target 0          -> alpha = .003625 */
static void test_adaptive_controller(void **st) {
  (void)st;
  carl_adaptive_t a;
  assert_int_equal(carl_adaptive_init(&a, 0, 0.5, 0.2, 0.01), CARL_OK);
  assert_float_equal(carl_adaptive_step(&a, 1.5), 0.005, 1e-15);
  assert_float_equal(carl_adaptive_step(&a, 1.02), 0.0045, 1e-15);
  assert_float_equal(carl_adaptive_step(&a, 3.0), 0.00725, 1e-15);
  assert_float_equal(carl_adaptive_step(&a, 1.0), 0.003625, 1e-15);
  assert_float_equal(carl_adaptive_target(&a, NAN), 0, 0);
  double load[4] = {4, 0, 0, 0}, flat[3] = {2, 2, 2}, zero[2] = {0, 0};
  assert_float_equal(carl_load_skew(load, 4), 4, 0);
  assert_float_equal(carl_load_skew(flat, 3), 1, 0);
  assert_float_equal(carl_load_skew(zero, 2), 1, 0);
  assert_int_equal(carl_adaptive_init(&a, 0, 1.0, 0.2, 0.01), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "beta"));
  assert_int_equal(carl_adaptive_init(&a, -1, 0.5, 0.2, 0.01), CARL_ERR_INVALID);
  assert_int_equal(carl_adaptive_init(&a, 0, 0.5, -0.2, 0.01), CARL_ERR_INVALID);
  assert_int_equal(carl_adaptive_init(&a, 0, 0.5, 0.2, NAN), CARL_ERR_INVALID);
}

/* The controller inside the router, with the default beta = .99, xi = .2: E = 4 experts on 2
 * devices (one node each; {0,1} on device 0), group = device; 4 tokens, k = 1, all pick expert 0
 * (z = [5,0,0,0]). Loads [4,0,0,0]: r_E = 4 -> target min(.6, .01) = .01 -> alpha_E = .01 * .01 = 1e-4;
 * device loads [4, 0]: r_G = 2 -> target min(.2, .05) = .05 -> alpha_G = .01 * .05 = 5e-4.
 * Next step: with s0 = e^5/(e^5+3), s1 = 1/(e^5+3):
 *   L_E = 1e-4 * 4 * (f0 P0) = 4e-4 s0;  L_G = 5e-4 * f'_0 P'_0 = 5e-4 * .5 * (s0 + s1).
 * Second update: alpha_E = .99e-4 + 1e-4 = 1.99e-4. Save / load keep alpha_E, alpha_G and the step
 * counter (the warm start, W = 2, is over after the two updates in the loaded router as well). */
static void test_adaptive_router(void **st) {
  (void)st;
  float z[16];
  for (int t = 0; t < 4; t++) {
    z[t * 4] = 5;
    z[t * 4 + 1] = z[t * 4 + 2] = z[t * 4 + 3] = 0;
  }
  carl_topo_t tp = topo(2, 1);
  carl_router_t *r;
  assert_int_equal(tu_create("carl", "k=1 comm=0 hier=0 W=2 z_loss=0", &r), CARL_OK);
  carl_route_in_t in = {.T = 4, .E = 4, .logits = z, .topo = &tp};
  tu_out_t o;
  tu_out_init(&o, 4, 4, 1, 1);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.out.nloss, 0);
  assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK); /* step 1: still warm */
  assert_int_equal(o.out.nloss, 0);
  /* during the warm start the loads are Sinkhorn's; feed the all-on-expert-0 loads instead */
  int32_t all0[4] = {0, 0, 0, 0};
  carl_route_out_t fake = o.out;
  fake.experts = all0;
  carl_router_t *q;
  assert_int_equal(tu_create("carl", "k=1 comm=0 hier=0 warm=0 z_loss=0", &q), CARL_OK);
  assert_int_equal(carl_router_update(q, &in, &fake), CARL_OK);
  assert_int_equal(carl_router_route(q, &in, &o.out), CARL_OK);
  double s0 = exp(5.0) / (exp(5.0) + 3), s1 = 1 / (exp(5.0) + 3);
  assert_float_equal(loss_named(&o.out, "L_E"), 4e-4 * s0, 1e-10);
  assert_float_equal(loss_named(&o.out, "L_G"), 5e-4 * 0.5 * (s0 + s1), 1e-10);
  assert_int_equal(carl_router_update(q, &in, &fake), CARL_OK);
  assert_int_equal(carl_router_route(q, &in, &o.out), CARL_OK);
  assert_float_equal(loss_named(&o.out, "L_E"), 1.99e-4 * 4 * s0, 1e-10);
  /* save / load round trip */
  char path[] = "/tmp/carl_carl_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(carl_router_update(r, &in, &fake), CARL_OK); /* r: 2 updates, warm over */
  assert_int_equal(carl_router_save(r, path), CARL_OK);
  carl_router_t *l;
  assert_int_equal(tu_create("carl", "k=1 comm=0 hier=0 W=2 z_loss=0", &l), CARL_OK);
  assert_int_equal(carl_router_load(l, path), CARL_OK);
  tu_out_t a, b;
  tu_out_init(&a, 4, 4, 1, 1);
  tu_out_init(&b, 4, 4, 1, 1);
  assert_int_equal(carl_router_route(r, &in, &a.out), CARL_OK);
  assert_int_equal(carl_router_route(l, &in, &b.out), CARL_OK);
  assert_true(a.out.nloss == 2 && b.out.nloss == 2);
  assert_true(a.out.loss_total == b.out.loss_total);
  assert_memory_equal(a.dlogits, b.dlogits, sizeof(float) * 16);
  assert_memory_equal(a.experts, b.experts, sizeof(int32_t) * 4);
  /* a truncated state file is refused and changes nothing */
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  assert_int_equal(ftruncate(fileno(f), 40), 0);
  fclose(f);
  assert_int_not_equal(carl_router_load(l, path), CARL_OK);
  assert_int_equal(carl_router_route(l, &in, &b.out), CARL_OK);
  assert_true(a.out.loss_total == b.out.loss_total);
  unlink(path);
  tu_out_free(&a);
  tu_out_free(&b);
  tu_out_free(&o);
  carl_router_free(r);
  carl_router_free(q);
  carl_router_free(l);
}

/* d(loss_total)/d(logits) (z-loss + alpha_E L_E + alpha_G L_G, group = node) against central
 * differences with the selection held fixed (checked: the logits have no near-tie within the step),
 * hier and comm on. */
static void test_total_grad_fd(void **st) {
  (void)st;
  enum { T = 16, E = 8, k = 2 };
  float z[T * E];
  tu_logits(z, T, E, NULL, 1.0, 56);
  carl_topo_t tp = topo(2, 2);
  carl_router_t *r;
  assert_int_equal(tu_create("carl", "alpha_E0=0.3 alpha_G0=0.2 adaptive=0 warm=0 group=1 z_loss=0.01", &r), CARL_OK);
  tu_out_t o, p;
  tu_out_init(&o, T, E, k, 1);
  tu_out_init(&p, T, E, k, 0);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .topo = &tp};
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_false(isnan(loss_named(&o.out, "L_E")));
  assert_false(isnan(loss_named(&o.out, "L_G")));
  double gmax = 0;
  for (int i = 0; i < T * E; i++) gmax = fmax(gmax, fabs(o.dlogits[i]));
  assert_true(gmax > 1e-3);
  for (int i = 0; i < T * E; i++) {
    float keep = z[i];
    double lv[2];
    for (int sgn = 0; sgn < 2; sgn++) {
      z[i] = keep + (sgn ? -1e-2f : 1e-2f);
      assert_int_equal(carl_router_route(r, &in, &p.out), CARL_OK);
      assert_memory_equal(p.experts, o.experts, sizeof(int32_t) * T * k);
      lv[sgn] = p.out.loss_total;
    }
    z[i] = keep;
    double fd = (lv[0] - lv[1]) / ((double)(keep + 1e-2f) - (double)(keep - 1e-2f));
    assert_float_equal(o.dlogits[i], fd, 2e-3 * gmax + 1e-6);
  }
  tu_out_free(&o);
  tu_out_free(&p);
  carl_router_free(r);
}

/* Inter-node copies (token, destination device on another node), counted here, on 2 nodes x 4
 * devices with random logits: carl (defaults, warm start off) sends fewer than topk; a larger
 * lambda_c sends fewer still. */
static int64_t internode(const int32_t *ex, int T, int k, const int32_t *src, int E, int D, int P) {
  int64_t n = 0;
  for (int t = 0; t < T; t++)
    for (int j = 0; j < k; j++) {
      int e = ex[t * k + j];
      if (e < 0) continue;
      int dev = e * D / E, dup = 0;
      for (int i = 0; i < j; i++) dup |= ex[t * k + i] >= 0 && ex[t * k + i] * D / E == dev;
      if (!dup && dev / P != src[t] / P) n++;
    }
  return n;
}

static void test_comm_cuts_internode(void **st) {
  (void)st;
  enum { T = 2000, E = 16, k = 2, D = 8, P = 4 };
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.0, 66);
  int32_t src[T];
  for (int t = 0; t < T; t++) src[t] = (int32_t)((t * 3) % D);
  carl_topo_t tp = topo(2, 4);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .src = src, .topo = &tp};
  const char *names[] = {"topk", "carl", "carl", "carl"};
  const char *opts[] = {"", "warm=0", "warm=0 lambda_c=0.3", "warm=0 M=1"};
  int64_t cnt[4];
  double rho[4];
  for (int i = 0; i < 4; i++) {
    carl_router_t *r;
    assert_int_equal(tu_create(names[i], opts[i], &r), CARL_OK);
    tu_out_t o;
    tu_out_init(&o, T, E, k, 0);
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
    cnt[i] = internode(o.experts, T, k, src, E, D, P);
    assert_int_equal(carl_retained_mass(z, T, E, 0, o.experts, k, &rho[i]), CARL_OK);
    tu_out_free(&o);
    carl_router_free(r);
  }
  fprintf(stderr, "inter-node copies: topk %lld, carl %lld (%.1f%%), lambda_c=.3 %lld, M=1 %lld; retained mass %.4f %.4f %.4f %.4f\n",
          (long long)cnt[0], (long long)cnt[1], 100.0 * cnt[1] / cnt[0], (long long)cnt[2], (long long)cnt[3], rho[0],
          rho[1], rho[2], rho[3]);
  assert_true(cnt[1] < cnt[0]);
  assert_true(cnt[2] < cnt[1]);
  assert_true(cnt[3] <= cnt[1]);
  assert_true(rho[0] == 1.0 || fabs(rho[0] - 1.0) < 1e-6);
  assert_true(rho[1] < 1.0);
  free(z);
}

/* Same decisions and gradients for 1 and 3 threads (hier path, c2r-free). */
static void test_thread_independence(void **st) {
  (void)st;
  enum { T = 3000, E = 16, k = 2 };
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.0, 77);
  carl_topo_t tp = topo(2, 4);
  carl_route_in_t in = {.T = T, .E = E, .logits = z, .topo = &tp, .seed = 3};
  tu_out_t o[2];
  for (int i = 0; i < 2; i++) {
    omp_set_num_threads(i ? 3 : 1);
    carl_router_t *r;
    assert_int_equal(tu_create("carl", "warm=0 M=1 alpha_E0=0.01 alpha_G0=0.01 jitter=0.01", &r), CARL_OK);
    tu_out_init(&o[i], T, E, k, 1);
    assert_int_equal(carl_router_route(r, &in, &o[i].out), CARL_OK);
    carl_router_free(r);
  }
  omp_set_num_threads(2);
  assert_memory_equal(o[0].experts, o[1].experts, sizeof(int32_t) * T * k);
  assert_memory_equal(o[0].weights, o[1].weights, sizeof(float) * T * k);
  assert_memory_equal(o[0].dlogits, o[1].dlogits, sizeof(float) * T * E);
  tu_out_free(&o[0]);
  tu_out_free(&o[1]);
  free(z);
}

static void test_errors(void **st) {
  (void)st;
  carl_router_t *r;
  assert_int_equal(tu_create("carl", "lambda_c=-0.1", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "lambda_c"));
  assert_int_equal(tu_create("carl", "lambda_loc=-1", &r), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "lambda_loc"));
  assert_int_equal(tu_create("carl", "beta=1", &r), CARL_ERR_INVALID);
  assert_int_equal(tu_create("carl", "group=2", &r), CARL_ERR_INVALID);
  assert_int_equal(tu_create("carl", "hier=2", &r), CARL_ERR_INVALID);
  assert_int_equal(tu_create("carl", "no_such_knob=1", &r), CARL_ERR_NOT_FOUND);
  /* M > nodes */
  assert_int_equal(tu_create("carl", "M=3 warm=0", &r), CARL_OK);
  carl_topo_t tp = topo(2, 1);
  float z[8] = {0, 1, 2, 3, 3, 2, 1, 0};
  carl_route_in_t in = {.T = 2, .E = 4, .logits = z, .topo = &tp};
  tu_out_t o;
  tu_out_init(&o, 2, 4, 2, 0);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "M: 3"));
  carl_router_free(r);
  /* the same with the warm start on (W = 100 and W = 1, where the hierarchical selection would
   * first run at the second step): the first route refuses it, before any warm-start work */
  const char *warm_opts[] = {"M=3", "M=3 W=1"};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(tu_create("carl", warm_opts[i], &r), CARL_OK);
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
    assert_non_null(strstr(carl_errmsg(), "M: 3"));
    assert_non_null(strstr(carl_errmsg(), "2 nodes"));
    carl_router_free(r);
  }
  /* hier = 0 does not use M: no error */
  assert_int_equal(tu_create("carl", "M=3 hier=0", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  carl_router_free(r);
  /* the kept nodes hold fewer than k experts: 4 nodes x 1 expert, M = 1, k = 2; with and without
   * the warm start */
  carl_topo_t t4 = topo(4, 1);
  in.topo = &t4;
  const char *few_opts[] = {"M=1 warm=0", "M=1"};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(tu_create("carl", few_opts[i], &r), CARL_OK);
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
    assert_non_null(strstr(carl_errmsg(), "fewer than k=2"));
    carl_router_free(r);
  }
  /* src outside the topology, non-finite logits, missing logits */
  assert_int_equal(tu_create("carl", "hier=0 warm=0", &r), CARL_OK);
  int32_t bad[2] = {0, 9};
  in.src = bad;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  in.src = NULL;
  z[3] = INFINITY;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_NUMERIC);
  in.logits = NULL;
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  carl_router_free(r);
  tu_out_free(&o);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_all_off_is_topk),     cmocka_unit_test(test_comm_hand),
      cmocka_unit_test(test_hier_hand),           cmocka_unit_test(test_hier_all_nodes_is_flat),
      cmocka_unit_test(test_replicas_nearest),    cmocka_unit_test(test_replicas_hier_reference),
      cmocka_unit_test(test_warm_start),          cmocka_unit_test(test_adaptive_controller),
      cmocka_unit_test(test_adaptive_router),     cmocka_unit_test(test_total_grad_fd),
      cmocka_unit_test(test_comm_cuts_internode), cmocka_unit_test(test_thread_independence),
      cmocka_unit_test(test_errors),              cmocka_unit_test(test_queue_hand),
      cmocka_unit_test(test_dedup_hand),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
