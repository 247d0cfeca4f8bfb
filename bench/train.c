/* bench/train: training tokens/s of a model config (default: configs/models/small.json, the main
 * job's model) on the CPU: forward + backward + router update + clipping + AdamW on batches of the
 * config's size, with its router and topology (dispatch accounting included). Printed beside
 * OpenBLAS sgemm on this machine in the same run: at the model's typical product shape
 * ([B*S, d] x [d, 3d], the attention projection) and at a large square shape (the machine's best
 * sgemm), as ratios of achieved GFLOP/s. Repeats interleaved, medians quoted.
 *
 *   bench_train [config.json [steps_per_repeat [repeats]]]      default small.json 3 5
 *
 * Model FLOPs per token (multiply-add = 2), forward: per layer 8 d^2 (qkv, wo) + 2 (S+1) d (causal
 * attention scores and values, average (S+1)/2 keys) + 2 d E (router) + 6 k d f (experts); head
 * 2 V d. Training = 3 x forward. Elementwise work is not counted but is in the measured time.
 * Data: random bytes (the corpus is not needed; the cost does not depend on the text). */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/data.h"
#include "carl/train.h"
#include "bench_util.h"

static double sgemm_gflops(int M, int N, int K, int reps) {
  float *a = calloc((size_t)M * K, 4), *b = calloc((size_t)N * K, 4), *c = calloc((size_t)M * N, 4);
  for (int64_t i = 0; i < (int64_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
  for (int64_t i = 0; i < (int64_t)N * K; i++) b[i] = (float)(i % 5) * 0.1f;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N); /* warm */
  double t0 = carl_now();
  for (int r = 0; r < reps; r++) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
  double dt = carl_now() - t0;
  free(a);
  free(b);
  free(c);
  return 2.0 * M * N * K * reps / dt / 1e9;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "configs/models/small.json";
  int steps = argc > 2 ? atoi(argv[2]) : 3, reps = argc > 3 ? atoi(argv[3]) : 5;
  if (steps < 1 || reps < 1) {
    fprintf(stderr, "usage: bench_train [config.json [steps_per_repeat >= 1 [repeats >= 1]]]\n");
    return 2;
  }
  carl_train_config_t cfg;
  carl_status st = carl_train_config_load(path, &cfg);
  if (st) {
    fprintf(stderr, "bench_train: %s: %s\n", carl_strerror(st), carl_errmsg());
    return 1;
  }
  const carl_model_config_t *mc = &cfg.model;
  const int B = cfg.batch, S = cfg.seq_len, d = mc->d_model;
  const int64_t T = (int64_t)B * S;
  carl_topo_t topo;
  carl_placement_t pl = {0};
  carl_model_t *m = NULL;
  if (cfg.topology[0]) {
    if ((st = carl_topo_load(cfg.topology, &topo)) || (st = carl_placement_contiguous(&pl, mc->n_experts, topo.devices))) {
      fprintf(stderr, "bench_train: %s\n", carl_errmsg());
      return 1;
    }
  }
  if ((st = carl_model_create(mc, &m)) || (cfg.topology[0] && (st = carl_model_set_topology(m, &topo, &pl)))) {
    fprintf(stderr, "bench_train: %s\n", carl_errmsg());
    return 1;
  }
  /* random bytes as the text */
  int64_t n = T * 64 + 1;
  uint8_t *bytes = malloc((size_t)n);
  for (int64_t i = 0; i < n; i++) bytes[i] = (uint8_t)(carl_rng_uniform(7, CARL_STREAM_DATA, (uint64_t)i) * 256);
  carl_text_t text = {bytes, n};
  carl_loader_t ld;
  if (carl_loader_init(&ld, &text, B, S, 1)) return 1;
  int32_t *x = malloc((size_t)T * 4), *y = malloc((size_t)T * 4);
  carl_adamw_cfg_t opt = carl_adamw_default();

  double fwd = 0;
  for (int l = 0; l < mc->n_layers; l++)
    fwd += 8.0 * d * d + 2.0 * (S + 1) * d + 2.0 * d * mc->n_experts + 6.0 * mc->top_k * d * mc->d_ff;
  fwd += 2.0 * mc->vocab * d;
  const double flop_token = 3 * fwd;

  double *tps = malloc(sizeof(double) * reps), *g_model = malloc(sizeof(double) * reps);
  double *g_shape = malloc(sizeof(double) * reps), *g_big = malloc(sizeof(double) * reps);
  int64_t step = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = carl_now();
    for (int s = 0; s < steps; s++, step++) {
      carl_model_loss_t L;
      carl_loader_batch(&ld, step, x, y);
      carl_model_set_step(m, step);
      if ((st = carl_model_forward(m, x, y, B, S, &L))) break;
      carl_model_zero_grad(m);
      if ((st = carl_model_backward(m)) || (st = carl_model_router_update(m))) break;
      carl_model_clip_grad(m, 1.0f);
      if ((st = carl_model_adamw_step(m, &opt, 1e-3f))) break;
    }
    if (st) {
      fprintf(stderr, "bench_train: %s\n", carl_errmsg());
      return 1;
    }
    double dt = carl_now() - t0;
    tps[r] = (double)T * steps / dt;
    g_model[r] = tps[r] * flop_token / 1e9;
    g_shape[r] = sgemm_gflops((int)T, 3 * d, d, 10);
    g_big[r] = sgemm_gflops(1024, 1024, 1024, 3);
  }
  double mt = bench_median(tps, reps), mg = bench_median(g_model, reps), ms = bench_median(g_shape, reps), mb = bench_median(g_big, reps);
  printf("bench_train: %s (router %s, %d layers, d %d, %d experts top-%d, d_ff %d, batch %d x %d), %d threads, "
         "%d repeats x %d steps\n",
         path, mc->router, mc->n_layers, d, mc->n_experts, mc->top_k, mc->d_ff, B, S, omp_get_max_threads(), reps,
         steps);
  printf("model FLOPs per training token: %.3g\n", flop_token);
  printf("%-46s %12s %12s\n", "", "median", "ratio");
  printf("%-46s %12.0f\n", "training tokens/s", mt);
  printf("%-46s %12.2f %12s\n", "training GFLOP/s (model FLOPs)", mg, "1");
  printf("%-46s %12.2f %12.3f\n", "sgemm GFLOP/s at [B*S, d] x [d, 3d]", ms, mg / ms);
  printf("%-46s %12.2f %12.3f\n", "sgemm GFLOP/s at 1024^3 (machine's best)", mb, mg / mb);
  free(tps);
  free(g_model);
  free(g_shape);
  free(g_big);
  free(x);
  free(y);
  carl_loader_free(&ld);
  free(bytes);
  carl_model_free(m);
  carl_placement_free(&pl);
  return 0;
}
