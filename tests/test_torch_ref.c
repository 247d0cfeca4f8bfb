/* One step of a small MoE transformer against PyTorch: loss and every gradient.
 *
 * The fixture in tests/fixtures/torch/ holds the inputs this program writes when run as
 *   CARL_TORCH_DUMP=<dir> build/test_torch_ref
 * (config.json, layout.json, params.npy, tokens.npy, targets.npy) and, under out/, what
 * scripts/torch_reference.py computed from them with PyTorch on a GPU (float32, TF32 off) and in
 * float64: loss (ce, router, total), the flat gradient, the experts chosen per layer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "carl/array.h"
#include "carl/model.h"

#define FIX CARL_SOURCE_DIR "/tests/fixtures/torch"
enum { B = 2, S = 8 };

static void ref_config(carl_model_config_t *c) {
  carl_model_config_default(c);
  c->vocab = 32;
  c->max_seq = S;
  c->d_model = 16;
  c->n_layers = 2;
  c->n_heads = 2;
  c->d_ff = 12;
  c->n_experts = 4;
  c->top_k = 2;
  c->d_shared = 8;
  c->init_std = 0.1f;
  c->seed = 11;
  snprintf(c->router, sizeof c->router, "topk");
  carl_model_config_set_router_opt(c, "aux", 0.05);
  carl_model_config_set_router_opt(c, "z_loss", 0.01);
  carl_model_config_set_router_opt(c, "renorm", 1);
  carl_model_config_set_router_opt(c, "capacity_factor", 0);
}

static void ref_batch(int32_t *tok, int32_t *tgt, int V) {
  for (int i = 0; i < B * S; i++) {
    tok[i] = (int32_t)(carl_rng_uniform(21, CARL_STREAM_DATA, (uint64_t)i) * V);
    tgt[i] = (int32_t)(carl_rng_uniform(22, CARL_STREAM_DATA, (uint64_t)i) * V);
  }
  tgt[5] = -1; /* an ignored target */
}

static int dump(const char *dir) {
  carl_model_config_t c;
  ref_config(&c);
  carl_model_t *m;
  if (carl_model_create(&c, &m) != CARL_OK) return fprintf(stderr, "%s\n", carl_errmsg()), 1;
  mkdir(dir, 0755);
  char path[1024];
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *f = fopen(path, "w");
  if (!f) return fprintf(stderr, "%s: cannot write\n", path), 1;
  fprintf(f,
          "{\"vocab\": %d, \"max_seq\": %d, \"d_model\": %d, \"n_layers\": %d, \"n_heads\": %d, \"d_ff\": %d,\n"
          " \"n_experts\": %d, \"top_k\": %d, \"d_shared\": %d, \"norm_eps\": %.9g,\n"
          " \"router\": \"topk\", \"aux\": 0.05, \"z_loss\": 0.01, \"renorm\": 1, \"capacity_factor\": 0}\n",
          c.vocab, c.max_seq, c.d_model, c.n_layers, c.n_heads, c.d_ff, c.n_experts, c.top_k, c.d_shared,
          (double)c.norm_eps);
  fclose(f);
  snprintf(path, sizeof path, "%s/layout.json", dir);
  f = fopen(path, "w");
  if (!f) return fprintf(stderr, "%s: cannot write\n", path), 1;
  fprintf(f, "[\n");
  for (int i = 0; i < carl_model_ntensors(m); i++) {
    const carl_tensor_info_t *t = carl_model_tensor(m, i);
    fprintf(f, " {\"name\": \"%s\", \"shape\": [", t->name);
    for (int j = 0; j < t->ndim; j++) fprintf(f, "%s%lld", j ? ", " : "", (long long)t->shape[j]);
    fprintf(f, "], \"offset\": %lld}%s\n", (long long)t->offset, i + 1 < carl_model_ntensors(m) ? "," : "");
  }
  fprintf(f, "]\n");
  fclose(f);
  int64_t np = carl_model_nparams(m), shp[2] = {B, S};
  int32_t tok[B * S], tgt[B * S];
  ref_batch(tok, tgt, c.vocab);
  snprintf(path, sizeof path, "%s/params.npy", dir);
  carl_status st = carl_npy_save(path, CARL_F32, 1, &np, carl_model_params(m));
  snprintf(path, sizeof path, "%s/tokens.npy", dir);
  if (st == CARL_OK) st = carl_npy_save(path, CARL_I32, 2, shp, tok);
  snprintf(path, sizeof path, "%s/targets.npy", dir);
  if (st == CARL_OK) st = carl_npy_save(path, CARL_I32, 2, shp, tgt);
  carl_model_free(m);
  if (st != CARL_OK) return fprintf(stderr, "%s\n", carl_errmsg()), 1;
  printf("wrote the inputs to %s\n", dir);
  return 0;
}

static void load(const char *name, carl_array_t *a, carl_dtype dt, int64_t numel) {
  char path[1024];
  snprintf(path, sizeof path, FIX "/%s", name);
  carl_status st = carl_npy_read(path, a);
  if (st != CARL_OK) fail_msg("%s: %s", path, carl_errmsg());
  assert_int_equal(a->dtype, dt);
  assert_int_equal(carl_array_numel(a), numel);
}

/* The fixture's inputs are exactly what this code base generates (same init, same batch). */
static void test_inputs(void **s) {
  (void)s;
  carl_model_config_t c;
  ref_config(&c);
  carl_model_t *m;
  assert_int_equal(carl_model_create(&c, &m), CARL_OK);
  carl_array_t p, tk, tg;
  load("params.npy", &p, CARL_F32, carl_model_nparams(m));
  load("tokens.npy", &tk, CARL_I32, B * S);
  load("targets.npy", &tg, CARL_I32, B * S);
  assert_memory_equal(p.data, carl_model_params(m), sizeof(float) * carl_model_nparams(m));
  int32_t tok[B * S], tgt[B * S];
  ref_batch(tok, tgt, c.vocab);
  assert_memory_equal(tk.data, tok, sizeof tok);
  assert_memory_equal(tg.data, tgt, sizeof tgt);
  carl_array_free(&p); carl_array_free(&tk); carl_array_free(&tg);
  carl_model_free(m);
}

static void test_step_matches_torch(void **s) {
  (void)s;
  carl_model_config_t c;
  ref_config(&c);
  carl_model_t *m;
  assert_int_equal(carl_model_create(&c, &m), CARL_OK);
  const int64_t np = carl_model_nparams(m), T = B * S;
  carl_array_t l32, g32, l64, g64, ex;
  load("out/loss_f32.npy", &l32, CARL_F64, 3);
  load("out/grads_f32.npy", &g32, CARL_F32, np);
  load("out/loss_f64.npy", &l64, CARL_F64, 3);
  load("out/grads_f64.npy", &g64, CARL_F64, np);
  load("out/experts.npy", &ex, CARL_I32, (int64_t)c.n_layers * T * c.top_k);
  int32_t tok[B * S], tgt[B * S];
  ref_batch(tok, tgt, c.vocab);
  carl_model_loss_t L;
  assert_int_equal(carl_model_forward(m, tok, tgt, B, S, &L), CARL_OK);
  carl_model_zero_grad(m);
  assert_int_equal(carl_model_backward(m), CARL_OK);
  /* the same experts in the same (descending score) order */
  for (int l = 0; l < c.n_layers; l++) {
    carl_moe_stats_t st;
    assert_int_equal(carl_model_layer_stats(m, l, &st), CARL_OK);
    assert_memory_equal(st.experts, (int32_t *)ex.data + (int64_t)l * T * c.top_k, sizeof(int32_t) * T * c.top_k);
  }
  /* losses: fp32 tolerance relative to the value */
  const double *r32 = l32.data, *r64 = l64.data;
  double mine[3] = {L.ce, L.router, L.total};
  for (int i = 0; i < 3; i++) {
    if (fabs(mine[i] - r32[i]) > 1e-5 * fabs(r32[i]) + 1e-7)
      fail_msg("loss %d: ours %.9g, torch fp32 %.9g", i, mine[i], r32[i]);
    if (fabs(mine[i] - r64[i]) > 1e-5 * fabs(r64[i]) + 1e-7)
      fail_msg("loss %d: ours %.9g, torch fp64 %.9g", i, mine[i], r64[i]);
  }
  /* gradients, tensor by tensor: |ours - torch| <= 1e-4 * max|torch over the tensor| + 1e-7 per
   * element (fp32 sums of a few hundred terms carry ~1e-6 relative error; 1e-4 leaves room for
   * different summation orders while any wrong term, typically >= 1e-2 relative, still fails) */
  const float *g = carl_model_grads(m), *t32 = g32.data;
  const double *t64 = g64.data;
  double worst = 0;
  for (int ti = 0; ti < carl_model_ntensors(m); ti++) {
    const carl_tensor_info_t *t = carl_model_tensor(m, ti);
    double scale = 0;
    for (int64_t j = 0; j < t->numel; j++) scale = fmax(scale, fabs(t64[t->offset + j]));
    assert_true(scale > 0 || strstr(t->name, "pos_emb")); /* every tensor gets a gradient */
    for (int64_t j = 0; j < t->numel; j++) {
      int64_t i = t->offset + j;
      double e32 = fabs(g[i] - t32[i]), e64 = fabs(g[i] - t64[i]), tol = 1e-4 * scale + 1e-7;
      if (e32 > tol || e64 > tol)
        fail_msg("%s[%lld]: ours %.7g, torch fp32 %.7g, torch fp64 %.7g", t->name, (long long)j, g[i], t32[i], t64[i]);
      if (scale > 0) worst = fmax(worst, e64 / scale);
    }
  }
  print_message("max |ours - torch fp64| / max|grad| over tensors: %.3e\n", worst);
  carl_array_free(&l32); carl_array_free(&g32); carl_array_free(&l64); carl_array_free(&g64);
  carl_array_free(&ex);
  carl_model_free(m);
}

int main(void) {
  const char *dir = getenv("CARL_TORCH_DUMP");
  if (dir && dir[0]) return dump(dir);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_inputs), cmocka_unit_test(test_step_matches_torch)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
