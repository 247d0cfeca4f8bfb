/* Internal to src/cuda: the arguments of the fused selection kernel (route_select.cu), filled by
 * the routing driver (route.cu) from a router's carl_select_t. */
#ifndef CARL_CUDA_ROUTE_INTERNAL_H
#define CARL_CUDA_ROUTE_INTERNAL_H

#include "cuda/cuda_internal.h"

typedef struct {
  const float *logits; /* [T, E] */
  int64_t T;
  int E, k;
  int score;    /* 0 softmax, 1 sigmoid */
  int renorm;
  int need_lse; /* the z-loss needs logsumexp (for sigmoid scores too) */
  int want_p;   /* accumulate P_e sums */
  int want_z;   /* accumulate logsumexp^2 */
  int sel_mode; /* selection on 0: z, 1: s, 2: s + bias */
  int exact;    /* scores by the CPU's operations in the CPU's order (the selection depends on them) */
  const float *bias;       /* [rows, E] (sel_mode 2) */
  int bias_by_src;         /* row src(t); else row 0 */
  const int32_t *src;      /* [T] or NULL: t * D / T */
  int D;
  int need_src;
  int grouped, G, gsize, gshift, M, pg; /* G contiguous groups of gsize = 16 << gshift experts */
  const float *bonus;      /* [rows, G] or NULL: row dev_node[src(t)] */
  const int32_t *dev_node; /* [D] */
  int gate_order;
  const int32_t *exp_dev;  /* [E] device of each expert, or NULL: no hop counts */
  int hop_shared;          /* D * D counters fit in shared memory */
  int32_t *experts;        /* [T, k] */
  float *weights;          /* [T, k] */
  float *ppart;            /* [blocks, E] */
  double *zpart;           /* [blocks] */
  unsigned long long *load; /* [E] */
  unsigned long long *hop;  /* [D, D] */
  unsigned long long *bad;  /* [2]: first token with non-finite logits, first token with src out of range */
  double *psum;             /* [E] */
  double *zsum;             /* [1] */
  int work_floats;          /* shared work area per block */
} carl__selargs_t;

#ifdef __cplusplus
extern "C" {
#endif
/* Blocks the selection kernel runs with for E experts (persistent grid), its shared memory. */
carl_status carl__cuda_select_grid(carl_cuda_t *g, carl__selargs_t *a, int *blocks, size_t *smem);
/* Launch the selection and the statistics reduction on g's stream (a->ppart, a->zpart sized by
 * carl__cuda_select_grid's blocks; load, hop, bad zeroed by the caller, bad to all ones). */
carl_status carl__cuda_select(carl_cuda_t *g, const carl__selargs_t *a, int blocks, size_t smem);
/* 1 when the kernel has an instance for E experts. */
int carl__cuda_select_fits_E(int E);
#ifdef __cplusplus
}
#endif

#endif
