/* Internal: the function table behind carl_exec_t (carl/exec.h). An executor is one file (or one
 * folder: mpi/, cuda/, nccl/) that fills a table and a create function. */
#ifndef CARL_EXEC_IMPL_H
#define CARL_EXEC_IMPL_H

#include "carl/exec.h"

typedef struct {
  const char *name;
  int moves_data;
  carl_status (*dispatch)(carl_exec_t *ex, const carl_plan_t *plan, const float *x, int d, float *xc);
  carl_status (*combine)(carl_exec_t *ex, const carl_plan_t *plan, float *yc, int d, float *y);
  carl_status (*allreduce)(carl_exec_t *ex, double *v, int64_t n);
  carl_status (*migrate)(carl_exec_t *ex, const carl_placement_t *old, const carl_migration_t *m,
                         const carl_exec_tensor_t *tensors, int n);
  void (*free)(carl_exec_t *ex); /* may be NULL */
  /* one process (rank 0 of 1) when NULL: allgather copies nothing, allreduce_f is the identity */
  carl_status (*allgather)(carl_exec_t *ex, void *all, size_t bytes_each);
  carl_status (*allreduce_f)(carl_exec_t *ex, float *v, int64_t n);
} carl__exec_ops_t;

struct carl_exec {
  const carl__exec_ops_t *ops;
  double migrated_bytes;
  int rank, size; /* this process among the executor's processes (0 of 1 unless set by create) */
  void *state; /* owned by the executor */
};

carl_status carl__exec_new(const carl__exec_ops_t *ops, carl_exec_t **out);

#endif
