/* The expert products of the MoE layer: one bf16 GEMM per expert with float32 accumulation
 * through cuBLAS, either one cublasGemmEx per expert or one cublasGemmGroupedBatchedEx for all.
 * Row-major operands as carl_sgemm (src/nn/linear.c, the CPU reference) takes them; cuBLAS is
 * column-major, so C^T = op(B)^T op(A)^T is computed with the operands swapped. */
#include <stdlib.h>

#include "cuda/cuda_internal.h"
#include "cuda/moe_internal.h"

extern "C" carl_status carl__cuda_gemm_bf16(carl_cuda_t *g, int mode, int n, const carl__bgemm_t *p, void **dev_ptrs) {
  const float one = 1.0f, zero = 0.0f;
  if (mode == 0) {
    for (int i = 0; i < n; i++) {
      const carl__bgemm_t *q = &p[i];
      if (q->M <= 0) continue;
      if (q->M > 0x7fffffff) return carl_fail(CARL_ERR_UNSUPPORTED, "GEMM: %lld rows exceed cuBLAS's int range", (long long)q->M);
      CARL_CUBLAS_TRY(cublasGemmEx(g->blas, q->transB ? CUBLAS_OP_T : CUBLAS_OP_N, q->transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   q->N, (int)q->M, q->K, &one, q->B, CUDA_R_16BF, q->ldb, q->A, CUDA_R_16BF, q->lda,
                                   &zero, q->C, CUDA_R_16BF, q->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return CARL_OK;
  }
  /* grouped: one group per non-empty product */
  cublasOperation_t *ta = (cublasOperation_t *)malloc(sizeof *ta * (size_t)(2 * n + 1));
  int *dims = (int *)malloc(sizeof(int) * (size_t)(7 * n + 1));
  float *ab = (float *)malloc(sizeof(float) * (size_t)(2 * n + 1));
  const void **ptr = (const void **)malloc(sizeof(void *) * (size_t)(3 * n + 1));
  carl_status st = CARL_OK;
  if (!ta || !dims || !ab || !ptr) st = carl_fail(CARL_ERR_NOMEM, "grouped GEMM: out of host memory");
  int m = 0;
  for (int i = 0; st == CARL_OK && i < n; i++) {
    const carl__bgemm_t *q = &p[i];
    if (q->M <= 0) continue;
    ta[m] = q->transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    ta[n + m] = q->transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    dims[m] = q->N;                    /* m */
    dims[n + m] = (int)q->M;           /* n */
    dims[2 * n + m] = q->K;            /* k */
    dims[3 * n + m] = q->ldb;          /* lda of the first cuBLAS operand (B) */
    dims[4 * n + m] = q->lda;          /* ldb (A) */
    dims[5 * n + m] = q->ldc;
    dims[6 * n + m] = 1;               /* group size */
    ab[m] = one;
    ab[n + m] = zero;
    ptr[m] = q->B;
    ptr[n + m] = q->A;
    ptr[2 * n + m] = q->C;
    m++;
  }
  if (st == CARL_OK && m > 0) {
    /* device pointer arrays: B's, A's, C's (pageable copy: the host arrays may be freed after it) */
    cudaError_t e = cudaMemcpyAsync(dev_ptrs, ptr, sizeof(void *) * (size_t)m, cudaMemcpyHostToDevice, g->stream);
    if (e == cudaSuccess) e = cudaMemcpyAsync(dev_ptrs + m, ptr + n, sizeof(void *) * (size_t)m, cudaMemcpyHostToDevice, g->stream);
    if (e == cudaSuccess)
      e = cudaMemcpyAsync(dev_ptrs + 2 * m, ptr + 2 * n, sizeof(void *) * (size_t)m, cudaMemcpyHostToDevice, g->stream);
    if (e != cudaSuccess) st = carl__cuda_fail(e, "cudaMemcpyAsync(grouped GEMM pointers)", __FILE__, __LINE__);
    if (st == CARL_OK) {
      cublasStatus_t b = cublasGemmGroupedBatchedEx(
          g->blas, ta, ta + n, dims, dims + n, dims + 2 * n, ab, (const void *const *)dev_ptrs, CUDA_R_16BF,
          dims + 3 * n, (const void *const *)(dev_ptrs + m), CUDA_R_16BF, dims + 4 * n, ab + n, dev_ptrs + 2 * m,
          CUDA_R_16BF, dims + 5 * n, m, dims + 6 * n, CUBLAS_COMPUTE_32F);
      if (b != CUBLAS_STATUS_SUCCESS) st = carl__cublas_fail(b, "cublasGemmGroupedBatchedEx", __FILE__, __LINE__);
    }
  }
  /* the host arrays stay valid until the queued call has run */
  if (m > 0) {
    cudaError_t e = cudaStreamSynchronize(g->stream);
    if (e != cudaSuccess && st == CARL_OK) st = carl__cuda_fail(e, "cudaStreamSynchronize", __FILE__, __LINE__);
  }
  free(ta);
  free(dims);
  free(ab);
  free(ptr);
  return st;
}
