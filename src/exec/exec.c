/* The executor interface (carl/exec.h): argument checks shared by every executor, then its table. */
#include <stdlib.h>

#include "exec/exec_impl.h"

carl_status carl__exec_new(const carl__exec_ops_t *ops, carl_exec_t **out) {
  carl_exec_t *ex = calloc(1, sizeof *ex);
  if (!ex) return carl_fail(CARL_ERR_NOMEM, "executor '%s': out of memory", ops->name);
  ex->ops = ops;
  ex->size = 1;
  *out = ex;
  return CARL_OK;
}

void carl_exec_free(carl_exec_t *ex) {
  if (!ex) return;
  if (ex->ops->free) ex->ops->free(ex);
  free(ex);
}

const char *carl_exec_name(const carl_exec_t *ex) { return ex->ops->name; }
int carl_exec_moves_data(const carl_exec_t *ex) { return ex->ops->moves_data; }
double carl_exec_migrated_bytes(const carl_exec_t *ex) { return ex->migrated_bytes; }
int carl_exec_rank(const carl_exec_t *ex) { return ex->rank; }
int carl_exec_size(const carl_exec_t *ex) { return ex->size; }

carl_status carl_exec_allgather(carl_exec_t *ex, void *all, size_t bytes_each) {
  CARL_ASSERT(ex);
  if (bytes_each > 0 && !all) return carl_fail(CARL_ERR_INVALID, "all-gather: NULL buffer");
  return ex->ops->allgather && bytes_each > 0 ? ex->ops->allgather(ex, all, bytes_each) : CARL_OK;
}

carl_status carl_exec_allreduce_f(carl_exec_t *ex, float *v, int64_t n) {
  CARL_ASSERT(ex);
  if (n < 0 || (n > 0 && !v)) return carl_fail(CARL_ERR_INVALID, "all-reduce: %lld values at %p", (long long)n, (void *)v);
  return ex->ops->allreduce_f && n > 0 ? ex->ops->allreduce_f(ex, v, n) : CARL_OK;
}

static carl_status exec_check(const carl_exec_t *ex, const carl_plan_t *plan, int d, const void *a, const void *b) {
  CARL_ASSERT(ex && plan);
  if (!ex->ops->moves_data) return CARL_OK;
  if (!plan->has_rows) return carl_fail(CARL_ERR_STATE, "executor '%s': the plan has no row lists", ex->ops->name);
  if (d < 1) return carl_fail(CARL_ERR_INVALID, "executor '%s': row width %d", ex->ops->name, d);
  if ((plan->T > 0 && !a) || (plan->n_send + plan->n_fwd > 0 && !b))
    return carl_fail(CARL_ERR_INVALID, "executor '%s': a buffer is NULL", ex->ops->name);
  return CARL_OK;
}

carl_status carl_exec_dispatch(carl_exec_t *ex, const carl_plan_t *plan, const float *x, int d, float *xc) {
  CARL_TRY(exec_check(ex, plan, d, x, xc));
  return ex->ops->dispatch(ex, plan, x, d, xc);
}

carl_status carl_exec_combine(carl_exec_t *ex, const carl_plan_t *plan, float *yc, int d, float *y) {
  CARL_TRY(exec_check(ex, plan, d, y, yc));
  return ex->ops->combine(ex, plan, yc, d, y);
}

carl_status carl_exec_dispatch_backward(carl_exec_t *ex, const carl_plan_t *plan, float *dxc, int d, float *dx) {
  return carl_exec_combine(ex, plan, dxc, d, dx);
}

carl_status carl_exec_combine_backward(carl_exec_t *ex, const carl_plan_t *plan, const float *dy, int d, float *dyc) {
  return carl_exec_dispatch(ex, plan, dy, d, dyc);
}

carl_status carl_exec_allreduce(carl_exec_t *ex, double *v, int64_t n) {
  CARL_ASSERT(ex);
  if (n < 0 || (n > 0 && !v)) return carl_fail(CARL_ERR_INVALID, "all-reduce: %lld values at %p", (long long)n, (void *)v);
  return ex->ops->allreduce(ex, v, n);
}

carl_status carl_exec_migrate(carl_exec_t *ex, const carl_placement_t *old, const carl_migration_t *m,
                              const carl_exec_tensor_t *tensors, int n) {
  CARL_ASSERT(ex && old && m);
  if (n < 0 || (n > 0 && !tensors)) return carl_fail(CARL_ERR_INVALID, "migrate: %d tensors", n);
  for (int i = 0; i < n; i++)
    if (ex->ops->moves_data && (!tensors[i].base || tensors[i].numel < 1))
      return carl_fail(CARL_ERR_INVALID, "migrate: tensor %d is empty", i);
  for (int i = 0; i < n; i++) {
    const carl_exec_tensor_t *t = &tensors[i];
    if (t->nslots < 0 || (t->nslots > 0 && (ex->size < 2 || t->nslots != old->slots ||
                                           t->first_slot != (int64_t)ex->rank * old->slots)))
      return carl_fail(CARL_ERR_INVALID, "migrate: tensor %d holds slots %lld..%lld; a tensor of some slots only must be "
                       "the %d slots of this process's device %d under a multi-process executor", i,
                       (long long)t->first_slot, (long long)(t->first_slot + t->nslots - 1), old->slots, ex->rank);
  }
  for (int64_t i = 0; i < m->n_moves; i++) {
    const carl_move_t *mv = &m->moves[i];
    if (mv->src < 0 || mv->src >= old->D || mv->dst < 0 || mv->dst >= old->D || mv->slot < 0 ||
        mv->slot >= old->slots || mv->expert < 0 || mv->expert >= old->E)
      return carl_fail(CARL_ERR_INVALID, "migrate: move %lld (expert %d, %d -> %d slot %d) is outside the placement",
                       (long long)i, mv->expert, mv->src, mv->dst, mv->slot);
  }
  return ex->ops->migrate(ex, old, m, tensors, n);
}
