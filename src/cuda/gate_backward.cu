/* The gate backward on the GPU (carl/cuda.h): dlogits += d(weights)/d(logits)^T dweights for
 * gates w_j = s[e_j] / Z, Z = sum of s over the kept slots (renorm) or 1, s = softmax or sigmoid.
 * CPU reference: carl_route_gate_backward (src/route/common.c), the same formula:
 *   dL/ds_a = sum over slots j with e_j = a of (dw_j / Z - (renorm ? sum_i dw_i w_i / Z : 0));
 *   softmax: dz_e += s_e (ds_e - sum over distinct kept a of s_a ds_a); sigmoid: dz_e += ds_e s_e (1 - s_e).
 * One warp per token; the slot sums in double as on the CPU. */
#include <math.h>

#include "cuda/cuda_internal.h"

#define GB_MAXK 16

__device__ __forceinline__ float gb_score(float z, float mx, float inv_sum, int score) {
  return score == 1 ? 1.0f / (1.0f + expf(-z)) : expf(z - mx) * inv_sum;
}

__global__ void gate_backward_kernel(const float *logits, int64_t T, int E, int k, int score, int renorm,
                                     const int32_t *experts, const float *dweights, float *dlogits,
                                     unsigned long long *bad) {
  const int lane = threadIdx.x & 31;
  const int64_t W = (int64_t)gridDim.x * (blockDim.x / 32);
  for (int64_t t = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; t < T; t += W) {
    const float *z = logits + t * E;
    float mx = -INFINITY, chk = 0.0f;
    for (int e = lane; e < E; e += 32) {
      mx = fmaxf(mx, z[e]);
      chk = fmaf(z[e], 0.0f, chk);
    }
    if (__any_sync(0xFFFFFFFFu, chk != chk)) {
      if (lane == 0) atomicMin(bad, (unsigned long long)t);
      continue;
    }
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, o));
    float sum = 0.0f;
    if (score == 0) {
      for (int e = lane; e < E; e += 32) sum += expf(z[e] - mx);
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
    }
    const float inv = score == 0 ? 1.0f / sum : 1.0f;
    int32_t ex[GB_MAXK];
    double dw[GB_MAXK], sj[GB_MAXK];
#pragma unroll
    for (int j = 0; j < GB_MAXK; j++) {
      ex[j] = j < k ? experts[t * k + j] : -1;
      dw[j] = j < k ? (double)dweights[t * k + j] : 0.0;
      sj[j] = ex[j] >= 0 ? (double)gb_score(z[ex[j]], mx, inv, score) : 0.0;
    }
    double Z = 1.0, dot = 0.0;
    if (renorm) {
      Z = 0.0;
#pragma unroll
      for (int j = 0; j < GB_MAXK; j++) Z += sj[j];
      if (!(Z > 0)) continue;
#pragma unroll
      for (int j = 0; j < GB_MAXK; j++)
        if (ex[j] >= 0) dot += dw[j] * sj[j] / Z;
    }
    double dsj[GB_MAXK];
#pragma unroll
    for (int j = 0; j < GB_MAXK; j++) dsj[j] = ex[j] >= 0 ? dw[j] / Z - (renorm ? dot / Z : 0.0) : 0.0;
    double a = 0.0; /* softmax: sum over distinct kept experts of s_a ds_a */
    if (score == 0) {
#pragma unroll
      for (int j = 0; j < GB_MAXK; j++) {
        if (ex[j] < 0) continue;
        int first = 1;
        double ds = 0.0;
#pragma unroll
        for (int q = 0; q < GB_MAXK; q++) {
          if (q < j && ex[q] == ex[j]) first = 0;
          if (ex[q] == ex[j]) ds += dsj[q];
        }
        if (first) a += sj[j] * ds;
      }
    }
    float *dz = dlogits + t * E;
    for (int e = lane; e < E; e += 32) {
      double ds = 0.0;
#pragma unroll
      for (int j = 0; j < GB_MAXK; j++)
        if (ex[j] == e) ds += dsj[j];
      const double s = (double)gb_score(z[e], mx, inv, score);
      if (score == 1) dz[e] += (float)(ds * s * (1.0 - s));
      else dz[e] += (float)(s * (ds - a));
    }
  }
}

extern "C" carl_status carl_cuda_gate_backward(carl_cuda_t *g, const float *logits, int64_t T, int E, int k, int score,
                                               int renorm, const int32_t *experts, const float *dweights,
                                               float *dlogits) {
  if (!g || !logits || !experts || !dweights || !dlogits)
    return carl_fail(CARL_ERR_INVALID, "gate backward: NULL argument");
  if (T < 1 || E < 1 || k < 1 || k > E)
    return carl_fail(CARL_ERR_INVALID, "gate backward: T = %lld, E = %d, k = %d", (long long)T, E, k);
  if (k > GB_MAXK) return carl_fail(CARL_ERR_UNSUPPORTED, "gate backward on the GPU: k = %d, at most %d", k, GB_MAXK);
  unsigned long long *bad;
  CARL_TRY(carl__cuda_scratch(g, sizeof *bad, (void **)&bad));
  CARL_CUDA_TRY(cudaMemsetAsync(bad, 0xFF, sizeof *bad, g->stream));
  gate_backward_kernel<<<carl__cuda_blocks(g, T, 8), 256, 0, g->stream>>>(logits, T, E, k, score, renorm, experts,
                                                                           dweights, dlogits, bad);
  CARL_CUDA_LAUNCHED();
  unsigned long long hb = 0;
  CARL_CUDA_TRY(cudaMemcpyAsync(&hb, bad, sizeof hb, cudaMemcpyDeviceToHost, g->stream));
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
  if (hb != ~0ull) {
    float *row = (float *)malloc(sizeof(float) * (size_t)E);
    if (!row) return carl_fail(CARL_ERR_NUMERIC, "logits: token %llu is not finite", hb);
    carl_status st = carl_cuda_download(g, row, logits + (int64_t)hb * E, sizeof(float) * (size_t)E);
    int e = 0;
    while (st == CARL_OK && e < E && isfinite(row[e])) e++;
    if (st == CARL_OK)
      st = carl_fail(CARL_ERR_NUMERIC, "logits: token %llu, expert %d is %s (finite values required)", hb, e < E ? e : 0,
                     e < E && isnan(row[e]) ? "NaN" : "infinite");
    free(row);
    return st;
  }
  return CARL_OK;
}
