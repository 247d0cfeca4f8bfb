/* The nccl executor (carl/nccl.h) against the local executor (src/exec/local.c) on the host, on
 * fresh random inputs every run (the seed is printed; CARL_TEST_SEED=<seed> replays it; rank 0's
 * seed is the run's). One process per GPU: run as one process (or mpirun -np 1: the GPU machine
 * lent so far has one GPU, and NCCL refuses two ranks on one GPU), or under mpirun -np G on G
 * GPUs. Every rank runs the same plans over D = G devices and checks its own share:
 *   dispatch        the copies it sends and receives (first hop and forwarded) equal the local
 *                   executor's xc, bit for bit (copied back from the GPU);
 *   combine         y of its tokens equals the local executor's, bit for bit (the same float sums
 *                   in the same order);
 *   backward        dispatch_backward (combine of the copies' gradients) and combine_backward
 *                   (dispatch of dy) the same way;
 *   wire bytes      what it handed NCCL per peer (the self pair: its copies in place) equals the
 *                   plan's accounting, carl_plan_cost traffic with 4 d bytes per copy;
 *   plans           flat and hierarchical on a topology of 1 node x G devices and of 2 nodes x
 *                   G/2 (G = 1: 1 x 1), and a plan with more slots than experts per device:
 *                   empty slots and a permuted order on one device (an expert cannot appear twice
 *                   on one device), a replica of another device's expert on each device for G > 1;
 *   collectives     allreduce (host doubles), allreduce_f (device floats), allgather (device
 *                   bytes) against closed forms;
 *   migrate         device tensors equal the local executor's migration;
 *   errors          a plan for another device count, a plan of one device only: refused by name;
 *   NVLS            NCCL_NVLS_ENABLE is "0" in the environment once the executor exists.
 * Without a CUDA device the program prints why and exits 77 (skipped). A build without the nccl
 * executor checks only that create says so ("not supported by this build") and exits 77. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "carl/core.h"
#include "carl/cuda.h"
#include "carl/exec.h"
#include "carl/nccl.h"
#include "carl/place.h"
#include "carl/plan.h"

static carl_cuda_t *G;
static carl_exec_t *EX;
static uint64_t SEED;

static uint64_t sm_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double sm_unif(uint64_t *s) { return ((sm_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static float sm_normal(uint64_t *s) { return (float)(sqrt(-2.0 * log(sm_unif(s))) * cos(6.283185307179586 * sm_unif(s))); }

static void random_experts(uint64_t *s, int32_t *ex, int64_t T, int k, int E) {
  for (int64_t t = 0; t < T; t++)
    for (int j = 0; j < k; j++) {
      int e, dup;
      do {
        e = (int)(sm_next(s) % (uint64_t)E);
        dup = 0;
        for (int q = 0; q < j; q++) dup |= ex[t * k + q] == e;
      } while (dup);
      ex[t * k + j] = sm_next(s) % 11 == 0 ? -1 : e;
    }
}

static void *dev_alloc(size_t bytes) {
  void *d = NULL;
  assert_int_equal(carl_cuda_malloc(G, bytes ? bytes : 4, &d), CARL_OK);
  return d;
}
static void *dev_copy(const void *h, size_t bytes) {
  void *d = dev_alloc(bytes);
  if (bytes) assert_int_equal(carl_cuda_upload(G, d, h, bytes), CARL_OK);
  return d;
}
static void down(void *h, const void *d, size_t bytes) {
  if (bytes) assert_int_equal(carl_cuda_download(G, h, d, bytes), CARL_OK);
}

/* The copies rank r fills or reads in a plan: first-hop pairs r -> b and a -> r, forwarded pairs
 * r -> b and f -> r (the self pairs among them). mine[c] = 1 for those. */
static void my_copies(const carl_plan_t *p, int r, char *mine) {
  const int D = p->D;
  memset(mine, 0, (size_t)(p->n_send + p->n_fwd));
  for (int b = 0; b < D; b++) {
    for (int64_t c = p->send_off[r * D + b]; c < p->send_off[r * D + b + 1]; c++) mine[c] = 1;
    for (int64_t c = p->send_off[b * D + r]; c < p->send_off[b * D + r + 1]; c++) mine[c] = 1;
    if (p->mode != CARL_PLAN_HIER) continue;
    for (int64_t i = p->fwd_off[r * D + b]; i < p->fwd_off[r * D + b + 1]; i++) mine[p->n_send + i] = 1;
    for (int64_t i = p->fwd_off[b * D + r]; i < p->fwd_off[b * D + r + 1]; i++) mine[p->n_send + i] = 1;
  }
}

/* Dispatch then combine of one plan on the nccl executor (the rank's share, on the GPU) and the
 * local executor (every device, on the host), from the same random values. bwd: through the
 * backward names (combine_backward = dispatch of dy, dispatch_backward = combine of dxc). */
static void run_pair(const carl_topo_t *t, const carl_plan_t *p, int d, uint64_t *s, int bwd, const char *what) {
  const int D = p->D, r = carl_exec_rank(EX);
  const int64_t T = p->T, Tr = T / D, t0 = Tr * r, nc = p->n_send + p->n_fwd;
  const size_t xb = sizeof(float) * (size_t)(T * d), cb = sizeof(float) * (size_t)(nc * d), rb = sizeof(float) * (size_t)(Tr * d);
  float *x = malloc(xb), *xc = calloc((size_t)(nc * d) + 1, sizeof(float)), *xg = malloc(cb + 4);
  float *yc = malloc(cb + 4), *y = malloc(xb), *yg = malloc(rb + 4);
  char *mine = malloc((size_t)nc + 1);
  for (int64_t i = 0; i < T * d; i++) x[i] = sm_normal(s), y[i] = sm_normal(s);
  for (int64_t i = 0; i < nc * d; i++) yc[i] = sm_normal(s);
  my_copies(p, r, mine);
  double w0[64], w1[64];
  assert_true(D <= 64);
  assert_int_equal(carl_exec_nccl_wire_bytes(EX, w0, D), CARL_OK);
  /* the GPU: the rank's tokens, a zeroed copy array */
  float *dx = dev_copy(x + t0 * d, rb), *dxc = dev_alloc(cb), *dy = dev_copy(y + t0 * d, rb), *dyc;
  assert_int_equal(carl_cuda_memset(G, dxc, 0, cb ? cb : 4), CARL_OK);
  carl_exec_t *loc;
  assert_int_equal(carl_exec_local_create(&loc), CARL_OK);
  if (bwd) {
    assert_int_equal(carl_exec_combine_backward(loc, p, x, d, xc), CARL_OK);
    assert_int_equal(carl_exec_combine_backward(EX, p, dx, d, dxc), CARL_OK);
  } else {
    assert_int_equal(carl_exec_dispatch(loc, p, x, d, xc), CARL_OK);
    assert_int_equal(carl_exec_dispatch(EX, p, dx, d, dxc), CARL_OK);
  }
  down(xg, dxc, cb);
  int64_t checked = 0;
  for (int64_t c = 0; c < nc; c++)
    if (mine[c]) {
      assert_memory_equal(xg + c * d, xc + c * d, sizeof(float) * (size_t)d);
      checked++;
    }
  /* combine: the copies' values yc (the experts' outputs, or the copies' gradients) */
  dyc = dev_copy(yc, cb);
  if (bwd) {
    assert_int_equal(carl_exec_dispatch_backward(loc, p, yc, d, y), CARL_OK);
    assert_int_equal(carl_exec_dispatch_backward(EX, p, dyc, d, dy), CARL_OK);
  } else {
    assert_int_equal(carl_exec_combine(loc, p, yc, d, y), CARL_OK);
    assert_int_equal(carl_exec_combine(EX, p, dyc, d, dy), CARL_OK);
  }
  down(yg, dy, rb);
  assert_memory_equal(yg, y + t0 * d, rb);
  /* bytes handed to NCCL per peer: the plan's accounting */
  assert_int_equal(carl_exec_nccl_wire_bytes(EX, w1, D), CARL_OK);
  carl_cost_t cost;
  assert_int_equal(carl_cost_init(&cost, t), CARL_OK);
  assert_int_equal(carl_plan_cost(t, p, sizeof(float) * (size_t)d, &cost), CARL_OK);
  for (int b = 0; b < D; b++) assert_float_equal(w1[b] - w0[b], cost.traffic[r * D + b], 0);
  print_message("  rank %d: %s%s: %lld + %lld copies (%lld of them this rank's), %lld tokens x %d: bit-identical; "
                "%.0f bytes to self\n", r, what, bwd ? " (backward)" : "", (long long)p->n_send, (long long)p->n_fwd,
                (long long)checked, (long long)Tr, d, w1[r] - w0[r]);
  carl_cost_free(&cost);
  carl_exec_free(loc);
  carl_cuda_mfree(G, dx), carl_cuda_mfree(G, dxc), carl_cuda_mfree(G, dy), carl_cuda_mfree(G, dyc);
  free(x), free(xc), free(xg), free(yc), free(y), free(yg), free(mine);
}

static void plan_case(int nodes, int dpn, const carl_placement_t *pl, carl_plan_mode mode, int64_t T, int k, int d,
                      uint64_t *s, const char *what) {
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, nodes, dpn, 160, 3, 50, 10), CARL_OK);
  int32_t *ex = malloc(sizeof(int32_t) * (size_t)(T * k));
  random_experts(s, ex, T, k, pl->E);
  carl_plan_t p = {0};
  assert_int_equal(carl_plan_build(&t, pl, ex, NULL, T, k, mode, -1, CARL_PLAN_ROWS, &p), CARL_OK);
  if (mode == CARL_PLAN_HIER && nodes > 1 && dpn > 1) assert_true(p.n_fwd > 0);
  run_pair(&t, &p, d, s, 0, what);
  run_pair(&t, &p, d, s, 1, what);
  carl_plan_free(&p);
  free(ex);
}

static void test_flat_hier(void **st) {
  (void)st;
  const int D = carl_exec_size(EX);
  uint64_t s = SEED + 1;
  carl_placement_t pl;
  assert_int_equal(carl_placement_contiguous(&pl, 8 * D, D), CARL_OK);
  plan_case(1, D, &pl, CARL_PLAN_FLAT, 300 * D, 3, 40, &s, "flat, 1 node");
  if (D % 2 == 0)
    plan_case(2, D / 2, &pl, CARL_PLAN_HIER, 300 * D, 3, 40, &s, "hierarchical, 2 nodes");
  else
    plan_case(1, D, &pl, CARL_PLAN_HIER, 300 * D, 3, 40, &s, "hierarchical, 1 node");
  plan_case(1, D, &pl, CARL_PLAN_FLAT, 7 * D, 2, 1, &s, "flat, d = 1"); /* rows of one float */
  carl_placement_free(&pl);
}

/* More slots than experts per device: on one device 8 experts in 10 slots, permuted, 2 empty;
 * on G > 1 devices each also holds a replica of an expert of the next device. */
static void test_slots_replicas(void **st) {
  (void)st;
  const int D = carl_exec_size(EX), E = 8 * D;
  uint64_t s = SEED + 2;
  carl_placement_t pl;
  if (D == 1) {
    const int32_t table[10] = {5, 2, -1, 7, 0, 1, 6, -1, 3, 4};
    assert_int_equal(carl_placement_from_table(&pl, 8, 1, 10, table), CARL_OK);
  } else {
    int32_t *table = malloc(sizeof(int32_t) * (size_t)(D * 9));
    for (int b = 0; b < D; b++) {
      for (int j = 0; j < 8; j++) table[b * 9 + j] = 8 * b + j;
      table[b * 9 + 8] = (8 * (b + 1) + b % 8) % E; /* a replica of the next device's expert */
    }
    assert_int_equal(carl_placement_from_table(&pl, E, D, 9, table), CARL_OK);
    free(table);
  }
  plan_case(1, D, &pl, CARL_PLAN_FLAT, 256 * D, 4, 24, &s, D == 1 ? "flat, 10 slots (2 empty)" : "flat, replicas");
  if (D % 2 == 0) plan_case(2, D / 2, &pl, CARL_PLAN_HIER, 256 * D, 4, 24, &s, "hierarchical, replicas");
  else plan_case(1, D, &pl, CARL_PLAN_HIER, 256 * D, 4, 24, &s, D == 1 ? "hierarchical, 10 slots (2 empty)" : "hierarchical");
  carl_placement_free(&pl);
}

static void test_collectives(void **st) {
  (void)st;
  const int D = carl_exec_size(EX), r = carl_exec_rank(EX);
  double v[3] = {r + 1.0, 1.0, -(double)r};
  assert_int_equal(carl_exec_allreduce(EX, v, 3), CARL_OK);
  assert_float_equal(v[0], D * (D + 1) / 2.0, 0);
  assert_float_equal(v[1], D, 0);
  assert_float_equal(v[2], -D * (D - 1) / 2.0, 0);
  float f[2] = {0.5f * (float)(r + 1), 0.25f}, *df = dev_copy(f, sizeof f);
  assert_int_equal(carl_exec_allreduce_f(EX, df, 2), CARL_OK);
  down(f, df, sizeof f);
  assert_float_equal(f[0], 0.5 * D * (D + 1) / 2.0, 0);
  assert_float_equal(f[1], 0.25 * D, 0);
  int32_t *all = calloc((size_t)D * 2, sizeof(int32_t));
  all[r * 2] = 10 * r, all[r * 2 + 1] = 10 * r + 1;
  int32_t *dall = dev_copy(all, sizeof(int32_t) * (size_t)D * 2);
  assert_int_equal(carl_exec_allgather(EX, dall, 2 * sizeof(int32_t)), CARL_OK);
  down(all, dall, sizeof(int32_t) * (size_t)D * 2);
  for (int a = 0; a < D; a++) assert_int_equal(all[a * 2], 10 * a), assert_int_equal(all[a * 2 + 1], 10 * a + 1);
  carl_cuda_mfree(G, df), carl_cuda_mfree(G, dall);
  free(all);
}

static void test_migrate(void **st) {
  (void)st;
  const int D = carl_exec_size(EX), E = 4 * D;
  uint64_t s = SEED + 3;
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, 1, D, 160, 3, 50, 10), CARL_OK);
  carl_placement_t old, nw;
  assert_int_equal(carl_placement_contiguous(&old, E, D), CARL_OK);
  const int S = old.slots;
  /* the experts permuted over all slots (random, the same on every rank) */
  int32_t *table = malloc(sizeof(int32_t) * (size_t)(D * S));
  for (int i = 0; i < D * S; i++) table[i] = i;
  for (int i = D * S - 1; i > 0; i--) {
    const int j = (int)(sm_next(&s) % (uint64_t)(i + 1)), x = table[i];
    table[i] = table[j], table[j] = x;
  }
  assert_int_equal(carl_placement_from_table(&nw, E, D, S, table), CARL_OK);
  carl_migration_t mig;
  assert_int_equal(carl_place_migrate(&t, &old, &nw, 0, 1000.0, &mig), CARL_OK);
  assert_true(mig.n_moves > 0);
  const int64_t numel = 33, n = (int64_t)D * S * numel;
  float *w = malloc(sizeof(float) * (size_t)n), *wg = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) w[i] = sm_normal(&s);
  float *dw = dev_copy(w, sizeof(float) * (size_t)n);
  carl_exec_tensor_t th = {.base = w, .numel = numel}, tg = {.base = dw, .numel = numel};
  carl_exec_t *loc;
  assert_int_equal(carl_exec_local_create(&loc), CARL_OK);
  assert_int_equal(carl_exec_migrate(loc, &old, &mig, &th, 1), CARL_OK);
  assert_int_equal(carl_exec_migrate(EX, &old, &mig, &tg, 1), CARL_OK);
  down(wg, dw, sizeof(float) * (size_t)n);
  assert_memory_equal(w, wg, sizeof(float) * (size_t)n);
  assert_true(carl_exec_migrated_bytes(EX) == carl_exec_migrated_bytes(loc));
  print_message("  migrate: %lld moves, tensors bit-identical\n", (long long)mig.n_moves);
  carl_exec_free(loc);
  carl_cuda_mfree(G, dw);
  free(w), free(wg), free(table);
  carl_migration_free(&mig);
  carl_placement_free(&nw);
  carl_placement_free(&old);
}

static void test_errors(void **st) {
  (void)st;
  const int D = carl_exec_size(EX);
  carl_topo_t t;
  assert_int_equal(carl_topo_make(&t, 1, D + 1, 160, 3, 50, 10), CARL_OK);
  carl_placement_t pl;
  assert_int_equal(carl_placement_contiguous(&pl, 2 * (D + 1), D + 1), CARL_OK);
  const int64_t T = 4 * (D + 1);
  int32_t *ex = calloc((size_t)T, sizeof(int32_t));
  carl_plan_t p = {0};
  assert_int_equal(carl_plan_build(&t, &pl, ex, NULL, T, 1, CARL_PLAN_FLAT, -1, CARL_PLAN_ROWS, &p), CARL_OK);
  float *dx = dev_alloc(sizeof(float) * (size_t)T), *dxc = dev_alloc(sizeof(float) * (size_t)T);
  assert_int_equal(carl_exec_dispatch(EX, &p, dx, 1, dxc), CARL_ERR_INVALID);
  char want[128];
  snprintf(want, sizeof want, "the plan has %d devices, the run has %d ranks", D + 1, D);
  assert_non_null(strstr(carl_errmsg(), want));
  /* a plan of the right device count, but for device 0 only */
  carl_topo_t t1;
  assert_int_equal(carl_topo_make(&t1, 1, D, 160, 3, 50, 10), CARL_OK);
  carl_placement_t pl1;
  assert_int_equal(carl_placement_contiguous(&pl1, 2 * D, D), CARL_OK);
  assert_int_equal(carl_plan_build(&t1, &pl1, ex, NULL, 4 * D, 1, CARL_PLAN_FLAT, 0, CARL_PLAN_ROWS, &p), CARL_OK);
  assert_int_equal(carl_exec_combine(EX, &p, dxc, 1, dx), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "the plan is for device 0 only"));
  carl_placement_free(&pl1);
  carl_exec_t *loc;
  assert_int_equal(carl_exec_local_create(&loc), CARL_OK);
  double w[1];
  assert_int_equal(carl_exec_nccl_wire_bytes(loc, w, 1), CARL_ERR_INVALID);
  carl_exec_free(loc);
  carl_cuda_mfree(G, dx), carl_cuda_mfree(G, dxc);
  free(ex);
  carl_plan_free(&p);
  carl_placement_free(&pl);
}

/* NVLink multicast: the executor wrote NCCL_NVLS_ENABLE=0 before making its communicator */
static void test_nvls_off(void **st) {
  (void)st;
  const char *v = getenv("NCCL_NVLS_ENABLE");
  assert_non_null(v);
  assert_string_equal(v, "0");
}

int main(void) {
  const char *env = getenv("CARL_TEST_SEED");
  SEED = env ? strtoull(env, NULL, 10) : ((uint64_t)time(NULL) * 2654435761u) ^ (uint64_t)getpid();
  if (!carl_exec_nccl_built()) {
    carl_exec_t *ex = NULL;
    carl_status st = carl_exec_nccl_create(NULL, &ex);
    printf("test_exec_nccl: %s\n", carl_errmsg());
    if (st != CARL_ERR_UNSUPPORTED || ex || !strstr(carl_errmsg(), "not supported by this build")) {
      fprintf(stderr, "test_exec_nccl: a build without the nccl executor must say so\n");
      return 1;
    }
    printf("test_exec_nccl: skipped: no nccl executor in this build\n");
    return 77;
  }
  int n = 0;
  if (carl_cuda_device_count(&n) != CARL_OK || n == 0) {
    printf("test_exec_nccl: skipped: no CUDA device\n");
    return 77;
  }
  int local = 0, nlocal = 1;
  if (carl_exec_nccl_local_rank(&local, &nlocal) != CARL_OK || local >= n) {
    fprintf(stderr, "test_exec_nccl: %s\n", local >= n ? "more ranks on this machine than GPUs (one GPU per rank)" : carl_errmsg());
    carl_exec_mpi_finalize();
    return 1;
  }
  if (carl_cuda_create(local, &G) != CARL_OK || carl_exec_nccl_create(G, &EX) != CARL_OK) {
    fprintf(stderr, "test_exec_nccl: %s\n", carl_errmsg());
    carl_cuda_free(G);
    carl_exec_mpi_abort(1);
    return 1;
  }
  /* rank 0's seed for every rank (52 bits travel exactly in a double) */
  double sd = carl_exec_rank(EX) == 0 ? (double)(SEED & ((1ull << 52) - 1)) : 0.0;
  if (carl_exec_allreduce(EX, &sd, 1) != CARL_OK) {
    fprintf(stderr, "test_exec_nccl: %s\n", carl_errmsg());
    carl_exec_mpi_abort(1);
    return 1;
  }
  SEED = (uint64_t)sd;
  printf("test_exec_nccl: rank %d of %d on %s (GPU %d of %d), seed %llu (replay with CARL_TEST_SEED=%llu)\n",
         carl_exec_rank(EX), carl_exec_size(EX), carl_cuda_describe(G), local, n, (unsigned long long)SEED,
         (unsigned long long)SEED);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_flat_hier),
      cmocka_unit_test(test_slots_replicas),
      cmocka_unit_test(test_collectives),
      cmocka_unit_test(test_migrate),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_nvls_off),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  carl_exec_free(EX);
  carl_cuda_free(G);
  carl_exec_mpi_finalize();
  return rc;
}
