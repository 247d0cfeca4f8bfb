/* The local executor: every device in this process. Dispatch gathers rows by the plan, combine
 * reduces them in the plan's fixed order (no atomics: results do not depend on the thread count),
 * all-reduce is the identity, migration copies slots of the registered tensors. It is the
 * reference the process-crossing executors (mpi, nccl) are tested against. */
#include <stdlib.h>
#include <string.h>

#include "carl/core.h" /* CARL_OMP_MIN_WORK */
#include "exec/exec_impl.h"

static carl_status local_dispatch(carl_exec_t *ex, const carl_plan_t *p, const float *x, int d, float *xc) {
  (void)ex;
  const size_t row = sizeof(float) * (size_t)d;
#pragma omp parallel for schedule(static) if (p->n_send * d >= CARL_OMP_MIN_WORK)
  for (int64_t c = 0; c < p->n_send; c++) memcpy(xc + c * d, x + (int64_t)p->send_tok[c] * d, row);
  for (int64_t i = 0; i < p->n_fwd; i++) {
    const int64_t par = p->fwd_parent[i];
    if (par < 0) return carl_fail(CARL_ERR_STATE, "local executor: forwarded copy %lld has no parent in the plan of device %d",
                                  (long long)i, p->device);
    memcpy(xc + (p->n_send + i) * d, xc + par * d, row);
  }
  return CARL_OK;
}

static carl_status local_combine(carl_exec_t *ex, const carl_plan_t *p, float *yc, int d, float *y) {
  (void)ex;
  for (int64_t i = 0; i < p->n_fwd; i++) {
    const int64_t par = p->fwd_parent[i];
    if (par < 0) return carl_fail(CARL_ERR_STATE, "local executor: forwarded copy %lld has no parent in the plan of device %d",
                                  (long long)i, p->device);
    float *dst = yc + par * d;
    const float *s = yc + (p->n_send + i) * d;
    for (int j = 0; j < d; j++) dst[j] += s[j];
  }
#pragma omp parallel for schedule(static) if (p->T * d >= CARL_OMP_MIN_WORK)
  for (int64_t t = 0; t < p->T; t++) {
    float *yt = y + t * d;
    for (int64_t q = p->tok_off[t]; q < p->tok_off[t + 1]; q++) {
      const float *s = yc + p->tok_copy[q] * d;
      for (int j = 0; j < d; j++) yt[j] += s[j];
    }
  }
  return CARL_OK;
}

static carl_status local_allreduce(carl_exec_t *ex, double *v, int64_t n) {
  (void)ex, (void)v, (void)n;
  return CARL_OK;
}

static carl_status local_migrate(carl_exec_t *ex, const carl_placement_t *old, const carl_migration_t *m,
                                 const carl_exec_tensor_t *tensors, int n) {
  const int S = old->slots;
  for (int i = 0; i < n; i++) {
    const carl_exec_tensor_t *tt = &tensors[i];
    const size_t bytes = sizeof(float) * (size_t)tt->numel * (size_t)old->D * (size_t)S;
    float *before = malloc(bytes);
    if (!before) return carl_fail(CARL_ERR_NOMEM, "local executor: out of memory for migration (%zu bytes)", bytes);
    memcpy(before, tt->base, bytes);
    for (int64_t q = 0; q < m->n_moves; q++) {
      const carl_move_t *mv = &m->moves[q];
      int j = 0;
      while (j < S && old->slot_expert[mv->src * S + j] != mv->expert) j++;
      if (j == S) {
        free(before);
        return carl_fail(CARL_ERR_INVALID, "migrate: expert %d is not on device %d in the old placement", mv->expert,
                         mv->src);
      }
      memcpy(tt->base + ((int64_t)mv->dst * S + mv->slot) * tt->numel, before + ((int64_t)mv->src * S + j) * tt->numel,
             sizeof(float) * (size_t)tt->numel);
    }
    free(before);
  }
  ex->migrated_bytes += m->total_bytes;
  return CARL_OK;
}

static const carl__exec_ops_t local_ops = {"local", 1, local_dispatch, local_combine, local_allreduce, local_migrate, NULL, NULL, NULL};

carl_status carl_exec_local_create(carl_exec_t **out) { return carl__exec_new(&local_ops, out); }
