/* c2r router: the collaboration profile by hand, routing by hand, Tc = E-1 equals topk, profiling
 * during routing against a brute-force count, table files, bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <unistd.h>

#include "carl/array.h"
#include "carl/route_seed.h"
#include "route_testutil.h"

static void tmpname(char *path) {
  strcpy(path, "/tmp/carl_c2r_XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
}

/* Top-2 sets {0,1}, {0,1}, {0,2}, {1,3}, {2,3} (E = 4):
 *   C[0] = [., 2, 1, 0] -> row 0 = [1, 2, 3]
 *   C[1] = [2, ., 0, 1] -> row 1 = [0, 3, 2]
 *   C[2] = [1, 0, ., 1] -> tie 0/3 -> lower first -> row 2 = [0, 3, 1]
 *   C[3] = [0, 1, 1, .] -> tie 1/2 -> row 3 = [1, 2, 0] */
static void test_table_hand(void **st) {
  (void)st;
  int32_t sets[10] = {0, 1, 1, 0, 0, 2, 3, 1, 2, 3};
  int64_t C[16] = {0};
  assert_int_equal(carl_c2r_count_sets(5, 2, sets, 4, C), CARL_OK);
  int64_t wantC[16] = {3, 2, 1, 0, 2, 3, 0, 1, 1, 0, 2, 1, 0, 1, 1, 2};
  assert_memory_equal(C, wantC, sizeof wantC);
  int32_t tab[12], want[12] = {1, 2, 3, 0, 3, 2, 0, 3, 1, 1, 2, 0};
  assert_int_equal(carl_c2r_table(4, C, tab), CARL_OK);
  assert_memory_equal(tab, want, sizeof want);
  /* the same sets from logits: top-2 of softmax = the two largest logits */
  float z[20] = {2, 1, 0, 0, 1, 2, 0, 0, 2, 0, 1, 0, 0, 1, 0, 2, 0, 0, 2, 1};
  int64_t C2[16] = {0};
  assert_int_equal(carl_c2r_count_logits(5, 4, 2, z, C2), CARL_OK);
  assert_memory_equal(C2, wantC, sizeof wantC);
  /* -1 (dropped) entries are skipped; out-of-range ids are refused */
  int32_t dropped[4] = {0, -1, 5, 1};
  assert_int_equal(carl_c2r_count_sets(1, 2, dropped, 4, C2), CARL_OK);
  assert_int_equal(C2[0], 4);
  assert_int_equal(carl_c2r_count_sets(1, 2, dropped + 2, 4, C2), CARL_ERR_INVALID);
}

static void save_table(const char *path, int E, const int32_t *tab) {
  int64_t shape[2] = {E, E - 1};
  assert_int_equal(carl_npy_save(path, CARL_I32, 2, shape, tab), CARL_OK);
}

/* Routing by hand, E = 4, k = 2, Tc = 1, table rows as in test_table_hand.
 * z = ln s with s = [.4, .1, .3, .2]: e1 = 0; collab[0][0] = 1 -> S = {0, 1} although 2 is the
 * second best; raw gates (renorm = 0, the default) .4 and .1.
 * With Tc = 2 the candidates are {1, 2} -> S = {0, 2}, gates .4, .3; renorm = 1: .4/.7, .3/.7. */
static void test_route_hand(void **st) {
  (void)st;
  int32_t tab[12] = {1, 2, 3, 0, 3, 2, 0, 3, 1, 1, 2, 0};
  char path[64];
  tmpname(path);
  save_table(path, 4, tab);
  float z[4] = {logf(.4f), logf(.1f), logf(.3f), logf(.2f)};
  carl_route_in_t in = {.T = 1, .E = 4, .logits = z};
  tu_out_t o;
  tu_out_init(&o, 1, 4, 2, 0);
  carl_router_t *r;
  assert_int_equal(tu_create("c2r", "Tc=1", &r), CARL_OK);
  assert_int_equal((int)carl_router_get(r, "renorm"), 0);
  assert_int_equal(carl_router_load(r, path), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 0);
  assert_int_equal(o.experts[1], 1);
  assert_float_equal(o.weights[0], 0.4, 1e-6);
  assert_float_equal(o.weights[1], 0.1, 1e-6);
  carl_router_free(r);
  assert_int_equal(tu_create("c2r", "Tc=2 renorm=1", &r), CARL_OK);
  assert_int_equal(carl_router_load(r, path), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
  assert_int_equal(o.experts[0], 0);
  assert_int_equal(o.experts[1], 2);
  assert_float_equal(o.weights[0], 0.4 / 0.7, 1e-6);
  assert_float_equal(o.weights[1], 0.3 / 0.7, 1e-6);
  carl_router_free(r);
  unlink(path);
  tu_out_free(&o);
}

/* Tc = E-1: every other expert is a candidate, so c2r is exactly topk (research/routers.md 1.3),
 * for any table: experts and weights bitwise, with and without renorm and with capacity. */
static void test_identity_topk(void **st) {
  (void)st;
  enum { T = 300, E = 8, k = 3 };
  float *z = malloc(sizeof(float) * T * E);
  tu_logits(z, T, E, NULL, 1.5, 3);
  int32_t tab[E * (E - 1)];
  for (int i = 0; i < E; i++) /* an arbitrary order: i+1, i+2, ... (mod E) reversed */
    for (int j = 0; j < E - 1; j++) tab[i * (E - 1) + j] = (i + E - 1 - j) % E;
  char path[64];
  tmpname(path);
  save_table(path, E, tab);
  const char *modes[][2] = {{"Tc=7 k=3 renorm=1", "k=3 renorm=1"},
                            {"Tc=7 k=3 renorm=0", "k=3 renorm=0"},
                            {"Tc=7 k=3 renorm=1 capacity_factor=1", "k=3 renorm=1 capacity_factor=1"}};
  for (int m = 0; m < 3; m++) {
    carl_router_t *a, *b;
    assert_int_equal(tu_create("c2r", modes[m][0], &a), CARL_OK);
    assert_int_equal(tu_create("topk", modes[m][1], &b), CARL_OK);
    assert_int_equal(carl_router_load(a, path), CARL_OK);
    tu_out_t oa, ob;
    tu_out_init(&oa, T, E, k, 1);
    tu_out_init(&ob, T, E, k, 1);
    carl_route_in_t in = {.T = T, .E = E, .logits = z};
    assert_int_equal(carl_router_route(a, &in, &oa.out), CARL_OK);
    assert_int_equal(carl_router_route(b, &in, &ob.out), CARL_OK);
    assert_memory_equal(oa.experts, ob.experts, sizeof(int32_t) * T * k);
    assert_memory_equal(oa.weights, ob.weights, sizeof(float) * T * k);
    assert_int_equal(oa.out.dropped, ob.out.dropped);
    assert_int_equal(oa.out.capacity, ob.out.capacity);
    if (m == 2) assert_true(oa.out.dropped > 0);
    tu_out_free(&oa);
    tu_out_free(&ob);
    carl_router_free(a);
    carl_router_free(b);
  }
  unlink(path);
  free(z);
}

/* profile = 1 without a table: routes as topk and accumulates co-activation counts of its
 * decisions; the saved counts equal a brute-force count written here (reference top-k in double);
 * a router that loads them builds the table and routes with it. */
static void test_profile(void **st) {
  (void)st;
  enum { T = 200, E = 6, k = 2 };
  float *z = malloc(sizeof(float) * T * E);
  double off[E] = {0.5, 0, 0.3, 0, -0.2, 0.1};
  carl_router_t *r;
  assert_int_equal(tu_create("c2r", "profile=1 Tc=2", &r), CARL_OK);
  int64_t bf[E * E] = {0};
  tu_out_t o;
  tu_out_init(&o, T, E, k, 0);
  for (int step = 0; step < 3; step++) {
    tu_logits(z, T, E, off, 1.0, 100 + step);
    carl_route_in_t in = {.T = T, .E = E, .logits = z, .step = step};
    assert_int_equal(carl_router_route(r, &in, &o.out), CARL_OK);
    assert_int_equal(carl_router_update(r, &in, &o.out), CARL_OK);
    for (int t = 0; t < T; t++) {
      double s[E];
      int32_t idx[k];
      tu_scores(z + t * E, E, 0, s);
      tu_topk(s, E, k, idx);
      for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) bf[idx[a] * E + idx[b]]++;
    }
  }
  char path[64];
  tmpname(path);
  assert_int_equal(carl_router_save(r, path), CARL_OK);
  carl_array_t a;
  assert_int_equal(carl_npy_read(path, &a), CARL_OK);
  assert_int_equal(a.dtype, CARL_I64);
  assert_int_equal(a.ndim, 2);
  assert_int_equal(a.shape[0], E);
  assert_int_equal(a.shape[1], E);
  assert_memory_equal(a.data, bf, sizeof bf);
  carl_array_free(&a);
  /* load the counts into a non-profiling router: it routes with the table built from them */
  carl_router_t *q;
  assert_int_equal(tu_create("c2r", "Tc=1", &q), CARL_OK);
  assert_int_equal(carl_router_load(q, path), CARL_OK);
  int32_t tab[E * (E - 1)];
  assert_int_equal(carl_c2r_table(E, bf, tab), CARL_OK);
  carl_route_in_t in = {.T = T, .E = E, .logits = z};
  assert_int_equal(carl_router_route(q, &in, &o.out), CARL_OK);
  for (int t = 0; t < T; t++) {
    double s[E];
    int32_t idx[1];
    tu_scores(z + t * E, E, 0, s);
    tu_topk(s, E, 1, idx);
    assert_int_equal(o.experts[t * k], idx[0]);
    assert_int_equal(o.experts[t * k + 1], tab[idx[0] * (E - 1)]); /* Tc = 1: the fixed partner */
  }
  /* saving a router that only has a table writes the table, int32 [E, E-1] */
  char path2[64];
  tmpname(path2);
  assert_int_equal(carl_router_save(q, path2), CARL_OK);
  assert_int_equal(carl_npy_read(path2, &a), CARL_OK);
  assert_int_equal(a.dtype, CARL_I32);
  assert_int_equal(a.shape[1], E - 1);
  assert_memory_equal(a.data, tab, sizeof tab);
  carl_array_free(&a);
  unlink(path);
  unlink(path2);
  tu_out_free(&o);
  carl_router_free(r);
  carl_router_free(q);
  free(z);
}

static void test_errors(void **st) {
  (void)st;
  float z[8] = {0, 1, 2, 3, 3, 2, 1, 0};
  carl_route_in_t in = {.T = 2, .E = 4, .logits = z};
  tu_out_t o;
  tu_out_init(&o, 2, 4, 2, 0);
  carl_router_t *r;
  /* missing table */
  assert_int_equal(tu_create("c2r", "", &r), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_STATE);
  assert_non_null(strstr(carl_errmsg(), "collaboration table"));
  assert_int_equal(carl_router_save(r, "/tmp/carl_c2r_never.npy"), CARL_ERR_STATE);
  assert_int_equal(carl_router_load(r, "/nonexistent/carl_table.npy"), CARL_ERR_IO);
  /* Tc out of range: E - 1 = 3 */
  int32_t tab[12] = {1, 2, 3, 0, 3, 2, 0, 3, 1, 1, 2, 0};
  char path[64];
  tmpname(path);
  save_table(path, 4, tab);
  carl_router_free(r);
  assert_int_equal(tu_create("c2r", "Tc=4", &r), CARL_OK);
  assert_int_equal(carl_router_load(r, path), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "Tc=4 out of range"));
  carl_router_free(r);
  tu_out_t o3;
  tu_out_init(&o3, 2, 4, 4, 0);
  assert_int_equal(tu_create("c2r", "Tc=2 k=4", &r), CARL_OK); /* Tc < k - 1 */
  assert_int_equal(carl_router_load(r, path), CARL_OK);
  assert_int_equal(carl_router_route(r, &in, &o3.out), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "Tc=2"));
  carl_router_free(r);
  tu_out_free(&o3);
  assert_int_equal(tu_create("c2r", "Tc=0", &r), CARL_ERR_INVALID);
  /* a table for E = 4 used with E = 5 */
  assert_int_equal(tu_create("c2r", "Tc=2", &r), CARL_OK);
  assert_int_equal(carl_router_load(r, path), CARL_OK);
  float z5[5] = {0, 1, 2, 3, 4};
  carl_route_in_t in5 = {.T = 1, .E = 5, .logits = z5};
  assert_int_equal(carl_router_route(r, &in5, &o.out), CARL_ERR_SHAPE);
  /* a table row that repeats an expert, and a wrong shape */
  int32_t badtab[12] = {1, 1, 3, 0, 3, 2, 0, 3, 1, 1, 2, 0};
  save_table(path, 4, badtab);
  assert_int_equal(carl_router_load(r, path), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "row 0"));
  int64_t shape[2] = {4, 2};
  assert_int_equal(carl_npy_save(path, CARL_I32, 2, shape, tab), CARL_OK);
  assert_int_equal(carl_router_load(r, path), CARL_ERR_SHAPE);
  float ftab[12] = {0};
  int64_t shape3[2] = {4, 3};
  assert_int_equal(carl_npy_save(path, CARL_F32, 2, shape3, ftab), CARL_OK);
  assert_int_equal(carl_router_load(r, path), CARL_ERR_DTYPE);
  carl_router_free(r);
  unlink(path);
  tu_out_free(&o);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_table_hand), cmocka_unit_test(test_route_hand), cmocka_unit_test(test_identity_topk),
      cmocka_unit_test(test_profile),    cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
