/* The per-peer schedule of a plan's hops (src/exec/hop.c): what the process-crossing executors
 * hand their transport for each peer (the mpi executor MPI_Alltoallv, the nccl executor
 * ncclSend / ncclRecv). On the host, for every rank of flat and hierarchical plans of random
 * decisions (1 x 1, 1 x 4, 2 x 2, 2 x 4, 3 x 2 devices), without any transport:
 *   both ends agree: what r hands b (count and copy indices) is what b expects from r;
 *   every copy of the plan is received exactly once per phase;
 *   every copy r receives from b is one the decisions send there: flat, a token of b with an
 *     expert on r; hierarchical first hop, a token of b with an expert on r (one node) or on r's
 *     node (b of r's local index on another node); forwarded, from a device of r's node, of a
 *     token with an expert on r;
 *   bytes handed per rank pair (dispatch + combine, 4 d per copy) equal the plan's accounting
 *     (carl_plan_cost traffic) and an independent count from the decisions;
 *   a count that differs from the plan is refused, naming the ranks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/core.h"
#include "carl/place.h"
#include "carl/plan.h"
#include "exec/exec_impl.h"

static uint64_t sm_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

#define K_ 3

/* token i has an expert on device b (contiguous placement: expert e on device e / S) */
static int on_dev(const int32_t *ex, int64_t i, int S, int b) {
  int on = 0;
  for (int q = 0; q < K_; q++) on |= ex[i * K_ + q] >= 0 && ex[i * K_ + q] / S == b;
  return on;
}
static int on_node(const int32_t *ex, int64_t i, int S, int dpn, int node) {
  int on = 0;
  for (int j = 0; j < dpn; j++) on |= on_dev(ex, i, S, node * dpn + j);
  return on;
}

/* flat copies a -> b: tokens of a with an expert on b */
static int64_t flat_copies(const int32_t *ex, int64_t Tr, int S, int a, int b) {
  int64_t n = 0;
  for (int64_t i = a * Tr; i < (a + 1) * Tr; i++) n += on_dev(ex, i, S, b);
  return n;
}

/* hierarchical copies a -> b of both hops (the DeepEP scheme, dpn devices per node): one node:
 * a's tokens with an expert on b, plus, a forwarding, the tokens of the sources of a's local index
 * on other nodes with an expert on b; another node: b of a's local index (the forwarder) gets a's
 * tokens with an expert anywhere on b's node, any other b nothing. */
static int64_t hier_copies(const int32_t *ex, int D, int64_t Tr, int S, int dpn, int a, int b) {
  if (a / dpn != b / dpn) {
    if (a % dpn != b % dpn) return 0;
    int64_t n = 0;
    for (int64_t i = a * Tr; i < (a + 1) * Tr; i++) n += on_node(ex, i, S, dpn, b / dpn);
    return n;
  }
  int64_t n = flat_copies(ex, Tr, S, a, b);
  if (b != a)
    for (int src = 0; src < D; src++)
      if (src / dpn != a / dpn && src % dpn == a % dpn) n += flat_copies(ex, Tr, S, src, b);
  return n;
}

static void hop_case(int nodes, int dpn, carl_plan_mode mode, uint64_t seed) {
  const int D = nodes * dpn, S = 2, E = S * D, d = 7;
  const int64_t Tr = 40, T = Tr * D;
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, nodes, dpn, 160, 3, 50, 10), CARL_OK);
  carl_placement_t pl;
  assert_int_equal(carl_placement_contiguous(&pl, E, D), CARL_OK);
  int32_t *ex = malloc(sizeof(int32_t) * (size_t)(T * K_));
  uint64_t s = seed;
  for (int64_t i = 0; i < T; i++)
    for (int q = 0; q < K_; q++) {
      int e, dup;
      do {
        e = (int)(sm_next(&s) % (uint64_t)E);
        dup = 0;
        for (int j = 0; j < q; j++) dup |= ex[i * K_ + j] == e;
      } while (dup && E > K_);
      ex[i * K_ + q] = sm_next(&s) % 9 == 0 || dup ? -1 : e;
    }
  carl_plan_t p = {0};
  assert_int_equal(carl_plan_build(&t, &pl, ex, NULL, T, K_, mode, -1, CARL_PLAN_ROWS, &p), CARL_OK);
  if (mode == CARL_PLAN_HIER && nodes > 1 && dpn > 1) assert_true(p.n_fwd > 0); /* the case forwards */
  int *peer = malloc(sizeof(int) * (size_t)D);
  for (int b = 0; b < D; b++) peer[b] = b;
  carl__hop_t *h = malloc(sizeof(carl__hop_t) * (size_t)(D * D)); /* h[r * D + b]: r's schedule for b */
  double *bytes = calloc((size_t)(D * D), sizeof(double));
  int *seen = malloc(sizeof(int) * (size_t)(p.n_send + p.n_fwd + 1));
  const int nhops = mode == CARL_PLAN_HIER ? 2 : 1;
  for (int hop = 0; hop < nhops; hop++) {
    const int64_t *o = hop ? p.fwd_off : p.send_off, base = hop ? p.n_send : 0, n = hop ? p.n_fwd : p.n_send;
    for (int combine = 0; combine < 2; combine++) {
      for (int r = 0; r < D; r++) carl__hop_peers(&p, o, base, combine, r, peer, D, h + r * D);
      memset(seen, 0, sizeof(int) * (size_t)(p.n_send + p.n_fwd + 1));
      for (int r = 0; r < D; r++)
        for (int b = 0; b < D; b++) {
          const carl__hop_t *rb = &h[r * D + b], *br = &h[b * D + r];
          assert_int_equal(rb->send_n, br->recv_n); /* both ends agree */
          assert_int_equal(rb->send_at, br->recv_at);
          assert_true(rb->recv_at >= base && rb->recv_at + rb->recv_n <= base + n);
          bytes[r * D + b] += (double)rb->send_n * sizeof(float) * d;
          for (int64_t c = rb->recv_at; c < rb->recv_at + rb->recv_n; c++) {
            seen[c]++;
            if (combine) continue;
            /* dispatch: the copy is one the decisions send from b to r */
            if (!hop) {
              const int64_t tok = p.send_tok[c];
              assert_int_equal(tok / Tr, b); /* a token of b */
              if (mode == CARL_PLAN_FLAT || b / dpn == r / dpn) {
                assert_true(on_dev(ex, tok, S, r));
              } else {
                assert_int_equal(b % dpn, r % dpn); /* to the forwarder of r's node */
                assert_true(on_node(ex, tok, S, dpn, r / dpn));
              }
            } else {
              const int64_t tok = p.send_tok[p.fwd_parent[c - p.n_send]];
              assert_int_equal(b / dpn, r / dpn); /* forwarded inside the node */
              assert_true(b != r && on_dev(ex, tok, S, r));
            }
          }
        }
      for (int64_t c = base; c < base + n; c++) assert_int_equal(seen[c], 1); /* each copy once */
    }
  }
  carl_cost_t cost;
  assert_int_equal(carl_cost_init(&cost, &t), CARL_OK);
  assert_int_equal(carl_plan_cost(&t, &p, sizeof(float) * (size_t)d, &cost), CARL_OK);
  for (int a = 0; a < D; a++)
    for (int b = 0; b < D; b++) {
      const int64_t ab = mode == CARL_PLAN_FLAT ? flat_copies(ex, Tr, S, a, b) : hier_copies(ex, D, Tr, S, dpn, a, b);
      const int64_t ba = mode == CARL_PLAN_FLAT ? flat_copies(ex, Tr, S, b, a) : hier_copies(ex, D, Tr, S, dpn, b, a);
      assert_float_equal(bytes[a * D + b], (double)(ab + ba) * sizeof(float) * d, 0);
      assert_float_equal(bytes[a * D + b], cost.traffic[a * D + b], 0);
    }
  /* a peer announcing one copy more than the plan says is refused */
  if (D > 1) {
    carl__hop_peers(&p, p.send_off, 0, 0, 0, peer, D, h);
    int *ann = malloc(sizeof(int) * (size_t)D);
    for (int b = 0; b < D; b++) ann[b] = (int)h[b].recv_n;
    assert_int_equal(carl__hop_check("test", 0, peer, D, ann, h), CARL_OK);
    ann[D - 1]++;
    assert_int_equal(carl__hop_check("test", 0, peer, D, ann, h), CARL_ERR_STATE);
    char want[160];
    snprintf(want, sizeof want, "test: rank %d announces %d copies to rank 0, whose plan expects %lld", D - 1, ann[D - 1],
             (long long)h[D - 1].recv_n);
    assert_non_null(strstr(carl_errmsg(), want));
    free(ann);
  }
  carl_cost_free(&cost);
  free(peer), free(h), free(bytes), free(seen), free(ex);
  carl_plan_free(&p);
  carl_placement_free(&pl);
}

static void test_flat(void **st) {
  (void)st;
  hop_case(1, 1, CARL_PLAN_FLAT, 1);
  hop_case(1, 4, CARL_PLAN_FLAT, 2);
  hop_case(2, 2, CARL_PLAN_FLAT, 3);
  hop_case(2, 4, CARL_PLAN_FLAT, 4);
}

static void test_hier(void **st) {
  (void)st;
  hop_case(1, 1, CARL_PLAN_HIER, 5);
  hop_case(2, 2, CARL_PLAN_HIER, 6);
  hop_case(2, 4, CARL_PLAN_HIER, 7);
  hop_case(3, 2, CARL_PLAN_HIER, 8);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_flat),
      cmocka_unit_test(test_hier),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
