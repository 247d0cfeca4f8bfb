/* SwiGLU on bf16 rows (the expert FFN's activation): a = silu(gate) * up with h = [gate | up].
 * CPU reference: carl_swiglu_fwd / carl_swiglu_bwd (src/nn/act.c), the same formulas in float32;
 * here each output is rounded to bf16 once. Eight elements (16 bytes) per thread. */
#include "cuda/cuda_internal.h"
#include "cuda/moe_internal.h"

typedef struct __align__(16) {
  uint16_t v[8];
} bf8_t;

__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + __expf(-x)); }

__global__ void swiglu_fwd_kernel(uint16_t *a, const uint16_t *h, int64_t R, int f) {
  const int c8 = f / 8;
  const int64_t n = R * c8;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / c8;
    const int c = (int)(i - r * c8) * 8;
    const bf8_t gv = *(const bf8_t *)(h + r * 2 * f + c), uv = *(const bf8_t *)(h + r * 2 * f + f + c);
    bf8_t o;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const float x = carl__bf(gv.v[j]);
      o.v[j] = carl__tobf(x * sigm(x) * carl__bf(uv.v[j]));
    }
    *(bf8_t *)(a + r * f + c) = o;
  }
}

__global__ void swiglu_bwd_kernel(uint16_t *dh, const uint16_t *da, const uint16_t *h, int64_t R, int f) {
  const int c8 = f / 8;
  const int64_t n = R * c8;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / c8;
    const int c = (int)(i - r * c8) * 8;
    const bf8_t gv = *(const bf8_t *)(h + r * 2 * f + c), uv = *(const bf8_t *)(h + r * 2 * f + f + c);
    const bf8_t dv = *(const bf8_t *)(da + r * f + c);
    bf8_t og, ou;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const float x = carl__bf(gv.v[j]), u = carl__bf(uv.v[j]), d = carl__bf(dv.v[j]);
      const float s = sigm(x);
      ou.v[j] = carl__tobf(d * x * s);
      og.v[j] = carl__tobf(d * u * s * (1.0f + x * (1.0f - s)));
    }
    *(bf8_t *)(dh + r * 2 * f + c) = og;
    *(bf8_t *)(dh + r * 2 * f + f + c) = ou;
  }
}

extern "C" carl_status carl__cuda_swiglu_fwd(carl_cuda_t *g, uint16_t *a, const uint16_t *h, int64_t R, int f) {
  if (f % 8) return carl_fail(CARL_ERR_UNSUPPORTED, "SwiGLU on the GPU: f = %d, must be a multiple of 8", f);
  if (R <= 0) return CARL_OK;
  swiglu_fwd_kernel<<<carl__cuda_blocks(g, R * (f / 8), 256), 256, 0, g->stream>>>(a, h, R, f);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

extern "C" carl_status carl__cuda_swiglu_bwd(carl_cuda_t *g, uint16_t *dh, const uint16_t *da, const uint16_t *h,
                                             int64_t R, int f) {
  if (f % 8) return carl_fail(CARL_ERR_UNSUPPORTED, "SwiGLU on the GPU: f = %d, must be a multiple of 8", f);
  if (R <= 0) return CARL_OK;
  swiglu_bwd_kernel<<<carl__cuda_blocks(g, R * (f / 8), 256), 256, 0, g->stream>>>(dh, da, h, R, f);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}
