/* The plan's row lists (carl/plan.h): a hand-built case on 2 nodes x 2 devices in both modes, for
 * all devices and per device; random decisions with replicas checked against the definitions
 * (every kept slot one row on its nearest replica, every row's copy carrying its token, pair sizes
 * equal to the hop counts the cost prices). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "carl/plan.h"
#include "carl/core.h"

#define ASSERT_I64(a, ...)                                                   \
  do {                                                                       \
    const int64_t want_[] = {__VA_ARGS__};                                   \
    for (size_t i_ = 0; i_ < sizeof want_ / sizeof want_[0]; i_++)           \
      assert_int_equal((a)[i_], want_[i_]);                                  \
  } while (0)

/* Devices 0, 1 on node 0 and 2, 3 on node 1; expert e on device e. Token 0 on device 0 chooses
 * experts 1, 2, 3; token 1 on device 1 chooses 0, 1 and has a dropped slot. */
static const int32_t EX[6] = {1, 2, 3, 0, 1, -1}, SRC[2] = {0, 1};

static void setup(carl_topo_t *t, carl_placement_t *p) {
  assert_int_equal(carl_topo_make(t, 2, 2, 160, 3, 50, 10), CARL_OK);
  assert_int_equal(carl_placement_contiguous(p, 4, 4), CARL_OK);
}

static void test_hand_flat(void **s) {
  (void)s;
  carl_topo_t t;
  carl_placement_t p;
  setup(&t, &p);
  carl_plan_t pl = {0};
  assert_int_equal(carl_plan_build(&t, &p, EX, SRC, 2, 3, CARL_PLAN_FLAT, -1, CARL_PLAN_ROWS, &pl), CARL_OK);
  /* copies: (0->1, t0) (0->2, t0) (0->3, t0) (1->0, t1) (1->1, t1) in pair order */
  assert_int_equal(pl.n_send, 5);
  assert_int_equal(pl.n_fwd, 0);
  assert_int_equal(pl.copies, 5);
  ASSERT_I64(pl.send_off, 0, 0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5);
  for (int c = 0; c < 5; c++) assert_int_equal(pl.send_tok[c], c < 3 ? 0 : 1);
  /* rows by device: d0: t1 s0 (copy 3); d1: t0 s0 (copy 0), t1 s1 (copy 4); d2: t0 s1; d3: t0 s2 */
  assert_int_equal(pl.n_rows, 5);
  ASSERT_I64(pl.recv_off, 0, 1, 3, 4, 5);
  ASSERT_I64(pl.row_copy, 3, 0, 4, 1, 2);
  const int32_t slot[5] = {3, 0, 4, 1, 2};
  for (int r = 0; r < 5; r++) assert_int_equal(pl.row_slot[r], slot[r]);
  ASSERT_I64(pl.tok_off, 0, 3, 5);
  ASSERT_I64(pl.tok_copy, 0, 1, 2, 3, 4);
  ASSERT_I64(pl.copy_row_off, 0, 1, 2, 3, 4, 5);
  ASSERT_I64(pl.copy_row, 1, 3, 4, 0, 2);
  carl_plan_free(&pl);
  carl_placement_free(&p);
}

static void test_hand_hier(void **s) {
  (void)s;
  carl_topo_t t;
  carl_placement_t p;
  setup(&t, &p);
  carl_plan_t pl = {0};
  assert_int_equal(carl_plan_build(&t, &p, EX, SRC, 2, 3, CARL_PLAN_HIER, -1, CARL_PLAN_ROWS, &pl), CARL_OK);
  /* first hop: (0->1 direct, t0) (0->2 to node 1's forwarder, t0) (1->0, t1) (1->1, t1);
   * forwarded: (2->3) repeating copy 1 */
  assert_int_equal(pl.n_send, 4);
  assert_int_equal(pl.n_fwd, 1);
  assert_int_equal(pl.copies, 5);
  ASSERT_I64(pl.send_off, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4);
  ASSERT_I64(pl.fwd_off, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1);
  ASSERT_I64(pl.fwd_parent, 1);
  ASSERT_I64(pl.hop, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0);
  ASSERT_I64(pl.recv_off, 0, 1, 3, 4, 5);
  ASSERT_I64(pl.row_copy, 2, 0, 3, 1, 4); /* device 3's row reads the forwarded copy (index 4) */
  ASSERT_I64(pl.tok_off, 0, 2, 4);
  ASSERT_I64(pl.copy_row_off, 0, 1, 2, 3, 4, 5);
  ASSERT_I64(pl.copy_row, 1, 3, 0, 2, 4);
  carl_plan_free(&pl);
  /* the plan of device 2: it receives t0's inter-node copy and forwards it to 3; one row */
  assert_int_equal(carl_plan_build(&t, &p, EX, SRC, 2, 3, CARL_PLAN_HIER, 2, CARL_PLAN_ROWS, &pl), CARL_OK);
  assert_int_equal(pl.n_send, 1);
  assert_int_equal(pl.n_fwd, 1);
  assert_int_equal(pl.send_tok[0], 0);
  ASSERT_I64(pl.fwd_parent, 0);
  assert_int_equal(pl.n_rows, 1);
  ASSERT_I64(pl.recv_off, 0, 0, 0, 1, 1);
  ASSERT_I64(pl.row_copy, 0);
  ASSERT_I64(pl.tok_off, 0, 0, 0); /* no token lives on device 2 */
  ASSERT_I64(pl.hop, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0); /* counts cover every source */
  /* device 3: only the forwarded copy, whose parent is not in its plan */
  assert_int_equal(carl_plan_build(&t, &p, EX, SRC, 2, 3, CARL_PLAN_HIER, 3, CARL_PLAN_ROWS, &pl), CARL_OK);
  assert_int_equal(pl.n_send, 0);
  assert_int_equal(pl.n_fwd, 1);
  ASSERT_I64(pl.fwd_parent, -1);
  ASSERT_I64(pl.row_copy, 0);
  carl_plan_free(&pl);
  carl_placement_free(&p);
}

/* Token carried by copy c of plan pl (-1 when its parent is outside the plan). */
static int64_t copy_token(const carl_plan_t *pl, int64_t c) {
  if (c < pl->n_send) return pl->send_tok[c];
  int64_t par = pl->fwd_parent[c - pl->n_send];
  return par < 0 ? -1 : pl->send_tok[par];
}

static uint64_t rng_u64(uint64_t seed, uint32_t stream, uint64_t i) {
  uint32_t w[4];
  carl_rng_u32x4(seed, stream, i, w);
  return (uint64_t)w[0] << 32 | w[1];
}

static void check_random(int nodes, int P, int E, int slots, int k, int64_t T, uint64_t seed, carl_plan_mode mode) {
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, nodes, P, 160, 3, 50, 10), CARL_OK);
  const int D = t.devices;
  /* placement: expert e in slot 0 of device e mod D, then random extra replicas (no duplicates) */
  int32_t *tab = malloc(sizeof(int32_t) * (size_t)D * slots);
  for (int i = 0; i < D * slots; i++) tab[i] = -1;
  for (int e = 0; e < E; e++) tab[(e % D) * slots + e / D] = e;
  for (int b = 0; b < D; b++)
    for (int j = (E + D - 1 - b) / D; j < slots; j++) {
      int e = (int)(rng_u64(seed, 9, (uint64_t)(b * slots + j)) % (uint64_t)E), dup = 0;
      for (int q = 0; q < slots; q++) dup |= tab[b * slots + q] == e;
      if (!dup) tab[b * slots + j] = e;
    }
  carl_placement_t p;
  assert_int_equal(carl_placement_from_table(&p, E, D, slots, tab), CARL_OK);
  int32_t *ex = malloc(sizeof(int32_t) * (size_t)(T * k)), *src = malloc(sizeof(int32_t) * (size_t)T);
  for (int64_t i = 0; i < T * k; i++) {
    uint64_t r = rng_u64(seed, 1, (uint64_t)i) % (uint64_t)(E + 1);
    ex[i] = r == (uint64_t)E ? -1 : (int32_t)r;
  }
  for (int64_t i = 0; i < T; i++) src[i] = (int32_t)(rng_u64(seed, 2, (uint64_t)i) % (uint64_t)D);
  carl_plan_t pl = {0}, cnt = {0}, dev = {0};
  assert_int_equal(carl_plan_build(&t, &p, ex, src, T, k, mode, -1, CARL_PLAN_ROWS, &pl), CARL_OK);
  assert_int_equal(carl_plan_build(&t, &p, ex, src, T, k, mode, -1, CARL_PLAN_COUNTS, &cnt), CARL_OK);
  /* pair sizes of both hops add up to the hop counts of the fast kernel */
  for (int x = 0; x < D * D; x++) {
    int64_t n = pl.send_off[x + 1] - pl.send_off[x] + pl.fwd_off[x + 1] - pl.fwd_off[x];
    assert_int_equal(n, cnt.hop[x]);
  }
  assert_int_equal(pl.copies, cnt.copies);
  /* every kept slot: one row, on the nearest replica, in the slot group of its expert */
  int64_t kept = 0;
  char *seen = calloc((size_t)(T * k), 1);
  for (int g = 0; g < D * slots; g++)
    for (int64_t r = pl.recv_off[g]; r < pl.recv_off[g + 1]; r++) {
      int32_t sl = pl.row_slot[r];
      int64_t tk = sl / k;
      assert_false(seen[sl]);
      seen[sl] = 1;
      assert_int_equal(ex[sl], p.slot_expert[g]);
      assert_int_equal(g / slots, carl_plan_replica(&t, &p, ex[sl], src[tk], tk));
      assert_int_equal(copy_token(&pl, pl.row_copy[r]), tk);
      if (r > pl.recv_off[g]) assert_true(pl.row_slot[r - 1] < sl); /* (token, slot) order */
    }
  for (int64_t i = 0; i < T * k; i++) kept += ex[i] >= 0, assert_int_equal(seen[i], ex[i] >= 0);
  assert_int_equal(pl.n_rows, kept);
  /* per-device plans: rows and copies are the all-device plan's, split by device */
  int64_t rows = 0, sends = 0;
  for (int d = 0; d < D; d++) {
    assert_int_equal(carl_plan_build(&t, &p, ex, src, T, k, mode, d, CARL_PLAN_ROWS, &dev), CARL_OK);
    rows += dev.n_rows;
    assert_int_equal(dev.n_rows, pl.recv_off[(d + 1) * slots] - pl.recv_off[d * slots]);
    for (int b = 0; b < D; b++) {
      assert_int_equal(dev.send_off[d * D + b + 1] - dev.send_off[d * D + b], pl.send_off[d * D + b + 1] - pl.send_off[d * D + b]);
      sends += dev.send_off[d * D + b + 1] - dev.send_off[d * D + b];
    }
    for (int64_t r = 0; r < dev.n_rows; r++) {
      int64_t tk = copy_token(&dev, dev.row_copy[r]); /* -1: the copy came by a forwarder */
      if (tk >= 0) assert_int_equal(tk, dev.row_slot[r] / k);
    }
  }
  assert_int_equal(rows, pl.n_rows);
  assert_int_equal(sends, pl.n_send);
  carl_plan_free(&pl);
  carl_plan_free(&cnt);
  carl_plan_free(&dev);
  carl_placement_free(&p);
  free(tab);
  free(ex);
  free(src);
  free(seen);
}

static void test_random(void **s) {
  (void)s;
  for (int mode = 0; mode < 2; mode++) {
    check_random(2, 4, 16, 2, 4, 300, 11, (carl_plan_mode)mode);  /* 8 devices, 16 slots: no replicas */
    check_random(2, 4, 16, 3, 4, 300, 12, (carl_plan_mode)mode);  /* 8 spare slots: replicas */
    check_random(4, 2, 8, 2, 3, 257, 13, (carl_plan_mode)mode);   /* 4 nodes of 2 */
    check_random(3, 3, 20, 4, 6, 199, 14, (carl_plan_mode)mode);  /* uneven */
  }
}

static void test_errors(void **s) {
  (void)s;
  carl_topo_t t;
  carl_placement_t p;
  setup(&t, &p);
  carl_plan_t pl = {0};
  assert_int_equal(carl_plan_build(&t, &p, EX, SRC, 2, 3, CARL_PLAN_FLAT, 4, CARL_PLAN_ROWS, &pl), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "plan: device 4 is outside -1..3");
  int32_t bad[6] = {1, 2, 9, 0, 1, -1};
  assert_int_equal(carl_plan_build(&t, &p, bad, SRC, 2, 3, CARL_PLAN_FLAT, -1, CARL_PLAN_ROWS, &pl), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "experts[0, 2] = 9 is not an expert id in [-1, 4)");
  assert_int_equal(pl.has_rows, 0);
  carl_cost_t c;
  assert_int_equal(carl_cost_init(&c, &t), CARL_OK);
  assert_int_equal(carl_plan_build(&t, &p, EX, SRC, 2, 3, CARL_PLAN_FLAT, -1, CARL_PLAN_COUNTS, &pl), CARL_OK);
  assert_int_equal(carl_plan_cost(&t, &pl, 0, &c), CARL_ERR_INVALID);
  assert_string_equal(carl_errmsg(), "token_bytes must be > 0");
  carl_cost_free(&c);
  carl_plan_free(&pl);
  carl_placement_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_hand_flat), cmocka_unit_test(test_hand_hier),
                                     cmocka_unit_test(test_random), cmocka_unit_test(test_errors)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
