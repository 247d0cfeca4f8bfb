/* Internal to the executors that use MPI (src/dist/exec_mpi.c, src/nccl/exec_nccl.c): the checking
 * macro every MPI call goes through. Include after <mpi.h>, in builds with MPI only. */
#ifndef CARL_DIST_MPI_INTERNAL_H
#define CARL_DIST_MPI_INTERNAL_H

#include "carl/core.h"

/* CARL_ERR_IO "MPI: <call> failed: <MPI's error string>" */
carl_status carl__mpi_fail(int rc, const char *call);

#define CARL_MPI(call)                                                   \
  do {                                                                   \
    int carl__rc = (call);                                               \
    if (carl__rc != MPI_SUCCESS) return carl__mpi_fail(carl__rc, #call); \
  } while (0)

#endif
