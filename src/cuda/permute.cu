/* Permute and unpermute of the MoE layer by the plan's rows: xp[r] = x[token of row r] (dispatch
 * and the gather of the rows, fused on one device), y[t] = sum over t's rows of gate * Y[r]
 * (the expert outputs weighted, then combined) and their backward. Sums in float32 in a fixed
 * order (no atomics), rounded to bf16 once. CPU reference: the local executor's gather and
 * combine (src/exec/local.c) with the gates applied per row as src/model/moe.c does. */
#include "cuda/cuda_internal.h"
#include "cuda/moe_internal.h"

typedef struct __align__(16) {
  uint16_t v[8];
} bf8_t;

__global__ void permute_kernel(uint16_t *xp, const uint16_t *x, const int32_t *row_tok, int64_t R, int d) {
  const int c8 = d / 8;
  const int64_t n = R * c8;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / c8;
    const int c = (int)(i - r * c8);
    ((uint4 *)(xp + r * d))[c] = ((const uint4 *)(x + (int64_t)row_tok[r] * d))[c];
  }
}

__global__ void unpermute_kernel(uint16_t *y, const uint16_t *Y, const float *gates, const int32_t *row_slot,
                                 const int64_t *tok_off, const int32_t *tok_row, int64_t T, int d) {
  const int c8 = d / 8;
  const int64_t n = T * c8;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / c8;
    const int c = (int)(i - t * c8);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t q = tok_off[t]; q < tok_off[t + 1]; q++) {
      const int32_t r = tok_row[q];
      const float gt = gates ? gates[row_slot[r]] : 1.0f;
      const bf8_t v = ((const bf8_t *)(Y + (int64_t)r * d))[c];
#pragma unroll
      for (int j = 0; j < 8; j++) acc[j] += gt * carl__bf(v.v[j]);
    }
    bf8_t o;
#pragma unroll
    for (int j = 0; j < 8; j++) o.v[j] = carl__tobf(acc[j]);
    ((bf8_t *)(y + t * d))[c] = o;
  }
}

/* one warp per row */
__global__ void unpermute_bwd_kernel(uint16_t *dY, float *dgates, const uint16_t *dy, const uint16_t *Y, const float *gates,
                                     const int32_t *row_slot, const int32_t *row_tok, int64_t R, int d) {
  const int lane = threadIdx.x & 31, c8 = d / 8;
  const int64_t W = (int64_t)gridDim.x * (blockDim.x / 32);
  for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < R; r += W) {
    const float gt = gates[row_slot[r]];
    const bf8_t *dyr = (const bf8_t *)(dy + (int64_t)row_tok[r] * d), *Yr = (const bf8_t *)(Y + r * d);
    bf8_t *dYr = (bf8_t *)(dY + r * d);
    float dot = 0.0f;
    for (int c = lane; c < c8; c += 32) {
      const bf8_t a = dyr[c], b = Yr[c];
      bf8_t o;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const float u = carl__bf(a.v[j]);
        dot += u * carl__bf(b.v[j]);
        o.v[j] = carl__tobf(gt * u);
      }
      dYr[c] = o;
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xFFFFFFFFu, dot, o);
    if (lane == 0) dgates[row_slot[r]] = dot;
  }
}

extern "C" carl_status carl__cuda_permute(carl_cuda_t *g, uint16_t *xp, const uint16_t *x, const int32_t *row_tok,
                                          int64_t R, int d) {
  if (d % 8) return carl_fail(CARL_ERR_UNSUPPORTED, "MoE permute on the GPU: d = %d, must be a multiple of 8", d);
  if (R <= 0) return CARL_OK;
  permute_kernel<<<carl__cuda_blocks(g, R * (d / 8), 256), 256, 0, g->stream>>>(xp, x, row_tok, R, d);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

extern "C" carl_status carl__cuda_unpermute(carl_cuda_t *g, uint16_t *y, const uint16_t *Y, const float *gates,
                                            const int32_t *row_slot, const int64_t *tok_off, const int32_t *tok_row,
                                            int64_t T, int d) {
  if (d % 8) return carl_fail(CARL_ERR_UNSUPPORTED, "MoE combine on the GPU: d = %d, must be a multiple of 8", d);
  if (T <= 0) return CARL_OK;
  unpermute_kernel<<<carl__cuda_blocks(g, T * (d / 8), 256), 256, 0, g->stream>>>(y, Y, gates, row_slot, tok_off,
                                                                                 tok_row, T, d);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

extern "C" carl_status carl__cuda_unpermute_bwd(carl_cuda_t *g, uint16_t *dY, float *dgates, const uint16_t *dy,
                                                const uint16_t *Y, const float *gates, const int32_t *row_slot,
                                                const int32_t *row_tok, int64_t R, int d) {
  if (d % 8) return carl_fail(CARL_ERR_UNSUPPORTED, "MoE combine backward on the GPU: d = %d, must be a multiple of 8", d);
  if (R <= 0) return CARL_OK;
  unpermute_bwd_kernel<<<carl__cuda_blocks(g, R, 8), 256, 0, g->stream>>>(dY, dgates, dy, Y, gates, row_slot, row_tok,
                                                                           R, d);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}
