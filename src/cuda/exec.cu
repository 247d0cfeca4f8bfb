/* The cuda executor (carl/cuda.h): the local executor's semantics (carl/exec.h) on device
 * memory. Dispatch gathers rows by the plan, combine adds each forwarded copy into its parent in
 * ascending forwarded index and then each token's copies in the plan's order, so every float sum
 * runs in the local executor's order and the results are the same bits. CPU reference:
 * src/exec/local.c. */
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_internal.h"
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

static carl_status cx_dispatch(carl_exec_t *ex, const carl_plan_t *p, const float *x, int d, float *xc) {
  carl_cuda_t *g = ((cuda_exec_t *)ex->state)->g;
  for (int64_t i = 0; i < p->n_fwd; i++)
    if (p->fwd_parent[i] < 0)
      return carl_fail(CARL_ERR_STATE, "cuda executor: forwarded copy %lld has no parent in the plan of device %d",
                       (long long)i, p->device);
  const size_t b1 = sizeof(int32_t) * (size_t)p->n_send, b2 = sizeof(int64_t) * (size_t)p->n_fwd;
  char *dev, *pin;
  CARL_TRY(carl__cuda_scratch(g, b1 + b2 + 16, (void **)&dev));
  CARL_TRY(carl__cuda_pinned(g, b1 + b2 + 16, (void **)&pin));
  const size_t o2 = (b1 + 7) & ~(size_t)7;
  memcpy(pin, p->send_tok, b1);
  memcpy(pin + o2, p->fwd_parent, b2);
  CARL_CUDA_TRY(cudaMemcpyAsync(dev, pin, o2 + b2, cudaMemcpyHostToDevice, g->stream));
  if (p->n_send > 0) {
    ex_gather_kernel<<<carl__cuda_blocks(g, p->n_send * d, 256), 256, 0, g->stream>>>(xc, x, (const int32_t *)dev,
                                                                                      p->n_send, d);
    CARL_CUDA_LAUNCHED();
  }
  if (p->n_fwd > 0) {
    ex_gather64_kernel<<<carl__cuda_blocks(g, p->n_fwd * d, 256), 256, 0, g->stream>>>(
        xc + p->n_send * d, xc, (const int64_t *)(dev + o2), p->n_fwd, d);
    CARL_CUDA_LAUNCHED();
  }
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream)); /* the pinned staging is reused by the next call */
  return CARL_OK;
}

static carl_status cx_combine(carl_exec_t *ex, const carl_plan_t *p, float *yc, int d, float *y) {
  carl_cuda_t *g = ((cuda_exec_t *)ex->state)->g;
  /* forwarded copies grouped by parent, ascending forwarded index inside a parent */
  int64_t np = 0;
  int64_t *cnt = (int64_t *)calloc((size_t)p->n_send + 1, sizeof *cnt);
  if (!cnt) return carl_fail(CARL_ERR_NOMEM, "cuda executor: out of host memory");
  for (int64_t i = 0; i < p->n_fwd; i++) {
    const int64_t par = p->fwd_parent[i];
    if (par < 0 || par >= p->n_send) {
      free(cnt);
      return carl_fail(CARL_ERR_STATE, "cuda executor: forwarded copy %lld has no parent in the plan of device %d",
                       (long long)i, p->device);
    }
    np += cnt[par]++ == 0;
  }
  const size_t nb = sizeof(int64_t) * ((size_t)np + ((size_t)np + 1) + (size_t)p->n_fwd + ((size_t)p->T + 1) + (size_t)p->n_send);
  char *dev, *pin;
  carl_status st = carl__cuda_pinned(g, nb + 64, (void **)&pin);
  if (st == CARL_OK) st = carl__cuda_scratch(g, nb + 64, (void **)&dev);
  if (st != CARL_OK) {
    free(cnt);
    return st;
  }
  int64_t *parent = (int64_t *)pin, *coff = parent + np, *child = coff + np + 1, *tok_off = child + p->n_fwd,
          *tok_copy = tok_off + p->T + 1;
  /* parents in ascending copy index; children in ascending forwarded index */
  int64_t *start = (int64_t *)malloc(sizeof(int64_t) * ((size_t)p->n_send + 1));
  if (!start) {
    free(cnt);
    return carl_fail(CARL_ERR_NOMEM, "cuda executor: out of host memory");
  }
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
  for (int64_t i = 0; i < p->n_fwd; i++) child[start[p->fwd_parent[i]]++] = i;
  free(start);
  free(cnt);
  memcpy(tok_off, p->tok_off, sizeof(int64_t) * ((size_t)p->T + 1));
  memcpy(tok_copy, p->tok_copy, sizeof(int64_t) * (size_t)p->n_send);
  CARL_CUDA_TRY(cudaMemcpyAsync(dev, pin, nb, cudaMemcpyHostToDevice, g->stream));
  const int64_t *dparent = (const int64_t *)dev, *dcoff = dparent + np, *dchild = dcoff + np + 1,
                *dtok_off = dchild + p->n_fwd, *dtok_copy = dtok_off + p->T + 1;
  if (np > 0) {
    ex_fold_kernel<<<carl__cuda_blocks(g, np * d, 256), 256, 0, g->stream>>>(yc, dparent, dcoff, dchild, np, p->n_send, d);
    CARL_CUDA_LAUNCHED();
  }
  if (p->T > 0) {
    ex_combine_kernel<<<carl__cuda_blocks(g, p->T * d, 256), 256, 0, g->stream>>>(y, yc, dtok_off, dtok_copy, p->T, d);
    CARL_CUDA_LAUNCHED();
  }
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
  return CARL_OK;
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
