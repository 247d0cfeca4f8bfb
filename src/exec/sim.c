/* The sim executor: the cost model's view of a step. It moves no data (buffers may be NULL),
 * all-reduces nothing (one process holds every device's statistics) and counts migrated bytes. */
#include "exec/exec_impl.h"

static carl_status sim_dispatch(carl_exec_t *ex, const carl_plan_t *plan, const float *x, int d, float *xc) {
  (void)ex, (void)plan, (void)x, (void)d, (void)xc;
  return CARL_OK;
}

static carl_status sim_combine(carl_exec_t *ex, const carl_plan_t *plan, float *yc, int d, float *y) {
  (void)ex, (void)plan, (void)yc, (void)d, (void)y;
  return CARL_OK;
}

static carl_status sim_allreduce(carl_exec_t *ex, double *v, int64_t n) {
  (void)ex, (void)v, (void)n;
  return CARL_OK;
}

static carl_status sim_migrate(carl_exec_t *ex, const carl_placement_t *old, const carl_migration_t *m,
                               const carl_exec_tensor_t *tensors, int n) {
  (void)old, (void)tensors, (void)n;
  ex->migrated_bytes += m->total_bytes;
  return CARL_OK;
}

static const carl__exec_ops_t sim_ops = {"sim", 0, sim_dispatch, sim_combine, sim_allreduce, sim_migrate, NULL, NULL, NULL};

carl_status carl_exec_sim_create(carl_exec_t **out) { return carl__exec_new(&sim_ops, out); }
