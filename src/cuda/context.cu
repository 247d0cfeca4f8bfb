/* The CUDA context (carl/cuda.h): device, stream, cuBLAS handle, events, scratch; the checking
 * macros' error texts; device fills and bf16 conversions. CPU reference of the fill: the Philox
 * generator of src/core/rng.c (the same 4x32-10 rounds). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.h"

extern "C" {

carl_status carl__cuda_fail(cudaError_t e, const char *call, const char *file, int line) {
  carl_status st = CARL_ERR_DEVICE;
  if (e == cudaErrorMemoryAllocation) st = CARL_ERR_NOMEM;
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInvalidDevice) st = CARL_ERR_UNSUPPORTED;
  cudaGetLastError(); /* clear a sticky launch error so the next call reports its own */
  return carl_fail(st, "CUDA: %s failed: %s (%s) at %s:%d", call, cudaGetErrorString(e), cudaGetErrorName(e), file, line);
}

carl_status carl__cublas_fail(cublasStatus_t e, const char *call, const char *file, int line) {
  carl_status st = e == CUBLAS_STATUS_ALLOC_FAILED ? CARL_ERR_NOMEM : CARL_ERR_DEVICE;
  return carl_fail(st, "cuBLAS: %s failed: %s at %s:%d", call, cublasGetStatusString(e), file, line);
}

int carl_cuda_built(void) { return 1; }

carl_status carl_cuda_device_count(int *n) {
  *n = 0;
  cudaError_t e = cudaGetDeviceCount(n);
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
    cudaGetLastError();
    *n = 0;
    return CARL_OK;
  }
  CARL_CUDA_TRY(e);
  return CARL_OK;
}

void carl_cuda_free(carl_cuda_t *g) {
  if (!g) return;
  cudaSetDevice(g->device);
  if (g->stream) cudaStreamSynchronize(g->stream);
  for (int i = 0; i < 8; i++)
    if (g->ev[i]) cudaEventDestroy(g->ev[i]);
  if (g->blas) cublasDestroy(g->blas);
  if (g->scratch) cudaFree(g->scratch);
  if (g->pinned) cudaFreeHost(g->pinned);
  if (g->stream) cudaStreamDestroy(g->stream);
  free(g);
}

static carl_status cuda_init(carl_cuda_t *g) {
  CARL_CUDA_TRY(cudaSetDevice(g->device));
  cudaDeviceProp p;
  CARL_CUDA_TRY(cudaGetDeviceProperties(&p, g->device));
  g->sms = p.multiProcessorCount;
  g->l2 = (size_t)p.l2CacheSize;
  snprintf(g->desc, sizeof g->desc, "%s, %d SMs, %.1f GiB, compute capability %d.%d", p.name, p.multiProcessorCount,
           (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), p.major, p.minor);
  CARL_CUDA_TRY(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
  for (int i = 0; i < 8; i++) CARL_CUDA_TRY(cudaEventCreate(&g->ev[i]));
  CARL_CUBLAS_TRY(cublasCreate(&g->blas));
  CARL_CUBLAS_TRY(cublasSetStream(g->blas, g->stream));
  return CARL_OK;
}

carl_status carl_cuda_create(int device, carl_cuda_t **out) {
  if (!out) return carl_fail(CARL_ERR_INVALID, "carl_cuda_create: out is NULL");
  *out = NULL;
  int n = 0;
  CARL_TRY(carl_cuda_device_count(&n));
  if (n == 0) return carl_fail(CARL_ERR_UNSUPPORTED, "CUDA: no CUDA device is visible (cudaGetDeviceCount found none)");
  if (device < 0 || device >= n)
    return carl_fail(CARL_ERR_UNSUPPORTED, "CUDA: device %d does not exist (%d device%s: 0..%d)", device, n, n == 1 ? "" : "s",
                     n - 1);
  carl_cuda_t *g = (carl_cuda_t *)calloc(1, sizeof *g);
  if (!g) return carl_fail(CARL_ERR_NOMEM, "CUDA: out of host memory for the context");
  g->device = device;
  carl_status st = cuda_init(g);
  if (st != CARL_OK) {
    carl_cuda_free(g);
    return st;
  }
  *out = g;
  return CARL_OK;
}

const char *carl_cuda_describe(const carl_cuda_t *g) { return g ? g->desc : "(no context)"; }

carl_status carl_cuda_malloc(carl_cuda_t *g, size_t bytes, void **p) {
  *p = NULL;
  if (bytes == 0) bytes = 1;
  cudaError_t e = cudaMalloc(p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    *p = NULL;
    return carl_fail(CARL_ERR_NOMEM, "CUDA: out of device memory: asked for %zu bytes (%.2f GiB), %zu bytes free of %zu on %s",
                     bytes, (double)bytes / (1 << 30), fr, tot, g ? g->desc : "the device");
  }
  CARL_CUDA_TRY(e);
  return CARL_OK;
}

void carl_cuda_mfree(carl_cuda_t *g, void *p) {
  (void)g;
  if (p) cudaFree(p);
}

carl_status carl_cuda_upload(carl_cuda_t *g, void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return CARL_OK;
  CARL_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g->stream));
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream)); /* the host buffer may be reused at once */
  return CARL_OK;
}

carl_status carl_cuda_download(carl_cuda_t *g, void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return CARL_OK;
  CARL_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g->stream));
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
  return CARL_OK;
}

carl_status carl_cuda_memset(carl_cuda_t *g, void *p, int byte, size_t bytes) {
  if (bytes == 0) return CARL_OK;
  CARL_CUDA_TRY(cudaMemsetAsync(p, byte, bytes, g->stream));
  return CARL_OK;
}

carl_status carl_cuda_copy(carl_cuda_t *g, void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return CARL_OK;
  CARL_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g->stream));
  return CARL_OK;
}

carl_status carl_cuda_sync(carl_cuda_t *g) {
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
  CARL_CUDA_TRY(cudaGetLastError());
  return CARL_OK;
}

void *carl_cuda_stream(carl_cuda_t *g) { return (void *)g->stream; }

carl_status carl_cuda_mark(carl_cuda_t *g, int slot) {
  if (slot < 0 || slot > 7) return carl_fail(CARL_ERR_INVALID, "CUDA: event slot %d is outside 0..7", slot);
  CARL_CUDA_TRY(cudaEventRecord(g->ev[slot], g->stream));
  return CARL_OK;
}

carl_status carl_cuda_elapsed(carl_cuda_t *g, int slot0, int slot1, double *ms) {
  if (slot0 < 0 || slot0 > 7 || slot1 < 0 || slot1 > 7)
    return carl_fail(CARL_ERR_INVALID, "CUDA: event slots %d, %d outside 0..7", slot0, slot1);
  float f = 0;
  CARL_CUDA_TRY(cudaEventSynchronize(g->ev[slot1]));
  CARL_CUDA_TRY(cudaEventElapsedTime(&f, g->ev[slot0], g->ev[slot1]));
  *ms = f;
  return CARL_OK;
}

carl_status carl__cuda_scratch(carl_cuda_t *g, size_t bytes, void **p) {
  if (bytes > g->scratch_cap) {
    if (g->scratch) {
      CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
      CARL_CUDA_TRY(cudaFree(g->scratch));
      g->scratch = NULL;
      g->scratch_cap = 0;
    }
    size_t cap = bytes + bytes / 4 + 4096;
    CARL_TRY(carl_cuda_malloc(g, cap, &g->scratch));
    g->scratch_cap = cap;
  }
  *p = g->scratch;
  return CARL_OK;
}

carl_status carl__cuda_pinned(carl_cuda_t *g, size_t bytes, void **p) {
  if (bytes > g->pinned_cap) {
    if (g->pinned) {
      CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
      CARL_CUDA_TRY(cudaFreeHost(g->pinned));
      g->pinned = NULL;
      g->pinned_cap = 0;
    }
    size_t cap = bytes + bytes / 4 + 4096;
    cudaError_t e = cudaMallocHost(&g->pinned, cap);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      g->pinned = NULL;
      return carl_fail(CARL_ERR_NOMEM, "CUDA: out of pinned host memory: asked for %zu bytes", cap);
    }
    CARL_CUDA_TRY(e);
    g->pinned_cap = cap;
  }
  *p = g->pinned;
  return CARL_OK;
}

} /* extern "C" */

/* ---- fills ------------------------------------------------------------------------------------ */
/* Philox4x32-10 (Salmon et al., SC'11), as src/core/rng.c. */
__device__ __forceinline__ void philox(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; r++) {
    uint32_t hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
    uint32_t hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
    uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

__global__ void fill_normal_kernel(float *x, int64_t n, uint64_t seed, float mean, float std) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; 2 * i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t c[4] = {(uint32_t)i, (uint32_t)(i >> 32), 0x6361726cu, 0};
    philox(c, (uint32_t)seed, (uint32_t)(seed >> 32));
    float u1 = ((c[0] >> 8) + 1) * (1.0f / 16777216.0f), u2 = (c[1] >> 8) * (1.0f / 16777216.0f);
    float r = sqrtf(-2.0f * logf(u1)), s, co;
    sincospif(2.0f * u2, &s, &co);
    x[2 * i] = mean + std * r * co;
    if (2 * i + 1 < n) x[2 * i + 1] = mean + std * r * s;
  }
}

__global__ void to_bf16_kernel(uint16_t *d, const float *s, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    d[i] = carl__tobf(s[i]);
}

__global__ void from_bf16_kernel(float *d, const uint16_t *s, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    d[i] = carl__bf(s[i]);
}

extern "C" {

carl_status carl_cuda_fill_normal(carl_cuda_t *g, float *x, int64_t n, uint64_t seed, float mean, float std) {
  if (n <= 0) return CARL_OK;
  fill_normal_kernel<<<carl__cuda_blocks(g, (n + 1) / 2, 256), 256, 0, g->stream>>>(x, n, seed, mean, std);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl_cuda_to_bf16(carl_cuda_t *g, uint16_t *dst, const float *src, int64_t n) {
  if (n <= 0) return CARL_OK;
  to_bf16_kernel<<<carl__cuda_blocks(g, n, 256), 256, 0, g->stream>>>(dst, src, n);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

carl_status carl_cuda_from_bf16(carl_cuda_t *g, float *dst, const uint16_t *src, int64_t n) {
  if (n <= 0) return CARL_OK;
  from_bf16_kernel<<<carl__cuda_blocks(g, n, 256), 256, 0, g->stream>>>(dst, src, n);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}

} /* extern "C" */
