/* The mpi executor (carl/exec.h). Run by ctest as one process, and by tests/cli/mpi_exec.sh under
 * mpirun -np 4 (one rank per device of 2 nodes x 2 devices):
 * flat and hierarchical plans:
 *   dispatch   every copy a rank receives carries its token's row (x[t][j] = t + j / 64, closed form);
 *   combine    y[t] of the rank's tokens equals the local executor's combine of the same copies;
 *   wire bytes per rank pair equal the plan's accounting (carl_plan_cost traffic) and an
 *              independent count from the decisions: 4d x (copies a -> b + copies b -> a), the
 *              copies of the flat scheme, or of the hierarchical one (hier_copies);
 *   collectives allreduce (doubles), allreduce_f (floats) and allgather against closed forms;
 *   migrate    every rank's tensors equal the local executor's migration, for tensors of every
 *              slot and for tensors of the rank's own slots only (its block of the local result);
 *   model      each rank stores only its own expert slots, whether made whole and then given the
 *              executor or made by carl_model_create_ep (never whole), on a placement that
 *              reverses the experts: the slot count is the placement's slots per device, the
 *              parameter count is the non-expert count plus 1/ranks of the expert count (both
 *              from the config by hand), the slots hold the one-process model's initial values,
 *              and carl_model_full gives rank 0 the one-process model bit for bit.
 * Built without MPI: create reports CARL_ERR_UNSUPPORTED, and that is all this test checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "carl/core.h"
#include "carl/exec.h"
#include "carl/model.h"
#include "carl/place.h"
#include "carl/plan.h"

static carl_exec_t *EX; /* one for the whole run: MPI initialises once */

#define E_ 8
#define K_ 2
#define D_ROW 5

/* The decision every rank takes: token t picks experts (t * 3) % E and (t * 5 + 1) % E, unless
 * both are the same (then the second is dropped). */
static void decision(int64_t T, int32_t *ex) {
  for (int64_t t = 0; t < T; t++) {
    ex[t * K_] = (int32_t)((t * 3) % E_);
    const int32_t b = (int32_t)((t * 5 + 1) % E_);
    ex[t * K_ + 1] = b == ex[t * K_] ? -1 : b;
  }
}

static void topo_of(int D, carl_topo_t *t) {
  if (D == 1)
    assert_int_equal(carl_topo_make(t, 1, 1, 160, 3, 50, 10), CARL_OK);
  else
    assert_int_equal(carl_topo_make(t, 2, D / 2, 160, 3, 50, 10), CARL_OK);
}

static int on_dev(const int32_t *ex, int64_t i, int S, int b) {
  int on = 0;
  for (int q = 0; q < K_; q++) on |= ex[i * K_ + q] >= 0 && ex[i * K_ + q] / S == b;
  return on;
}

/* flat dispatch copies a -> b: tokens of a with an expert on b */
static int64_t flat_copies(const int32_t *ex, int64_t T, int64_t Tr, int S, int a, int b) {
  int64_t n = 0;
  for (int64_t i = a * Tr; i < (a + 1) * Tr && i < T; i++) n += on_dev(ex, i, S, b);
  return n;
}

/* hierarchical dispatch copies a -> b, counted from the decisions with dpn devices per node (the
 * DeepEP scheme): a and b on one node: a's tokens with an expert on b (direct), plus, a being the
 * forwarder, the tokens of sources of a's local index on other nodes with an expert on b != a;
 * b on another node: when b has a's local index (the forwarder), a's tokens with an expert
 * anywhere on b's node, else nothing. */
static int64_t hier_copies(const int32_t *ex, int64_t T, int64_t Tr, int S, int dpn, int a, int b) {
  const int D = (int)(T / Tr);
  if (a / dpn != b / dpn) {
    if (a % dpn != b % dpn) return 0;
    int64_t n = 0;
    for (int64_t i = a * Tr; i < (a + 1) * Tr; i++) {
      int on = 0;
      for (int j = 0; j < dpn; j++) on |= on_dev(ex, i, S, b / dpn * dpn + j);
      n += on;
    }
    return n;
  }
  int64_t n = flat_copies(ex, T, Tr, S, a, b);
  if (b != a)
    for (int src = 0; src < D; src++)
      if (src / dpn != a / dpn && src % dpn == a % dpn) n += flat_copies(ex, T, Tr, S, src, b);
  return n;
}

static void dispatch_combine_bytes(carl_plan_mode mode) {
  if (!EX) skip();
  const int D = carl_exec_size(EX), r = carl_exec_rank(EX), d = D_ROW;
  if (D != 1 && D % 2) skip();
  carl_topo_t t;
  topo_of(D, &t);
  carl_placement_t pl;
  assert_int_equal(carl_placement_contiguous(&pl, E_, D), CARL_OK);
  const int64_t T = 16 * D, Tr = T / D, t0 = Tr * r;
  int32_t *ex = malloc(sizeof(int32_t) * (size_t)(T * K_));
  decision(T, ex);
  carl_plan_t p = {0};
  assert_int_equal(carl_plan_build(&t, &pl, ex, NULL, T, K_, mode, -1, CARL_PLAN_ROWS, &p), CARL_OK);
  if (mode == CARL_PLAN_HIER && D > 1) assert_true(p.n_fwd > 0); /* the case has forwarding */
  const int64_t nc = p.n_send + p.n_fwd;
  float *x = malloc(sizeof(float) * (size_t)(Tr * d)), *xc = calloc((size_t)(nc * d), sizeof(float));
  float *xg = malloc(sizeof(float) * (size_t)(T * d)), *xcl = calloc((size_t)(nc * d), sizeof(float));
  for (int64_t i = 0; i < T; i++)
    for (int j = 0; j < d; j++) xg[i * d + j] = (float)i + (float)j / 64.0f;
  memcpy(x, xg + t0 * d, sizeof(float) * (size_t)(Tr * d));
  double w0[64];
  assert_true(D <= 64);
  assert_int_equal(carl_exec_mpi_wire_bytes(EX, w0, D), CARL_OK);
  assert_int_equal(carl_exec_dispatch(EX, &p, x, d, xc), CARL_OK);
  /* every copy received by r (pair a -> r) carries its token's row */
  for (int a = 0; a < D; a++)
    for (int64_t c = p.send_off[a * D + r]; c < p.send_off[a * D + r + 1]; c++)
      for (int j = 0; j < d; j++) assert_float_equal(xc[c * d + j], (float)p.send_tok[c] + (float)j / 64.0f, 0);
  /* and every forwarded copy for r (pair f -> r) its parent's token's row */
  for (int f = 0; f < D; f++)
    for (int64_t i = p.fwd_off[f * D + r]; i < p.fwd_off[f * D + r + 1]; i++)
      for (int j = 0; j < d; j++)
        assert_float_equal(xc[(p.n_send + i) * d + j], (float)p.send_tok[p.fwd_parent[i]] + (float)j / 64.0f, 0);
  /* expert outputs per received copy: yc[c] = 2 xc[c] + c; the same on the local reference */
  carl_exec_t *loc;
  assert_int_equal(carl_exec_local_create(&loc), CARL_OK);
  assert_int_equal(carl_exec_dispatch(loc, &p, xg, d, xcl), CARL_OK);
  for (int64_t c = 0; c < nc; c++)
    for (int j = 0; j < d; j++) {
      xcl[c * d + j] = 2 * xcl[c * d + j] + (float)c;
      xc[c * d + j] = 2 * xc[c * d + j] + (float)c; /* only the received ones matter */
    }
  float *y = calloc((size_t)(Tr * d), sizeof(float)), *yl = calloc((size_t)(T * d), sizeof(float));
  assert_int_equal(carl_exec_combine(EX, &p, xc, d, y), CARL_OK);
  assert_int_equal(carl_exec_combine(loc, &p, xcl, d, yl), CARL_OK);
  for (int64_t i = 0; i < Tr * d; i++) assert_float_equal(y[i], yl[t0 * d + i], 0);
  /* bytes to each rank: the cost model's traffic, and a count from the decisions */
  double w1[64];
  assert_int_equal(carl_exec_mpi_wire_bytes(EX, w1, D), CARL_OK);
  carl_cost_t cost;
  assert_int_equal(carl_cost_init(&cost, &t), CARL_OK);
  assert_int_equal(carl_plan_cost(&t, &p, sizeof(float) * (size_t)d, &cost), CARL_OK);
  const int S = E_ / D;
  for (int b = 0; b < D; b++) {
    /* flat: tokens of r with an expert on b, plus tokens of b with an expert on r (combine) */
    const double want = (mode == CARL_PLAN_FLAT ? (double)(flat_copies(ex, T, Tr, S, r, b) + flat_copies(ex, T, Tr, S, b, r))
                                                : (double)(hier_copies(ex, T, Tr, S, t.devices_per_node, r, b) +
                                                           hier_copies(ex, T, Tr, S, t.devices_per_node, b, r))) *
                        sizeof(float) * d;
    assert_float_equal(w1[b] - w0[b], want, 0);
    assert_float_equal(w1[b] - w0[b], cost.traffic[r * D + b], 0);
  }
  if (mode == CARL_PLAN_HIER && D > 1) { /* the node communicators are the topology's nodes */
    int dpn = -1, shared = -1;
    assert_int_equal(carl_exec_mpi_nodes(EX, &dpn, &shared), CARL_OK);
    assert_int_equal(dpn, D / 2);
    assert_true(shared == 0 || shared == 1);
  }
  carl_cost_free(&cost);
  carl_exec_free(loc);
  free(x), free(xc), free(xg), free(xcl), free(y), free(yl), free(ex);
  carl_plan_free(&p);
  carl_placement_free(&pl);
}

static void test_dispatch_combine_bytes(void **s) {
  (void)s;
  dispatch_combine_bytes(CARL_PLAN_FLAT);
}

/* hierarchical: one copy per destination node to the forwarder, repeated inside the node */
static void test_dispatch_combine_bytes_hier(void **s) {
  (void)s;
  dispatch_combine_bytes(CARL_PLAN_HIER);
}

static void test_collectives(void **s) {
  (void)s;
  if (!EX) skip();
  const int D = carl_exec_size(EX), r = carl_exec_rank(EX);
  double v[3] = {r + 1.0, 1.0, -(double)r};
  assert_int_equal(carl_exec_allreduce(EX, v, 3), CARL_OK);
  assert_float_equal(v[0], D * (D + 1) / 2.0, 0);
  assert_float_equal(v[1], D, 0);
  assert_float_equal(v[2], -D * (D - 1) / 2.0, 0);
  float f[2] = {0.5f * (float)(r + 1), 0.25f};
  assert_int_equal(carl_exec_allreduce_f(EX, f, 2), CARL_OK);
  assert_float_equal(f[0], 0.5 * D * (D + 1) / 2.0, 0);
  assert_float_equal(f[1], 0.25 * D, 0);
  int32_t *all = calloc((size_t)D * 2, sizeof(int32_t));
  all[r * 2] = 10 * r, all[r * 2 + 1] = 10 * r + 1;
  assert_int_equal(carl_exec_allgather(EX, all, 2 * sizeof(int32_t)), CARL_OK);
  for (int a = 0; a < D; a++) assert_int_equal(all[a * 2], 10 * a), assert_int_equal(all[a * 2 + 1], 10 * a + 1);
  free(all);
  assert_int_equal(carl_exec_allreduce(EX, NULL, -1), CARL_ERR_INVALID);
}

static void test_migrate(void **s) {
  (void)s;
  if (!EX) skip();
  const int D = carl_exec_size(EX);
  if (D < 2) skip();
  carl_placement_t old;
  assert_int_equal(carl_placement_contiguous(&old, E_, D), CARL_OK);
  const int S = old.slots;
  /* expert 0 (device 0 slot 0) to device D-1 slot 1, expert E-1 (device D-1) to device 0 slot 0 */
  carl_move_t mv[2] = {{0, 0, D - 1, 1, 0}, {E_ - 1, D - 1, 0, 0, 0}};
  carl_migration_t m = {0};
  m.n_moves = 2;
  m.moves = mv;
  const int64_t n = 3;
  float *a = malloc(sizeof(float) * (size_t)(D * S * n)), *b = malloc(sizeof(float) * (size_t)(D * S * n));
  for (int64_t i = 0; i < D * S * n; i++) a[i] = b[i] = (float)i;
  carl_exec_tensor_t ta = {.base = a, .numel = n}, tb = {.base = b, .numel = n};
  carl_exec_t *loc;
  assert_int_equal(carl_exec_local_create(&loc), CARL_OK);
  assert_int_equal(carl_exec_migrate(EX, &old, &m, &ta, 1), CARL_OK);
  assert_int_equal(carl_exec_migrate(loc, &old, &m, &tb, 1), CARL_OK);
  /* closed form: slot (D-1, 1) holds slot 0's values, slot (0, 0) the values of expert E-1's slot */
  for (int j = 0; j < n; j++) {
    assert_float_equal(a[((D - 1) * S + 1) * n + j], (float)j, 0);
    assert_float_equal(a[j], (float)((D * S - 1) * n + j), 0);
  }
  for (int64_t i = 0; i < D * S * n; i++) assert_float_equal(a[i], b[i], 0);
  carl_exec_free(loc);
  free(a), free(b);
  carl_placement_free(&old);
}

/* The same moves on tensors of the rank's own slots only: block r of the local executor's result */
static void test_migrate_own(void **s) {
  (void)s;
  if (!EX) skip();
  const int D = carl_exec_size(EX), r = carl_exec_rank(EX);
  if (D < 2) skip();
  carl_placement_t old;
  assert_int_equal(carl_placement_contiguous(&old, E_, D), CARL_OK);
  const int S = old.slots;
  /* expert 0 to device D-1 slot 1 and expert E-1 to device 0 slot 0 (a swap across ranks), expert
   * 1 (device 0 slot 1) stays on device 0 but moves to slot 1 from slot 1: a self move */
  carl_move_t mv[3] = {{0, 0, D - 1, 1, 0}, {E_ - 1, D - 1, 0, 0, 0}, {1, 0, 0, 1, 0}};
  carl_migration_t m = {0};
  m.n_moves = 3;
  m.moves = mv;
  const int64_t n = 3;
  float *full = malloc(sizeof(float) * (size_t)(D * S * n)), *own = malloc(sizeof(float) * (size_t)(S * n));
  for (int64_t i = 0; i < D * S * n; i++) full[i] = (float)i;
  for (int64_t i = 0; i < S * n; i++) own[i] = full[(int64_t)r * S * n + i];
  carl_exec_tensor_t tf = {.base = full, .numel = n}, to = {.base = own, .numel = n, .first_slot = (int64_t)r * S, .nslots = S};
  carl_exec_t *loc;
  assert_int_equal(carl_exec_local_create(&loc), CARL_OK);
  assert_int_equal(carl_exec_migrate(loc, &old, &m, &tf, 1), CARL_OK);
  assert_int_equal(carl_exec_migrate(EX, &old, &m, &to, 1), CARL_OK);
  for (int64_t i = 0; i < S * n; i++) assert_float_equal(own[i], full[(int64_t)r * S * n + i], 0);
  /* a block that is not this rank's is refused */
  to.first_slot = (int64_t)((r + 1) % D) * S;
  assert_int_equal(carl_exec_migrate(EX, &old, &m, &to, 1), CARL_ERR_INVALID);
  carl_exec_free(loc);
  free(full), free(own);
  carl_placement_free(&old);
}

static void test_model_own_slots(void **s) {
  if (!EX) skip();
  const int D = carl_exec_size(EX), r = carl_exec_rank(EX);
  if (D < 2 || E_ % D) skip();
  carl_model_config_t c;
  carl_model_config_default(&c);
  c.vocab = 64, c.max_seq = 8, c.d_model = 8, c.n_layers = 2, c.n_heads = 2, c.d_ff = 12, c.n_experts = E_;
  carl_topo_t t;
  topo_of(D, &t);
  int32_t tab[E_]; /* slot g holds expert E - 1 - g: every expert moves to another rank */
  for (int g = 0; g < E_; g++) tab[g] = E_ - 1 - g;
  carl_placement_t rev;
  assert_int_equal(carl_placement_from_table(&rev, E_, D, E_ / D, tab), CARL_OK);
  carl_model_t *one, *ep;
  assert_int_equal(carl_model_create(&c, &one), CARL_OK);
  assert_int_equal(carl_model_set_topology(one, &t, &rev), CARL_OK);
  if (*(const int *)*s) { /* made whole, then the executor */
    assert_int_equal(carl_model_create(&c, &ep), CARL_OK);
    assert_int_equal(carl_model_set_topology(ep, &t, &rev), CARL_OK);
    assert_int_equal(carl_model_set_executor(ep, EX), CARL_OK);
  } else { /* own slots from the start; nothing runs before the executor */
    assert_int_equal(carl_model_create_ep(&c, D, r, &ep), CARL_OK);
    assert_int_equal(carl_model_set_topology(ep, &t, &rev), CARL_OK);
    int32_t tok[4] = {1, 2, 3, 4};
    assert_int_equal(carl_model_forward(ep, tok, NULL, 1, 4, NULL), CARL_ERR_STATE);
    assert_int_equal(carl_model_set_executor(ep, EX), CARL_OK);
  }
  carl_placement_free(&rev);
  const carl_placement_t *pl = carl_model_placement(ep, 0);
  int64_t first;
  int count;
  carl_model_expert_slots(ep, &first, &count);
  assert_int_equal(count, pl->slots);
  assert_int_equal(first, (int64_t)r * pl->slots);
  carl_model_expert_slots(one, &first, &count);
  assert_int_equal(count, E_);
  /* by hand: per layer attn_norm d, wqkv 3d^2, wo d^2, moe_norm d, router E d; tok_emb V d,
   * pos_emb S_max d, final_norm d; expert tensors w13 + w2 = 3 f d per slot and layer */
  const int64_t d = c.d_model, f = c.d_ff, L = c.n_layers;
  const int64_t non_expert = c.vocab * d + c.max_seq * d + d + L * (d + 3 * d * d + d * d + d + E_ * d);
  const int64_t expert = L * 3 * f * d * E_;
  assert_int_equal(carl_model_nparams(one), non_expert + expert);
  assert_int_equal(carl_model_nparams(ep), non_expert + expert / D);
  /* the own slots hold the one-process model's values (the same init, the same placement) */
  for (int i = 0; i < carl_model_ntensors(ep); i++) {
    const carl_tensor_info_t *a = carl_model_tensor(ep, i), *b = carl_model_tensor(one, i);
    assert_string_equal(a->name, b->name);
    const int expert_t = a->ndim == 3;
    assert_int_equal(a->shape[0], expert_t ? b->shape[0] / D : b->shape[0]);
    const float *pa = carl_model_params(ep) + a->offset, *pb = carl_model_params(one) + b->offset + (expert_t ? a->numel * r : 0);
    assert_memory_equal(pa, pb, sizeof(float) * (size_t)a->numel);
  }
  /* the whole model on rank 0, as the one-process one */
  carl_model_full_t full;
  assert_int_equal(carl_model_full(ep, &full), CARL_OK);
  if (r == 0) {
    assert_int_equal(full.ntensors, carl_model_ntensors(one));
    assert_int_equal(full.nparams, carl_model_nparams(one));
    assert_memory_equal(full.params, carl_model_params(one), sizeof(float) * (size_t)full.nparams);
  } else {
    assert_int_equal(full.ntensors, 0);
  }
  carl_model_full_free(&full);
  /* the split is the model's from now on; gathering into it has no room */
  assert_int_equal(carl_model_set_executor(ep, NULL), CARL_ERR_STATE);
  assert_int_equal(carl_model_gather_experts(ep), CARL_ERR_STATE);
  carl_model_free(one);
  carl_model_free(ep);
}

static int WHOLE_FIRST = 1, OWN_FROM_START = 0;

int main(void) {
  carl_status st = carl_exec_mpi_create(&EX);
  if (st == CARL_ERR_UNSUPPORTED) {
    EX = NULL; /* no MPI in this build: the tests skip */
  } else if (st != CARL_OK) {
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dispatch_combine_bytes),
      cmocka_unit_test(test_dispatch_combine_bytes_hier),
      cmocka_unit_test(test_collectives),
      cmocka_unit_test(test_migrate),
      cmocka_unit_test(test_migrate_own),
      cmocka_unit_test_prestate_setup_teardown(test_model_own_slots, NULL, NULL, &WHOLE_FIRST),
      cmocka_unit_test_prestate_setup_teardown(test_model_own_slots, NULL, NULL, &OWN_FROM_START),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  carl_exec_free(EX);
  carl_exec_mpi_finalize();
  return rc;
}
