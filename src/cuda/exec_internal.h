/* Internal to the executors on device memory (src/cuda/exec.cu, src/nccl/exec_nccl.c): the parts
 * of dispatch and combine that stay on one GPU, over ranges of a plan, so that an executor which
 * moves copies between GPUs in between runs the cuda executor's kernels, in its order (the same
 * float sums as the local executor). C declarations (the CUDA runtime's C header only). Every
 * array is device memory, the plan host memory; each call waits for its work (its staging is
 * reused). */
#ifndef CARL_CUDA_EXEC_INTERNAL_H
#define CARL_CUDA_EXEC_INTERNAL_H

#include <cuda_runtime_api.h>

#include "carl/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* xc[c] = x[send_tok[c] - t0] for the first-hop copies c in [c0, c1) (their tokens must lie in
 * [t0, t1): CARL_ERR_STATE otherwise), then xc[n_send + i] = xc[fwd_parent[i]] for the forwarded
 * copies i in [f0, f1) (their parents must be in the plan). x [t1 - t0, d]. */
carl_status carl__cuda_exec_gather(carl_cuda_t *g, const carl_plan_t *p, const float *x, int64_t t0, int64_t t1,
                                   int64_t c0, int64_t c1, int64_t f0, int64_t f1, int d, float *xc);
/* yc[fwd_parent[i]] += yc[n_send + i] for the forwarded copies i in [f0, f1), in ascending i. */
carl_status carl__cuda_exec_fold(carl_cuda_t *g, const carl_plan_t *p, int64_t f0, int64_t f1, int d, float *yc);
/* y[t - t0] += yc[c] over t's first-hop copies in ascending destination (tok_copy), t in [t0, t1). */
carl_status carl__cuda_exec_sum(carl_cuda_t *g, const carl_plan_t *p, int64_t t0, int64_t t1, int d, const float *yc,
                                float *y);
/* The CUDA device of the context. */
int carl__cuda_device_of(const carl_cuda_t *g);
/* Defined in src/cuda/context.cu, declared in cuda/cuda_internal.h for CUDA C++; repeated here for
 * C files: the status of a failed CUDA call, the context's scratch and pinned staging. */
carl_status carl__cuda_fail(cudaError_t e, const char *call, const char *file, int line);
carl_status carl__cuda_scratch(carl_cuda_t *g, size_t bytes, void **p);
carl_status carl__cuda_pinned(carl_cuda_t *g, size_t bytes, void **p);

#ifdef __cplusplus
}
#endif
#endif
