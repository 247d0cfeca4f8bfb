/* The MoE transformer on the GPU (carl_model_to_device) against the same model on the CPU, the
 * reference (src/model/model.c, src/model/moe.c, src/nn/): two models from one config and seed,
 * one moved to the device, trained side by side on the same batches.
 *   losses of every step (cross-entropy + router losses) within 1e-4 relative: float32 in both,
 *     only the order of the sums differs (cuBLAS SGEMM against OpenBLAS, per-row kernels), so the
 *     two drift apart by float rounding alone;
 *   at the first step the gradient of every tensor within 1e-4 relative L2 and the gradient norm
 *     within 1e-5; after the last step the parameters and both AdamW moments (copied back by
 *     carl_model_sync_host) within 1e-3 relative L2 per tensor (AdamW divides by sqrt(v): a rounding
 *     difference of a small gradient moves its parameter by up to lr, so the bound is looser);
 *   the logits of a forward without targets (the sampling path) within 1e-5 relative L2.
 * Cases: a tiny config (configs/models/tiny.json's model) on a 2 x 2 topology with a placement
 * refresh every 2 steps (the expert tensors migrate on the device); a shared expert, replicated
 * experts (8 slots for 4 experts) and hierarchical dispatch; a batch that does not fit in the
 * device's memory (a clear error naming both sizes, before anything is allocated).
 * test_cuda_model_host runs the same cases on a machine without a GPU: src/cuda/model.cu compiled
 * against the device API emulated in host memory with every kernel replaced by its CPU reference
 * (tests/host_cuda/); there the results must equal the CPU model's bit for bit (every bound is 0).
 * Without CUDA or without a device every case is skipped, visibly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/cuda.h"
#include "carl/model.h"
#include "carl/place.h"
#include "carl/topo.h"

static carl_cuda_t *G;
static double TOL = 1; /* 0 under the host emulation (test_cuda_model_host): bit for bit */

static int have_gpu(void) {
  if (!G) {
    print_message("[  SKIPPED ] %s: GPU model tests skipped\n", carl_cuda_built() ? "no CUDA device" : "no CUDA in this build");
    return 0;
  }
  return 1;
}

static void tiny_config(carl_model_config_t *c) {
  carl_model_config_default(c);
  c->vocab = 256;
  c->max_seq = 32;
  c->d_model = 32;
  c->n_layers = 2;
  c->n_heads = 2;
  c->d_ff = 32;
  c->n_experts = 4;
  c->top_k = 2;
  c->seed = 1;
  assert_int_equal(carl_model_config_set_router_opt(c, "aux", 0.01), CARL_OK);
}

/* Fixed pseudo-random bytes (an LCG); targets are the next tokens, the last one ignored. */
static void batch(int32_t *x, int32_t *y, int64_t T, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 12345u;
  for (int64_t i = 0; i < T; i++) {
    s = s * 1664525u + 1013904223u;
    x[i] = (int32_t)((s >> 24) % 96 + 32);
  }
  for (int64_t i = 0; i < T; i++) y[i] = i + 1 < T ? x[i + 1] : -1;
}

static double rel_l2(const float *a, const float *b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += (double)b[i] * b[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void compare_arrays(carl_model_t *gm, carl_model_t *cm, float *(*get)(carl_model_t *), double tol, const char *what) {
  for (int i = 0; i < carl_model_ntensors(cm); i++) {
    const carl_tensor_info_t *t = carl_model_tensor(cm, i);
    const double e = rel_l2(get(gm) + t->offset, get(cm) + t->offset, t->numel);
    if (!(e <= tol)) print_error("%s of %s: relative L2 difference %g > %g\n", what, t->name, e, tol);
    assert_true(e <= tol);
  }
}

/* Train both models `steps` steps on the same batches and compare (see the file comment). */
static void side_by_side(carl_model_t *cm, carl_model_t *gm, int B, int S, int steps) {
  const int64_t T = (int64_t)B * S;
  int32_t *x = malloc(sizeof *x * (size_t)T), *y = malloc(sizeof *y * (size_t)T);
  assert_non_null(x);
  assert_non_null(y);
  carl_adamw_cfg_t opt = carl_adamw_default();
  for (int step = 0; step < steps; step++) {
    batch(x, y, T, (uint32_t)step);
    carl_model_t *ms[2] = {cm, gm};
    carl_model_loss_t L[2];
    float gn[2];
    for (int w = 0; w < 2; w++) {
      carl_model_t *m = ms[w];
      carl_model_set_step(m, step);
      assert_int_equal(carl_model_forward(m, x, y, B, S, &L[w]), CARL_OK);
      carl_model_zero_grad(m);
      assert_int_equal(carl_model_backward(m), CARL_OK);
      assert_int_equal(carl_model_router_update(m), CARL_OK);
    }
    if (step == 0) { /* gradients before clipping */
      assert_int_equal(carl_model_sync_host(gm), CARL_OK);
      compare_arrays(gm, cm, carl_model_grads, 1e-4 * TOL, "gradient");
    }
    for (int w = 0; w < 2; w++) {
      carl_model_t *m = ms[w];
      gn[w] = carl_model_clip_grad(m, 1.0f);
      const float lr = carl_lr_cosine(step, 2, steps, 3e-3f, 3e-4f);
      assert_int_equal(carl_model_adamw_step(m, &opt, lr), CARL_OK);
      carl_step_refresh_t rf;
      assert_int_equal(carl_model_end_step(m, step, steps, &rf), CARL_OK);
    }
    const double el = fabs(L[1].total - L[0].total) / fabs(L[0].total);
    print_message("step %d: loss cpu %.9f gpu %.9f (rel %.2e), router cpu %.9f gpu %.9f, grad norm %.7f %.7f\n", step,
                  L[0].total, L[1].total, el, L[0].router, L[1].router, gn[0], gn[1]);
    assert_true(el <= 1e-4 * TOL);
    assert_true(fabs(L[1].router - L[0].router) <= (1e-4 * fabs(L[0].router) + 1e-9) * TOL);
    if (step == 0) assert_true(fabs((double)gn[1] - gn[0]) <= 1e-5 * gn[0] * TOL);
    for (int l = 0; l < carl_model_config(cm)->n_layers; l++) { /* placements: the same decisions */
      const carl_placement_t *pc = carl_model_placement(cm, l), *pg = carl_model_placement(gm, l);
      assert_memory_equal(pc->slot_expert, pg->slot_expert, sizeof(int32_t) * (size_t)pc->D * pc->slots);
    }
  }
  assert_int_equal(carl_model_sync_host(gm), CARL_OK);
  compare_arrays(gm, cm, carl_model_params, 1e-3 * TOL, "parameter");
  compare_arrays(gm, cm, carl_model_adam_m, 1e-3 * TOL, "first moment");
  compare_arrays(gm, cm, carl_model_adam_v, 1e-3 * TOL, "second moment");
  /* the sampling path: logits of a forward without targets */
  batch(x, y, T, 99);
  assert_int_equal(carl_model_forward(cm, x, NULL, 1, S, NULL), CARL_OK);
  assert_int_equal(carl_model_forward(gm, x, NULL, 1, S, NULL), CARL_OK);
  const int V = carl_model_config(cm)->vocab;
  const double el = rel_l2(carl_model_logits(gm), carl_model_logits(cm), (int64_t)S * V);
  print_message("logits without targets: relative L2 %.2e\n", el);
  assert_true(el <= 1e-5 * TOL);
  free(x);
  free(y);
}

static void tiny_refresh(void **state) {
  (void)state;
  if (!have_gpu()) return;
  carl_model_config_t c;
  tiny_config(&c);
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 2, 160, 3, 50, 10), CARL_OK);
  carl_model_t *cm, *gm;
  assert_int_equal(carl_model_create(&c, &cm), CARL_OK);
  assert_int_equal(carl_model_create(&c, &gm), CARL_OK);
  for (int w = 0; w < 2; w++) {
    carl_model_t *m = w ? gm : cm;
    assert_int_equal(carl_model_set_topology(m, &topo, NULL), CARL_OK);
    assert_int_equal(carl_model_set_refresh(m, 2, NULL, 0.9), CARL_OK);
  }
  assert_int_equal(carl_model_to_device(gm, G, 4, 32), CARL_OK);
  assert_true(carl_model_on_device(gm));
  /* host-memory relayouts are refused once on the device */
  assert_int_equal(carl_model_set_placement(gm, 0, carl_model_placement(gm, 0)), CARL_ERR_STATE);
  side_by_side(cm, gm, 4, 32, 6);
  /* a batch larger than the one it was moved for */
  int32_t *x = calloc(8 * 32, sizeof *x);
  assert_int_equal(carl_model_forward(gm, x, x, 8, 32, NULL), CARL_ERR_SHAPE);
  free(x);
  carl_model_free(cm);
  carl_model_free(gm);
}

static void shared_replicas_hier(void **state) {
  (void)state;
  if (!have_gpu()) return;
  carl_model_config_t c;
  tiny_config(&c);
  c.d_shared = 16;
  c.n_slots = 8;
  carl_topo_t topo;
  assert_int_equal(carl_topo_make(&topo, 2, 2, 160, 3, 50, 10), CARL_OK);
  const int32_t tab[8] = {0, 1, 2, 3, 1, 0, 3, 2}; /* every expert twice, on both nodes */
  carl_placement_t pl;
  assert_int_equal(carl_placement_from_table(&pl, 4, 4, 2, tab), CARL_OK);
  carl_model_t *cm, *gm;
  assert_int_equal(carl_model_create(&c, &cm), CARL_OK);
  assert_int_equal(carl_model_create(&c, &gm), CARL_OK);
  for (int w = 0; w < 2; w++) {
    carl_model_t *m = w ? gm : cm;
    assert_int_equal(carl_model_set_topology(m, &topo, &pl), CARL_OK);
    assert_int_equal(carl_model_set_dispatch(m, CARL_PLAN_HIER), CARL_OK);
  }
  assert_int_equal(carl_model_to_device(gm, G, 2, 32), CARL_OK);
  side_by_side(cm, gm, 2, 32, 4);
  carl_placement_free(&pl);
  carl_model_free(cm);
  carl_model_free(gm);
}

static void does_not_fit(void **state) {
  (void)state;
  if (!have_gpu()) return;
  carl_model_config_t c;
  tiny_config(&c);
  c.max_seq = 8192;
  carl_model_t *m;
  assert_int_equal(carl_model_create(&c, &m), CARL_OK);
  size_t need = 0;
  assert_int_equal(carl_model_device_bytes(m, 1024, 8192, &need), CARL_OK);
  /* the attention probabilities alone: B H S^2 floats, twice (forward and backward) */
  assert_true(need >= 2.0 * 1024 * 2 * 8192.0 * 8192 * 4);
  assert_int_equal(carl_model_to_device(m, G, 1024, 8192), CARL_ERR_NOMEM);
  print_message("too large: %s\n", carl_errmsg());
  assert_non_null(strstr(carl_errmsg(), "free"));
  assert_non_null(strstr(carl_errmsg(), "1024 x 8192"));
  assert_false(carl_model_on_device(m));
  carl_model_free(m);
}

int main(void) {
  int n = 0;
  if (carl_cuda_built() && carl_cuda_device_count(&n) == CARL_OK && n > 0) {
    if (carl_cuda_create(0, &G) != CARL_OK) {
      fprintf(stderr, "test_cuda_model: %s\n", carl_errmsg());
      return 1;
    }
    printf("test_cuda_model: %s\n", carl_cuda_describe(G));
    if (strstr(carl_cuda_describe(G), "host emulation")) TOL = 0;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(tiny_refresh),
      cmocka_unit_test(shared_replicas_hier),
      cmocka_unit_test(does_not_fit),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  carl_cuda_free(G);
  return rc;
}
