/* Internal to src/cuda: the context, the checking macros every CUDA and cuBLAS call goes through,
 * and bf16 helpers. */
#ifndef CARL_CUDA_INTERNAL_H
#define CARL_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "carl/cuda.h"

struct carl_cuda {
  int device;
  int sms;               /* multiprocessors */
  size_t l2;             /* bytes of L2 */
  cudaStream_t stream;
  cublasHandle_t blas;
  cudaEvent_t ev[8];
  /* device scratch of the routing driver and the executors (grown on demand, kept) */
  void *scratch;
  size_t scratch_cap;
  /* pinned host staging (grown on demand, kept) */
  void *pinned;
  size_t pinned_cap;
  char desc[400];
};

#ifdef __cplusplus
extern "C" {
#endif
/* The status of a failed CUDA call: out of memory -> CARL_ERR_NOMEM, no device ->
 * CARL_ERR_UNSUPPORTED, anything else CARL_ERR_DEVICE; the detail names the call and the place. */
carl_status carl__cuda_fail(cudaError_t e, const char *call, const char *file, int line);
carl_status carl__cublas_fail(cublasStatus_t e, const char *call, const char *file, int line);

/* Every CUDA runtime call goes through CARL_CUDA_TRY (return a status) ... */
#define CARL_CUDA_TRY(call)                                                          \
  do {                                                                               \
    cudaError_t carl__e = (call);                                                    \
    if (carl__e != cudaSuccess) return carl__cuda_fail(carl__e, #call, __FILE__, __LINE__); \
  } while (0)
/* ... or CARL_CUDA_CHECK, which stores the first failure in a carl_status variable st and skips
 * the call once st holds an error (for paths that must still free what they hold). */
#define CARL_CUDA_CHECK(st, call)                                                               \
  do {                                                                                          \
    if ((st) == CARL_OK) {                                                                      \
      cudaError_t carl__e = (call);                                                             \
      if (carl__e != cudaSuccess) (st) = carl__cuda_fail(carl__e, #call, __FILE__, __LINE__);   \
    }                                                                                           \
  } while (0)
/* After each kernel launch: launch errors (bad configuration, no kernel image). */
#define CARL_CUDA_LAUNCHED() CARL_CUDA_TRY(cudaGetLastError())
#define CARL_CUBLAS_TRY(call)                                                                   \
  do {                                                                                          \
    cublasStatus_t carl__b = (call);                                                            \
    if (carl__b != CUBLAS_STATUS_SUCCESS) return carl__cublas_fail(carl__b, #call, __FILE__, __LINE__); \
  } while (0)

/* Device scratch of at least bytes (contents undefined; valid until the next call that asks for
 * scratch on this context). */
carl_status carl__cuda_scratch(carl_cuda_t *g, size_t bytes, void **p);
/* Pinned host staging of at least bytes (same lifetime rule). */
carl_status carl__cuda_pinned(carl_cuda_t *g, size_t bytes, void **p);

#ifdef __cplusplus
}
#endif

/* Blocks for a grid-stride loop over n items of `per_block` each: enough to fill the device a few
 * times over, at least 1. */
static inline unsigned carl__cuda_blocks(const carl_cuda_t *g, int64_t n, int per_block) {
  int64_t b = (n + per_block - 1) / per_block, cap = (int64_t)g->sms * 16;
  return (unsigned)(b < 1 ? 1 : (b > cap ? cap : b));
}

#ifdef __CUDACC__
__device__ __forceinline__ float carl__bf(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
__device__ __forceinline__ uint16_t carl__tobf(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
#endif

#endif
