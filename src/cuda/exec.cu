/* The cuda executor (carl/cuda.h): the local executor's semantics (carl/exec.h) on device
 * memory. Dispatch gathers rows by the plan, combine adds each forwarded copy into its parent in
 * ascending forwarded index and then each token's copies in the plan's order, so every float sum
 * runs in the local executor's order and the results are the same bits. The steps are
 * exposed over ranges of a plan (cuda/exec_internal.h) for the nccl executor. CPU reference:
 * src/exec/local.c. */
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.h"
#include "cuda/exec_internal.h"
extern "C" {
#include "exec/exec_impl.h"
}

typedef struct {
  carl_cuda_t *g;
} cuda_exec_t;

__global__ void ex_gather_kernel(float *dst, const float *src, const int32_t *idx, int64_t n, int d) {
  const int64_t total = n * d;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / d, j = i - r * d;
    dst[i] = src[(int64_t)idx[r] * d + j];
  }
}

__global__ void ex_gather64_kernel(float *dst, const float *src, const int64_t *idx, int64_t n, int d) {
  const int64_t total = n * d;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / d, j = i - r * d;
    dst[i] = src[idx[r] * d + j];
  }
}

/* parents[p] += children in order: rows child[coff[p] .. coff[p+1]) of base (n_send + i) */
__global__ void ex_fold_kernel(float *yc, const int64_t *parent, const int64_t *coff, const int64_t *child, int64_t np,
                               int64_t n_send, int d) {
  const int64_t total = np * d;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t p = i / d, j = i - p * d;
    float acc = yc[parent[p] * d + j];
    for (int64_t q = coff[p]; q < coff[p + 1]; q++) acc += yc[(n_send + child[q]) * d + j];
    yc[parent[p] * d + j] = acc;
  }
}

__global__ void ex_combine_kernel(float *y, const float *yc, const int64_t *tok_off, const int64_t *tok_copy, int64_t T,
                                  int d) {
  const int64_t total = T * d;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = i / d, j = i - t * d;
    float acc = y[i];
    for (int64_t q = tok_off[t]; q < tok_off[t + 1]; q++) acc += yc[tok_copy[q] * d + j];
    y[i] = acc;
  }
}

extern "C" carl_status carl__cuda_exec_gather(carl_cuda_t *g, const carl_plan_t *p, const float *x, int64_t t0, int64_t t1,
                                              int64_t c0, int64_t c1, int64_t f0, int64_t f1, int d, float *xc) {
  const int64_t nc = c1 - c0, nf = f1 - f0;
  if (nc <= 0 && nf <= 0) return CARL_OK;
  const size_t b1 = sizeof(int32_t) * (size_t)(nc > 0 ? nc : 0), b2 = sizeof(int64_t) * (size_t)(nf > 0 ? nf : 0);
  const size_t o2 = (b1 + 7) & ~(size_t)7;
  char *dev, *pin;
  CARL_TRY(carl__cuda_scratch(g, o2 + b2 + 16, (void **)&dev));
  CARL_TRY(carl__cuda_pinned(g, o2 + b2 + 16, (void **)&pin));
  int32_t *tok = (int32_t *)pin;
  for (int64_t c = c0; c < c1; c++) {
    const int64_t t = p->send_tok[c];
    if (t < t0 || t >= t1)
      return carl_fail(CARL_ERR_STATE, "executor on the GPU: copy %lld is of token %lld, outside this device's tokens "
                       "%lld..%lld", (long long)c, (long long)t, (long long)t0, (long long)(t1 - 1));
    tok[c - c0] = (int32_t)(t - t0);
  }
  for (int64_t i = f0; i < f1; i++)
    if (p->fwd_parent[i] < 0 || p->fwd_parent[i] >= p->n_send)
      return carl_fail(CARL_ERR_STATE, "executor on the GPU: forwarded copy %lld has no parent in the plan of device %d",
                       (long long)i, p->device);
  if (nf > 0) memcpy(pin + o2, p->fwd_parent + f0, b2);
  CARL_CUDA_TRY(cudaMemcpyAsync(dev, pin, o2 + b2, cudaMemcpyHostToDevice, g->stream));
  if (nc > 0) {
    ex_gather_kernel<<<carl__cuda_blocks(g, nc * d, 256), 256, 0, g->stream>>>(xc + c0 * d, x, (const int32_t *)dev, nc, d);
    CARL_CUDA_LAUNCHED();
  }
  if (nf > 0) {
    ex_gather64_kernel<<<carl__cuda_blocks(g, nf * d, 256), 256, 0, g->stream>>>(
        xc + (p->n_send + f0) * d, xc, (const int64_t *)(dev + o2), nf, d);
    CARL_CUDA_LAUNCHED();
  }
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream)); /* the pinned staging is reused by the next call */
  return CARL_OK;
}

extern "C" carl_status carl__cuda_exec_fold(carl_cuda_t *g, const carl_plan_t *p, int64_t f0, int64_t f1, int d, float *yc) {
  if (f1 <= f0) return CARL_OK;
  /* forwarded copies grouped by parent, ascending forwarded index inside a parent */
  int64_t np = 0;
  int64_t *cnt = (int64_t *)calloc((size_t)p->n_send + 1, sizeof *cnt);
  if (!cnt) return carl_fail(CARL_ERR_NOMEM, "executor on the GPU: out of host memory");
  for (int64_t i = f0; i < f1; i++) {
    const int64_t par = p->fwd_parent[i];
    if (par < 0 || par >= p->n_send) {
      free(cnt);
      return carl_fail(CARL_ERR_STATE, "executor on the GPU: forwarded copy %lld has no parent in the plan of device %d",
                       (long long)i, p->device);
    }
    np += cnt[par]++ == 0;
  }
  const size_t nb = sizeof(int64_t) * ((size_t)np + ((size_t)np + 1) + (size_t)(f1 - f0));
  char *dev, *pin;
  carl_status st = carl__cuda_pinned(g, nb + 64, (void **)&pin);
  if (st == CARL_OK) st = carl__cuda_scratch(g, nb + 64, (void **)&dev);
  int64_t *start = st == CARL_OK ? (int64_t *)malloc(sizeof(int64_t) * ((size_t)p->n_send + 1)) : NULL;
  if (st == CARL_OK && !start) st = carl_fail(CARL_ERR_NOMEM, "executor on the GPU: out of host memory");
  if (st != CARL_OK) {
    free(cnt);
    return st;
  }
  int64_t *parent = (int64_t *)pin, *coff = parent + np, *child = coff + np + 1;
  /* parents in ascending copy index; children in ascending forwarded index */
  int64_t q = 0, pi = 0;
  for (int64_t c = 0; c < p->n_send; c++) {
    start[c] = q;
    if (cnt[c]) {
      parent[pi] = c;
      coff[pi++] = q;
      q += cnt[c];
    }
  }
  coff[np] = q;
  for (int64_t i = f0; i < f1; i++) child[start[p->fwd_parent[i]]++] = i;
  free(start);
  free(cnt);
  CARL_CUDA_TRY(cudaMemcpyAsync(dev, pin, nb, cudaMemcpyHostToDevice, g->stream));
  const int64_t *dparent = (const int64_t *)dev, *dcoff = dparent + np, *dchild = dcoff + np + 1;
  ex_fold_kernel<<<carl__cuda_blocks(g, np * d, 256), 256, 0, g->stream>>>(yc, dparent, dcoff, dchild, np, p->n_send, d);
  CARL_CUDA_LAUNCHED();
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
  return CARL_OK;
}

extern "C" carl_status carl__cuda_exec_sum(carl_cuda_t *g, const carl_plan_t *p, int64_t t0, int64_t t1, int d,
                                           const float *yc, float *y) {
  if (t1 <= t0) return CARL_OK;
  const int64_t q0 = p->tok_off[t0], nq = p->tok_off[t1] - q0;
  const size_t nb = sizeof(int64_t) * ((size_t)(t1 - t0 + 1) + (size_t)nq);
  char *dev, *pin;
  CARL_TRY(carl__cuda_pinned(g, nb + 64, (void **)&pin));
  CARL_TRY(carl__cuda_scratch(g, nb + 64, (void **)&dev));
  int64_t *tok_off = (int64_t *)pin, *tok_copy = tok_off + (t1 - t0 + 1);
  for (int64_t t = t0; t <= t1; t++) tok_off[t - t0] = p->tok_off[t] - q0;
  memcpy(tok_copy, p->tok_copy + q0, sizeof(int64_t) * (size_t)nq);
  CARL_CUDA_TRY(cudaMemcpyAsync(dev, pin, nb, cudaMemcpyHostToDevice, g->stream));
  const int64_t *dtok_off = (const int64_t *)dev, *dtok_copy = dtok_off + (t1 - t0 + 1);
  ex_combine_kernel<<<carl__cuda_blocks(g, (t1 - t0) * d, 256), 256, 0, g->stream>>>(y, yc, dtok_off, dtok_copy, t1 - t0, d);
  CARL_CUDA_LAUNCHED();
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
  return CARL_OK;
}

extern "C" int carl__cuda_device_of(const carl_cuda_t *g) { return g->device; }

static carl_status cx_dispatch(carl_exec_t *ex, const carl_plan_t *p, const float *x, int d, float *xc) {
  carl_cuda_t *g = ((cuda_exec_t *)ex->state)->g;
  return carl__cuda_exec_gather(g, p, x, 0, p->T, 0, p->n_send, 0, p->n_fwd, d, xc);
}

/* forwarded copies into their parents (second hop back), then each token's copies */
static carl_status cx_combine(carl_exec_t *ex, const carl_plan_t *p, float *yc, int d, float *y) {
  carl_cuda_t *g = ((cuda_exec_t *)ex->state)->g;
  CARL_TRY(carl__cuda_exec_fold(g, p, 0, p->n_fwd, d, yc));
  return carl__cuda_exec_sum(g, p, 0, p->T, d, yc, y);
}

static carl_status cx_allreduce(carl_exec_t *ex, double *v, int64_t n) {
  (void)ex, (void)v, (void)n;
  return CARL_OK;
}

static carl_status cx_migrate(carl_exec_t *ex, const carl_placement_t *old, const carl_migration_t *m,
                              const carl_exec_tensor_t *tensors, int n) {
  carl_cuda_t *g = ((cuda_exec_t *)ex->state)->g;
  const int S = old->slots;
  for (int i = 0; i < n; i++) {
    const carl_exec_tensor_t *tt = &tensors[i];
    const size_t bytes = sizeof(float) * (size_t)tt->numel * (size_t)old->D * (size_t)S;
    float *before;
    CARL_TRY(carl__cuda_scratch(g, bytes, (void **)&before));
    CARL_CUDA_TRY(cudaMemcpyAsync(before, tt->base, bytes, cudaMemcpyDeviceToDevice, g->stream));
    for (int64_t q = 0; q < m->n_moves; q++) {
      const carl_move_t *mv = &m->moves[q];
      int j = 0;
      while (j < S && old->slot_expert[mv->src * S + j] != mv->expert) j++;
      if (j == S)
        return carl_fail(CARL_ERR_INVALID, "migrate: expert %d is not on device %d in the old placement", mv->expert, mv->src);
      CARL_CUDA_TRY(cudaMemcpyAsync(tt->base + ((int64_t)mv->dst * S + mv->slot) * tt->numel,
                                    before + ((int64_t)mv->src * S + j) * tt->numel, sizeof(float) * (size_t)tt->numel,
                                    cudaMemcpyDeviceToDevice, g->stream));
    }
  }
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
  ex->migrated_bytes += m->total_bytes;
  return CARL_OK;
}

static void cx_free(carl_exec_t *ex) { free(ex->state); }

static const carl__exec_ops_t cuda_ops = {"cuda", 1, cx_dispatch, cx_combine, cx_allreduce, cx_migrate, cx_free, NULL, NULL};

extern "C" carl_status carl_exec_cuda_create(carl_cuda_t *g, carl_exec_t **out) {
  if (!g || !out) return carl_fail(CARL_ERR_INVALID, "carl_exec_cuda_create: NULL argument");
  cuda_exec_t *st = (cuda_exec_t *)calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "cuda executor: out of memory");
  st->g = g;
  carl_status s = carl__exec_new(&cuda_ops, out);
  if (s != CARL_OK) {
    free(st);
    return s;
  }
  (*out)->state = st;
  return CARL_OK;
}
