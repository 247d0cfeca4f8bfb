/* The GPU path of a build without CUDA (CARL_WITH_CUDA off, or no nvcc at configure time): every
 * function of carl/cuda.h returns CARL_ERR_UNSUPPORTED with a message saying so. */
#include <stddef.h>

#include "carl/cuda.h"

#define NO_CUDA() carl_fail(CARL_ERR_UNSUPPORTED, "CUDA: this build has no GPU path (configure with nvcc present and -DCARL_WITH_CUDA=ON)")

int carl_cuda_built(void) { return 0; }
carl_status carl_cuda_device_count(int *n) {
  *n = 0;
  return NO_CUDA();
}
carl_status carl_cuda_create(int device, carl_cuda_t **out) {
  (void)device;
  if (out) *out = NULL;
  return NO_CUDA();
}
void carl_cuda_free(carl_cuda_t *g) { (void)g; }
const char *carl_cuda_describe(const carl_cuda_t *g) {
  (void)g;
  return "(no CUDA in this build)";
}
carl_status carl_cuda_malloc(carl_cuda_t *g, size_t bytes, void **p) {
  (void)g, (void)bytes;
  *p = NULL;
  return NO_CUDA();
}
void carl_cuda_mfree(carl_cuda_t *g, void *p) { (void)g, (void)p; }
carl_status carl_cuda_upload(carl_cuda_t *g, void *dst, const void *src, size_t bytes) {
  (void)g, (void)dst, (void)src, (void)bytes;
  return NO_CUDA();
}
carl_status carl_cuda_download(carl_cuda_t *g, void *dst, const void *src, size_t bytes) {
  (void)g, (void)dst, (void)src, (void)bytes;
  return NO_CUDA();
}
carl_status carl_cuda_memset(carl_cuda_t *g, void *p, int byte, size_t bytes) {
  (void)g, (void)p, (void)byte, (void)bytes;
  return NO_CUDA();
}
carl_status carl_cuda_copy(carl_cuda_t *g, void *dst, const void *src, size_t bytes) {
  (void)g, (void)dst, (void)src, (void)bytes;
  return NO_CUDA();
}
carl_status carl_cuda_sync(carl_cuda_t *g) {
  (void)g;
  return NO_CUDA();
}
void *carl_cuda_stream(carl_cuda_t *g) {
  (void)g;
  return NULL;
}
carl_status carl_cuda_mark(carl_cuda_t *g, int slot) {
  (void)g, (void)slot;
  return NO_CUDA();
}
carl_status carl_cuda_elapsed(carl_cuda_t *g, int a, int b, double *ms) {
  (void)g, (void)a, (void)b;
  *ms = 0;
  return NO_CUDA();
}
carl_status carl_cuda_fill_normal(carl_cuda_t *g, float *x, int64_t n, uint64_t seed, float mean, float std) {
  (void)g, (void)x, (void)n, (void)seed, (void)mean, (void)std;
  return NO_CUDA();
}
carl_status carl_cuda_to_bf16(carl_cuda_t *g, uint16_t *dst, const float *src, int64_t n) {
  (void)g, (void)dst, (void)src, (void)n;
  return NO_CUDA();
}
carl_status carl_cuda_from_bf16(carl_cuda_t *g, float *dst, const uint16_t *src, int64_t n) {
  (void)g, (void)dst, (void)src, (void)n;
  return NO_CUDA();
}
carl_status carl_cuda_route(carl_cuda_t *g, carl_router_t *r, const carl_route_in_t *in, carl_cuda_route_t *o) {
  (void)g, (void)r, (void)in, (void)o;
  return NO_CUDA();
}
carl_status carl_cuda_route_update(carl_cuda_t *g, carl_router_t *r, const carl_route_in_t *in, carl_cuda_route_t *o) {
  (void)g, (void)r, (void)in, (void)o;
  return NO_CUDA();
}
carl_status carl_cuda_gate_backward(carl_cuda_t *g, const float *logits, int64_t T, int E, int k, int score, int renorm,
                                    const int32_t *experts, const float *dweights, float *dlogits) {
  (void)g, (void)logits, (void)T, (void)E, (void)k, (void)score, (void)renorm, (void)experts, (void)dweights, (void)dlogits;
  return NO_CUDA();
}
carl_status carl_exec_cuda_create(carl_cuda_t *g, carl_exec_t **out) {
  (void)g;
  if (out) *out = NULL;
  return NO_CUDA();
}
carl_status carl_cuda_moe_act_create(carl_cuda_t *g, carl_cuda_moe_act_t **A) {
  (void)g;
  if (A) *A = NULL;
  return NO_CUDA();
}
void carl_cuda_moe_act_free(carl_cuda_moe_act_t *A) { (void)A; }
carl_status carl_cuda_moe_plan(carl_cuda_t *g, const carl_cuda_moe_t *L, carl_cuda_moe_act_t *A, const carl_plan_t *plan,
                               int dev) {
  (void)g, (void)L, (void)A, (void)plan, (void)dev;
  return NO_CUDA();
}
carl_status carl_cuda_moe_forward(carl_cuda_t *g, const carl_cuda_moe_t *L, const carl_cuda_moe_w_t *W,
                                  carl_cuda_moe_act_t *A, const uint16_t *x, const float *gates, uint16_t *y) {
  (void)g, (void)L, (void)W, (void)A, (void)x, (void)gates, (void)y;
  return NO_CUDA();
}
carl_status carl_cuda_moe_backward(carl_cuda_t *g, const carl_cuda_moe_t *L, const carl_cuda_moe_w_t *W,
                                   carl_cuda_moe_act_t *A, const float *gates, const uint16_t *dy, uint16_t *dx,
                                   uint16_t *dw13, uint16_t *dw2, float *dgates) {
  (void)g, (void)L, (void)W, (void)A, (void)gates, (void)dy, (void)dx, (void)dw13, (void)dw2, (void)dgates;
  return NO_CUDA();
}
int64_t carl_cuda_moe_rows(const carl_cuda_moe_act_t *A) {
  (void)A;
  return 0;
}

/* internal kernels (src/cuda/moe_internal.h), reached by the tests */
#include "cuda/moe_internal.h"
carl_status carl__cuda_permute(carl_cuda_t *g, uint16_t *xp, const uint16_t *x, const int32_t *row_tok, int64_t R, int d) {
  (void)g, (void)xp, (void)x, (void)row_tok, (void)R, (void)d;
  return NO_CUDA();
}
carl_status carl__cuda_unpermute(carl_cuda_t *g, uint16_t *y, const uint16_t *Y, const float *gates, const int32_t *row_slot,
                                 const int64_t *tok_off, const int32_t *tok_row, int64_t T, int d) {
  (void)g, (void)y, (void)Y, (void)gates, (void)row_slot, (void)tok_off, (void)tok_row, (void)T, (void)d;
  return NO_CUDA();
}
carl_status carl__cuda_unpermute_bwd(carl_cuda_t *g, uint16_t *dY, float *dgates, const uint16_t *dy, const uint16_t *Y,
                                     const float *gates, const int32_t *row_slot, const int32_t *row_tok, int64_t R, int d) {
  (void)g, (void)dY, (void)dgates, (void)dy, (void)Y, (void)gates, (void)row_slot, (void)row_tok, (void)R, (void)d;
  return NO_CUDA();
}
carl_status carl__cuda_swiglu_fwd(carl_cuda_t *g, uint16_t *a, const uint16_t *h, int64_t R, int f) {
  (void)g, (void)a, (void)h, (void)R, (void)f;
  return NO_CUDA();
}
carl_status carl__cuda_swiglu_bwd(carl_cuda_t *g, uint16_t *dh, const uint16_t *da, const uint16_t *h, int64_t R, int f) {
  (void)g, (void)dh, (void)da, (void)h, (void)R, (void)f;
  return NO_CUDA();
}
carl_status carl__cuda_gemm_bf16(carl_cuda_t *g, int mode, int n, const carl__bgemm_t *p, void **dev_ptrs) {
  (void)g, (void)mode, (void)n, (void)p, (void)dev_ptrs;
  return NO_CUDA();
}

/* the device half of the model (src/model/model_internal.h) */
#include "model/model_internal.h"
carl_status carl__mdev_bytes(const carl_model_t *m, int B, int S, size_t *bytes) {
  (void)m, (void)B, (void)S;
  *bytes = 0;
  return NO_CUDA();
}
carl_status carl__mdev_create(carl_model_t *m, carl_cuda_t *g, int B, int S, carl__mdev_t **out) {
  (void)m, (void)g, (void)B, (void)S;
  *out = NULL;
  return NO_CUDA();
}
void carl__mdev_free(carl__mdev_t *d) { (void)d; }
carl_exec_t *carl__mdev_exec(carl__mdev_t *d) {
  (void)d;
  return NULL;
}
float *carl__mdev_array(carl__mdev_t *d, int which) {
  (void)d, (void)which;
  return NULL;
}
carl_status carl__mdev_forward(carl_model_t *m, const int32_t *tokens, const int32_t *targets, int B, int S,
                               carl_model_loss_t *loss) {
  (void)m, (void)tokens, (void)targets, (void)B, (void)S, (void)loss;
  return NO_CUDA();
}
carl_status carl__mdev_backward(carl_model_t *m) {
  (void)m;
  return NO_CUDA();
}
carl_status carl__mdev_zero_grad(carl_model_t *m) {
  (void)m;
  return NO_CUDA();
}
carl_status carl__mdev_clip(carl_model_t *m, float max_norm, double *norm) {
  (void)m, (void)max_norm;
  *norm = 0;
  return NO_CUDA();
}
carl_status carl__mdev_adamw(carl_model_t *m, const carl_adamw_cfg_t *opt, float lr) {
  (void)m, (void)opt, (void)lr;
  return NO_CUDA();
}
carl_status carl__mdev_download(carl_model_t *m) {
  (void)m;
  return NO_CUDA();
}
const float *carl__mdev_logits(const carl__mdev_t *d) {
  (void)d;
  return NULL;
}
