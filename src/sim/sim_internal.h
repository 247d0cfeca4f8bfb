/* Internals of the simulator shared between the files of src/sim and the tests. */
#ifndef CARL_SIM_INTERNAL_H
#define CARL_SIM_INTERNAL_H

#include "carl/sim.h"

/* New placement for one layer from the accumulated traffic A [nodes, E] (tokens from node n routed
 * to expert e), and the time of the migration it needs (seconds; expert_bytes per moved copy). */
carl_status carl__sim_refresh(const carl_topo_t *topo, const carl_placement_t *old, const double *A /* [N, E] */,
                              double expert_bytes, carl_placement_t *out, double *migrate_s);

/* Migration time from old to new: every (expert, device) pair of new that old lacks receives one copy
 * (expert_bytes) from the nearest device that held the expert in old; the time is the maximum over
 * devices of sum over classes of (bytes sent or received)/B + copies * latency. */
double carl__sim_migration_s(const carl_topo_t *topo, const carl_placement_t *old, const carl_placement_t *np,
                             double expert_bytes);

#endif
