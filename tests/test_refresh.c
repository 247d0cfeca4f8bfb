/* Placement refresh in real training (carl_model_set_refresh / carl_model_end_step) and the
 * executors and step under it:
 *  - a refresh that returns the same placement leaves the run bitwise the run without refresh;
 *  - a permuting refresh moves every expert's weights and both AdamW moments to its new slots
 *    unchanged (checked against a snapshot and the placement tables, not the migration code), and
 *    the model computes the same loss as before the move;
 *  - replicas of an expert get the sum of the gradients and stay bitwise equal; a model with
 *    replicas computes the loss of the model without them;
 *  - the local executor's dispatch and combine on a hand-made 2 x 2 decision;
 *  - the step's refresh on hand-made statistics (2 nodes x 2 devices) and its migration time. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "carl/core.h"
#include "carl/exec.h"
#include "carl/model.h"
#include "carl/place.h"
#include "carl/step.h"

static void config(carl_model_config_t *c, int E) {
  carl_model_config_default(c);
  c->vocab = 13;
  c->max_seq = 8;
  c->d_model = 8;
  c->n_layers = 2;
  c->n_heads = 2;
  c->d_ff = 6;
  c->n_experts = E;
  c->top_k = 2;
  c->init_std = 0.3f;
  c->seed = 3;
  snprintf(c->router, sizeof c->router, "topk");
}

static void batch(int step, int32_t *tok, int32_t *tgt, int n, int V) {
  for (int i = 0; i < n; i++) {
    tok[i] = (int32_t)(carl_rng_uniform(11, CARL_STREAM_DATA, (uint64_t)(step * n + i)) * V);
    tgt[i] = (int32_t)(carl_rng_uniform(12, CARL_STREAM_DATA, (uint64_t)(step * n + i)) * V);
  }
}

/* One training step; returns the loss. */
static double train_step(carl_model_t *m, int step, int64_t last, carl_step_refresh_t *rf) {
  const int B = 2, S = 8;
  int32_t tok[16], tgt[16];
  batch(step, tok, tgt, B * S, carl_model_config(m)->vocab);
  carl_model_set_step(m, step);
  carl_model_loss_t L;
  assert_int_equal(carl_model_forward(m, tok, tgt, B, S, &L), CARL_OK);
  carl_model_zero_grad(m);
  assert_int_equal(carl_model_backward(m), CARL_OK);
  assert_int_equal(carl_model_router_update(m), CARL_OK);
  carl_model_clip_grad(m, 1.0f);
  carl_adamw_cfg_t opt = carl_adamw_default();
  assert_int_equal(carl_model_adamw_step(m, &opt, 1e-2f), CARL_OK);
  carl_step_refresh_t r;
  assert_int_equal(carl_model_end_step(m, step, last, &r), CARL_OK);
  if (rf) *rf = r;
  return L.total;
}

static int same_floats(const float *a, const float *b, int64_t n) { return !memcmp(a, b, sizeof(float) * (size_t)n); }

/* refresh by `contiguous` from a contiguous start: every refresh returns the placement it had */
static void test_same_placement_refresh_is_bitwise_no_refresh(void **s) {
  (void)s;
  carl_model_config_t c;
  config(&c, 8);
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 2, 100, 1, 10, 5), CARL_OK);
  carl_model_t *a, *b;
  assert_int_equal(carl_model_create(&c, &a), CARL_OK);
  assert_int_equal(carl_model_create(&c, &b), CARL_OK);
  assert_int_equal(carl_model_set_topology(a, &topo, NULL), CARL_OK);
  assert_int_equal(carl_model_set_topology(b, &topo, NULL), CARL_OK);
  carl_place_opts_t po;
  carl_place_opts_default(&po);
  po.algo = CARL_PLACE_CONTIGUOUS;
  assert_int_equal(carl_model_set_refresh(b, 2, &po, 0.5), CARL_OK);
  int refreshes = 0;
  for (int step = 0; step < 7; step++) {
    carl_step_refresh_t ra, rb;
    double la = train_step(a, step, 7, &ra), lb = train_step(b, step, 7, &rb);
    assert_true(la == lb);
    assert_int_equal(ra.refreshed, 0);
    refreshes += rb.refreshed;
    assert_int_equal(rb.moves, 0);
  }
  assert_int_equal(refreshes, 3); /* after steps 1, 3, 5 */
  const int64_t n = carl_model_nparams(a);
  assert_true(same_floats(carl_model_params(a), carl_model_params(b), n));
  assert_true(same_floats(carl_model_adam_m(a), carl_model_adam_m(b), n));
  assert_true(same_floats(carl_model_adam_v(a), carl_model_adam_v(b), n));
  carl_model_free(a);
  carl_model_free(b);
}

/* E = 8 on 4 devices x 2 slots: contiguous [0 1][2 3][4 5][6 7]; roundrobin places e on e mod 4,
 * a permutation of the slots. */
static void test_permuting_refresh_moves_weights_and_moments(void **s) {
  (void)s;
  carl_model_config_t c;
  config(&c, 8);
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 2, 100, 1, 10, 5), CARL_OK);
  carl_model_t *m;
  assert_int_equal(carl_model_create(&c, &m), CARL_OK);
  assert_int_equal(carl_model_set_topology(m, &topo, NULL), CARL_OK);
  carl_place_opts_t po;
  carl_place_opts_default(&po);
  po.algo = CARL_PLACE_ROUNDROBIN;
  assert_int_equal(carl_model_set_refresh(m, 3, &po, 0.5), CARL_OK);
  const int64_t n = carl_model_nparams(m);
  float *p0 = malloc(sizeof(float) * n), *m0 = malloc(sizeof(float) * n), *v0 = malloc(sizeof(float) * n);
  int32_t old_tab[2][8];
  carl_step_refresh_t rf = {0};
  for (int l = 0; l < 2; l++) memcpy(old_tab[l], carl_model_placement(m, l)->slot_expert, sizeof old_tab[l]);
  for (int step = 0; step < 3; step++) train_step(m, step, 0, &rf); /* the end of step 2 refreshes */
  assert_int_equal(rf.refreshed, 1);
  assert_true(rf.moves > 0);
  /* the tensors just before the move: a second model trained identically, without refresh */
  carl_model_t *ref;
  assert_int_equal(carl_model_create(&c, &ref), CARL_OK);
  assert_int_equal(carl_model_set_topology(ref, &topo, NULL), CARL_OK);
  for (int step = 0; step < 3; step++) train_step(ref, step, 0, NULL);
  memcpy(p0, carl_model_params(ref), sizeof(float) * n);
  memcpy(m0, carl_model_adam_m(ref), sizeof(float) * n);
  memcpy(v0, carl_model_adam_v(ref), sizeof(float) * n);
  for (int l = 0; l < 2; l++) {
    const carl_placement_t *np = carl_model_placement(m, l);
    /* roundrobin up to relabelling inside nodes: every device holds experts of one residue mod 4 */
    for (int dv = 0; dv < 4; dv++)
      assert_int_equal(np->slot_expert[dv * 2] % 4, np->slot_expert[dv * 2 + 1] % 4);
    char name[64];
    const char *which[2] = {"moe.w13", "moe.w2"};
    for (int w = 0; w < 2; w++) {
      snprintf(name, sizeof name, "layers.%d.%s", l, which[w]);
      const carl_tensor_info_t *ti = carl_model_tensor(m, carl_model_find_tensor(m, name));
      const int64_t per = ti->numel / 8;
      int moved = 0;
      for (int g = 0; g < 8; g++) {
        const int e = np->slot_expert[g];
        int og = 0;
        while (old_tab[l][og] != e) og++;
        moved += og != g;
        const int64_t at = ti->offset + (int64_t)g * per, from = ti->offset + (int64_t)og * per;
        assert_true(same_floats(carl_model_params(m) + at, p0 + from, per));
        assert_true(same_floats(carl_model_adam_m(m) + at, m0 + from, per));
        assert_true(same_floats(carl_model_adam_v(m) + at, v0 + from, per));
      }
      assert_true(moved > 0);
    }
  }
  /* the moved model computes the function of the unmoved one (the sum over a token's experts
   * runs in another device order: rounding only) */
  int32_t tok[16], tgt[16];
  batch(9, tok, tgt, 16, c.vocab);
  carl_model_loss_t La, Lb;
  assert_int_equal(carl_model_forward(m, tok, tgt, 2, 8, &La), CARL_OK);
  assert_int_equal(carl_model_forward(ref, tok, tgt, 2, 8, &Lb), CARL_OK);
  assert_true(fabs(La.total - Lb.total) < 1e-5 * fabs(Lb.total));
  free(p0); free(m0); free(v0);
  carl_model_free(ref);
  carl_model_free(m);
}

/* 4 experts on 2 nodes x 2 devices x 2 slots: each expert twice (once per node). The replicated
 * model computes the loss of the unreplicated one, and replicas stay bitwise equal. */
static void test_replicas_stay_equal(void **s) {
  (void)s;
  carl_model_config_t c, cr;
  config(&c, 4);
  cr = c;
  cr.n_slots = 8;
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 2, 100, 1, 10, 5), CARL_OK);
  const int32_t tab[8] = {0, 1, 2, 3, 2, 3, 0, 1};
  carl_placement_t pl;
  assert_int_equal(carl_placement_from_table(&pl, 4, 4, 2, tab), CARL_OK);
  carl_model_t *a, *b;
  assert_int_equal(carl_model_create(&c, &a), CARL_OK);
  assert_int_equal(carl_model_create(&cr, &b), CARL_OK);
  assert_int_equal(carl_model_set_topology(a, &topo, NULL), CARL_OK);
  assert_int_equal(carl_model_set_topology(b, &topo, &pl), CARL_OK);
  for (int step = 0; step < 4; step++) {
    double la = train_step(a, step, 0, NULL), lb = train_step(b, step, 0, NULL);
    assert_true(fabs(la - lb) < 1e-5 * fabs(la));
  }
  for (int l = 0; l < 2; l++) {
    char name[64];
    snprintf(name, sizeof name, "layers.%d.moe.w13", l);
    const carl_tensor_info_t *ti = carl_model_tensor(b, carl_model_find_tensor(b, name));
    const carl_tensor_info_t *ta = carl_model_tensor(a, carl_model_find_tensor(a, name));
    const int64_t per = ti->numel / 8;
    for (int g = 0; g < 8; g++)
      for (int h = g + 1; h < 8; h++)
        if (tab[g] == tab[h]) {
          assert_true(same_floats(carl_model_params(b) + ti->offset + g * per, carl_model_params(b) + ti->offset + h * per, per));
          assert_true(same_floats(carl_model_adam_v(b) + ti->offset + g * per, carl_model_adam_v(b) + ti->offset + h * per, per));
        }
    /* and close to the unreplicated expert (same gradient up to summation order) */
    for (int g = 0; g < 8; g++)
      for (int64_t j = 0; j < per; j++) {
        const float x = carl_model_params(b)[ti->offset + g * per + j], y = carl_model_params(a)[ta->offset + tab[g] * per + j];
        assert_true(fabsf(x - y) <= 1e-4f + 1e-4f * fabsf(y));
      }
  }
  /* a placement with the wrong number of slots is refused, naming both counts */
  carl_placement_t contig;
  assert_int_equal(carl_placement_contiguous(&contig, 4, 4), CARL_OK);
  assert_int_equal(carl_model_set_placement(b, 0, &contig), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "4 expert slots, the model has 8"));
  carl_placement_free(&contig);
  carl_placement_free(&pl);
  carl_model_free(a);
  carl_model_free(b);
}

/* Local executor on 2 nodes x 2 devices, flat: 3 tokens, k 2, experts on devices 0..3.
 * token 0 (device 0) -> experts 1, 3; token 1 (device 1) -> 0, 1; token 2 (device 3) -> 2 and a
 * dropped slot. Copies: (0->1), (0->3), (1->0), (1->1), (3->2). */
static void test_local_dispatch_combine(void **s) {
  (void)s;
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 2, 100, 1, 10, 5), CARL_OK);
  carl_placement_t pl;
  assert_int_equal(carl_placement_contiguous(&pl, 4, 4), CARL_OK);
  const int32_t ex[6] = {1, 3, 0, 1, 2, -1}, src[3] = {0, 1, 3};
  carl_plan_t plan = {0};
  assert_int_equal(carl_plan_build(&topo, &pl, ex, src, 3, 2, CARL_PLAN_FLAT, -1, CARL_PLAN_ROWS, &plan), CARL_OK);
  assert_int_equal(plan.n_send, 5);
  carl_exec_t *le;
  assert_int_equal(carl_exec_local_create(&le), CARL_OK);
  const int d = 2;
  const float x[6] = {1, 2, 10, 20, 100, 200};
  float xc[10], y[6] = {0};
  assert_int_equal(carl_exec_dispatch(le, &plan, x, d, xc), CARL_OK);
  /* grouped by (source, destination): (0,1) t0, (0,3) t0, (1,0) t1, (1,1) t1, (3,2) t2 */
  const float want[10] = {1, 2, 1, 2, 10, 20, 10, 20, 100, 200};
  for (int i = 0; i < 10; i++) assert_true(xc[i] == want[i]);
  /* combine: each copy returns its value x its destination + 1; y[t] = sum over t's copies */
  const int dst[5] = {1, 3, 0, 1, 2};
  for (int c2 = 0; c2 < 5; c2++)
    for (int j = 0; j < d; j++) xc[c2 * d + j] *= (float)(dst[c2] + 1);
  assert_int_equal(carl_exec_combine(le, &plan, xc, d, y), CARL_OK);
  const float wy[6] = {1 * (2 + 4), 2 * (2 + 4), 10 * (1 + 2), 20 * (1 + 2), 100 * 3, 200 * 3};
  for (int i = 0; i < 6; i++) assert_true(y[i] == wy[i]);
  assert_int_equal(carl_exec_allreduce(le, (double[]){1.5}, 1), CARL_OK);
  carl_exec_free(le);
  carl_plan_free(&plan);
  carl_placement_free(&pl);
}

/* The step's refresh on 2 nodes x 2 devices, one expert per device (contiguous: 0,1 on node 0,
 * 2,3 on node 1). Tokens of node 0 choose experts 2 and 3, tokens of node 1 choose 0 and 1: the
 * placement that keeps all traffic inside nodes puts {2,3} on node 0 and {0,1} on node 1. Every
 * expert changes node: with 1 GB per expert at 10 GB/s inter bandwidth each device sends and
 * receives one expert: 1e9 / 10e9 = 0.1 s (+ latency). A second refresh on the same statistics
 * moves nothing. */
static void test_step_refresh_hand(void **s) {
  (void)s;
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 2, 100, 0, 10, 0), CARL_OK);
  carl_router_t *r;
  const char *keys[] = {"k"};
  double vals[] = {2};
  assert_int_equal(carl_router_create("topk", 1, keys, vals, &r), CARL_OK);
  carl_step_opts_t o;
  carl_step_opts_default(&o);
  o.topo = &topo;
  o.layers = 1;
  o.E = 4;
  o.k = 2;
  o.routers = &r;
  o.refresh_every = 1;
  o.stats_decay = 0.5;
  o.expert_bytes = 1e9;
  carl_step_t *st;
  assert_int_equal(carl_step_create(&o, &st), CARL_OK);
  /* 4 tokens on devices 0, 1 (node 0) and 2, 3 (node 1) */
  const float z[16] = {0, 0, 5, 4, 0, 0, 5, 4, 5, 4, 0, 0, 5, 4, 0, 0};
  const int32_t src[4] = {0, 1, 2, 3};
  int32_t experts[8];
  float w[8], dz[16];
  for (int step = 0; step < 2; step++) {
    carl_route_in_t in = {.T = 4, .E = 4, .logits = z, .src = src, .step = step};
    carl_route_out_t out = {.experts = experts, .weights = w, .dlogits = dz};
    assert_int_equal(carl_step_route(st, 0, &in, &out), CARL_OK);
    assert_int_equal(carl_step_observe(st, 0, &in, &out), CARL_OK);
    carl_step_refresh_t rf;
    assert_int_equal(carl_step_end(st, step, 0, &rf), CARL_OK);
    assert_int_equal(rf.refreshed, 1);
    const double inter = carl_step_cost(st, 0)->bytes[CARL_LINK_INTER];
    if (step == 0) {
      assert_true(inter > 0); /* every token's experts sit on the other node */
      const carl_placement_t *np = carl_step_placement(st, 0);
      for (int e = 0; e < 4; e++) assert_int_equal(carl_topo_node(&topo, np->home[e]), e >= 2 ? 0 : 1);
      assert_int_equal(rf.moves, 4);
      assert_true(fabs(rf.migrate_s - 1e9 / 10e9) < 1e-9);
    } else {
      assert_int_equal(rf.moves, 0);
      assert_true(rf.migrate_s == 0);
      assert_true(inter == 0); /* routed on the refreshed placement: every copy stays in its node */
    }
  }
  carl_step_free(st);
  carl_router_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_placement_refresh_is_bitwise_no_refresh),
      cmocka_unit_test(test_permuting_refresh_moves_weights_and_moments),
      cmocka_unit_test(test_replicas_stay_equal),
      cmocka_unit_test(test_local_dispatch_combine),
      cmocka_unit_test(test_step_refresh_hand),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
