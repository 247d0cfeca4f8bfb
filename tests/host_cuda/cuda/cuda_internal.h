/* The device API of src/cuda emulated in host memory (tests/host_cuda): this header stands in for
 * src/cuda/cuda_internal.h when src/cuda/model.cu is compiled as C++ for test_cuda_model_host.
 * "Device" pointers are host pointers, the stream is nothing, every call succeeds. */
#ifndef CARL_HOST_CUDA_INTERNAL_H
#define CARL_HOST_CUDA_INTERNAL_H

#include <stddef.h>

#include "carl/cuda.h"

typedef int cudaError_t;
typedef void *cudaStream_t;
#define cudaSuccess 0

struct carl_cuda {
  int device;
  cudaStream_t stream;
  char desc[64];
};

static inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  (void)s;
  return cudaSuccess;
}
static inline cudaError_t cudaSetDevice(int d) {
  (void)d;
  return cudaSuccess;
}
/* 1 TiB free: the size check is exercised by the test's large batch */
static inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
  *free_b = *total = (size_t)1 << 40;
  return cudaSuccess;
}
#define CARL_CUDA_TRY(call)                                                                           \
  do {                                                                                                \
    if ((call) != cudaSuccess) return carl_fail(CARL_ERR_DEVICE, "host emulation: %s failed", #call); \
  } while (0)

#endif
