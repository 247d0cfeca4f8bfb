/* carl/cuda.h: the GPU path (CUDA): a device context, the fused routing kernel, the cuda executor
 * and the bf16 MoE expert layer.
 *
 * Usage:
 *   carl_cuda_t *g;
 *   CARL_TRY(carl_cuda_create(0, &g));                 // no device / no CUDA build: clear error
 *   float *z;                                          // device logits [T, E]
 *   CARL_TRY(carl_cuda_malloc(g, T * E * sizeof *z, (void **)&z));
 *   carl_route_in_t in = {.T = T, .E = E, .logits = z, .topo = &topo};   // logits, src: device
 *   carl_cuda_route_t o = {.out = {.experts = dex, .weights = dw}, .load = load};
 *   CARL_TRY(carl_cuda_route(g, router, &in, &o));     // o.on_cpu: ran on the CPU (see o.note)
 *   CARL_TRY(carl_cuda_route_update(g, router, &in, &o));   // stateful routers, from o.load
 *   ...
 *   carl_cuda_mfree(g, z);
 *   carl_cuda_free(g);
 *
 * Memory: every tensor pointer given to the functions below is device memory unless its comment
 * says host. bf16 tensors are uint16_t arrays (the upper half of the float32 bit pattern, round to
 * nearest even). Work is queued on the context's stream; functions that return host results
 * (carl_cuda_route, the downloads) wait for it.
 * Errors: a build without CUDA returns CARL_ERR_UNSUPPORTED from every function; no device or a
 * device index out of range CARL_ERR_UNSUPPORTED naming the device count; a failed allocation
 * CARL_ERR_NOMEM naming the bytes asked and the bytes free; non-finite logits CARL_ERR_NUMERIC with
 * the CPU's message (token and expert); any other CUDA or cuBLAS failure CARL_ERR_DEVICE naming
 * the call and the CUDA error text. Every CUDA and cuBLAS call goes through a checking macro.
 * Ownership: the context owns its stream, cuBLAS handle and scratch; the caller owns everything
 * it passes in (free device memory with carl_cuda_mfree before carl_cuda_free).
 */
#ifndef CARL_CUDA_H
#define CARL_CUDA_H

#include "carl/exec.h"
#include "carl/plan.h"
#include "carl/route.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct carl_cuda carl_cuda_t;

/* 1 when this build has the CUDA path (CARL_WITH_CUDA and nvcc found at configure time). */
int carl_cuda_built(void);
/* Number of CUDA devices (0 when there is none: not an error). */
carl_status carl_cuda_device_count(int *n);
carl_status carl_cuda_create(int device, carl_cuda_t **out);
void carl_cuda_free(carl_cuda_t *g);
/* "NVIDIA H200, 132 SMs, 139.8 GiB" */
const char *carl_cuda_describe(const carl_cuda_t *g);

carl_status carl_cuda_malloc(carl_cuda_t *g, size_t bytes, void **p);
void carl_cuda_mfree(carl_cuda_t *g, void *p);
carl_status carl_cuda_upload(carl_cuda_t *g, void *dst, const void *src /* host */, size_t bytes);
carl_status carl_cuda_download(carl_cuda_t *g, void *dst /* host */, const void *src, size_t bytes);
carl_status carl_cuda_memset(carl_cuda_t *g, void *p, int byte, size_t bytes);
/* Device to device, queued on the stream. */
carl_status carl_cuda_copy(carl_cuda_t *g, void *dst, const void *src, size_t bytes);
carl_status carl_cuda_sync(carl_cuda_t *g);
/* The context's cudaStream_t. */
void *carl_cuda_stream(carl_cuda_t *g);
/* Device time of the work queued between two marks, in milliseconds (CUDA events). */
carl_status carl_cuda_mark(carl_cuda_t *g, int slot /* 0..7 */);
carl_status carl_cuda_elapsed(carl_cuda_t *g, int slot0, int slot1, double *ms);

/* Fresh inputs for tests and benchmarks: x[i] = mean + std * N(0, 1) from the counter-based RNG
 * keyed by (seed, i) (Box-Muller on Philox words; not the CPU's carl_rng_normal stream). */
carl_status carl_cuda_fill_normal(carl_cuda_t *g, float *x /* [n] */, int64_t n, uint64_t seed, float mean, float std);
/* bf16 <-> float32 on the device (round to nearest even). */
carl_status carl_cuda_to_bf16(carl_cuda_t *g, uint16_t *dst /* [n] */, const float *src /* [n] */, int64_t n);
carl_status carl_cuda_from_bf16(carl_cuda_t *g, float *dst /* [n] */, const uint16_t *src /* [n] */, int64_t n);

/* ---- routing (src/cuda/route.cu, the kernel in src/cuda/route_select.cu) -------------------- */
typedef struct {
  carl_route_out_t out; /* experts [T, k], weights [T, k]: device; dlogits must be NULL; losses,
                           dropped, capacity filled as carl_router_route does */
  double *load;         /* host [E] or NULL: kept (token, slot) pairs per expert */
  int64_t *hop;         /* host [D, D] or NULL: copies per (source, destination) device pair of the
                           flat plan (carl_plan_t.hop of carl_plan_build, CARL_PLAN_FLAT) */
  int on_cpu;           /* set: 1 when the router has no GPU kernel for these options and ran on the
                           CPU through the registry (inputs downloaded, outputs uploaded) */
  char note[200];       /* set: why it ran on the CPU, "" otherwise */
} carl_cuda_route_t;

/* Route on the device: in->logits [T, E] and in->src [T] (or NULL) are device pointers; topo,
 * place, step, seed as on the CPU (in->x and in->token_ids are not used). Routers with a GPU
 * kernel: topk, switch, lossfree (also group-limited: the DeepSeek-V3 policy), grouplimited and
 * carl after its warm start, with capacity_factor 0 (dropless), no jitter, no dlogits, E = 16,
 * 32, 64, 128, 256 or 512, k <= 16 and groups of consecutive experts, equal in size, 16 * 2^m
 * experts each, at most 16 groups, per_group <= 4. Where the selection reads the scores they are
 * computed with the CPU portable executor's operations in its order, so the selections equal its
 * selections, ties included (docs/gpu.md). Every other router or option runs on the CPU through
 * the registry (o->on_cpu, o->note). */
carl_status carl_cuda_route(carl_cuda_t *g, carl_router_t *r, const carl_route_in_t *in, carl_cuda_route_t *o);
/* The router's update (carl_router_update) from the loads of the last carl_cuda_route of o (its
 * `load`, or counted from the experts when it was NULL) as the step's global loads. */
carl_status carl_cuda_route_update(carl_cuda_t *g, carl_router_t *r, const carl_route_in_t *in, carl_cuda_route_t *o);
/* dlogits [T, E] += d(weights)/d(logits)^T dweights for gates w = s[t, e_j] (renormalised over the
 * kept slots when renorm), s = softmax (score 0) or sigmoid (1) of the logits: the default
 * backward of carl_router_backward (CPU reference carl_route_gate_backward). */
carl_status carl_cuda_gate_backward(carl_cuda_t *g, const float *logits /* [T, E] */, int64_t T, int E, int k,
                                    int score, int renorm, const int32_t *experts /* [T, k] */,
                                    const float *dweights /* [T, k] */, float *dlogits /* [T, E] */);

/* ---- the cuda executor (src/cuda/exec.cu; reference: the local executor) -------------------- */
/* Every device of the plan in this process, on this GPU: x, xc, y and the migrated tensors are
 * device float arrays; the results equal the local executor's bit for bit (same summation
 * order, no atomics). The plan stays on the host; its row lists are uploaded at each call.
 * All-reduce is the identity (one process). */
carl_status carl_exec_cuda_create(carl_cuda_t *g, carl_exec_t **out);

/* ---- the MoE expert layer in bf16 (src/cuda/moe.cu) ----------------------------------------- */
/* The experts of one device: the rows of `dev` in a plan (carl_plan_build with CARL_PLAN_ROWS and
 * device -1 or dev) are gathered from x (permute), each slot j of the device runs the SwiGLU
 * expert FFN with its weights (slot order of the placement), Y = (silu(X W1^T) * (X W3^T)) W2^T,
 * through bf16 grouped GEMMs with float32 accumulation, and y[t] = sum over t's rows of gate *
 * Y[row] in float32, rounded to bf16 once (combine). The plan must have no forwarded copies on
 * this device (flat mode, or all destinations on one node). Backward gives dx, dW13, dW2 (bf16)
 * and d(gates) (float32, 0 for dropped slots). */
typedef struct {
  int d, f;      /* model width, expert hidden width */
  int S;         /* expert slots of the device (the placement's slots) */
  int k;         /* routing slots per token (gates [T, k]) */
  int gemm;      /* 0: one cuBLAS GEMM per expert; 1: cublasGemmGroupedBatchedEx (one call per phase) */
} carl_cuda_moe_t;

typedef struct {
  const uint16_t *w13; /* [S, 2f, d] bf16: rows 0..f-1 the gate projection W1, f..2f-1 the up W3 */
  const uint16_t *w2;  /* [S, d, f] bf16 */
} carl_cuda_moe_w_t;

typedef struct carl_cuda_moe_act carl_cuda_moe_act_t; /* activations and the device copy of the plan */

carl_status carl_cuda_moe_act_create(carl_cuda_t *g, carl_cuda_moe_act_t **A);
void carl_cuda_moe_act_free(carl_cuda_moe_act_t *A);
/* Upload the rows of device `dev` of the plan (and size the activations for them). */
carl_status carl_cuda_moe_plan(carl_cuda_t *g, const carl_cuda_moe_t *L, carl_cuda_moe_act_t *A, const carl_plan_t *plan,
                               int dev);
/* x [T, d] bf16, gates [T, k] float -> y [T, d] bf16 (overwritten; tokens without rows get 0). */
carl_status carl_cuda_moe_forward(carl_cuda_t *g, const carl_cuda_moe_t *L, const carl_cuda_moe_w_t *W,
                                  carl_cuda_moe_act_t *A, const uint16_t *x, const float *gates, uint16_t *y);
/* dy [T, d] bf16 -> dx [T, d] bf16, dW13 [S, 2f, d], dW2 [S, d, f] bf16 (overwritten), dgates [T, k]
 * float (overwritten). Uses the activations of the last forward. */
carl_status carl_cuda_moe_backward(carl_cuda_t *g, const carl_cuda_moe_t *L, const carl_cuda_moe_w_t *W,
                                   carl_cuda_moe_act_t *A, const float *gates, const uint16_t *dy, uint16_t *dx,
                                   uint16_t *dw13, uint16_t *dw2, float *dgates);
/* Rows of the device in the uploaded plan. */
int64_t carl_cuda_moe_rows(const carl_cuda_moe_act_t *A);

#ifdef __cplusplus
}
#endif
#endif
