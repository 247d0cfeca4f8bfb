/* Internals of the simulator shared between the files of src/sim and the tests. */
#ifndef CARL_SIM_INTERNAL_H
#define CARL_SIM_INTERNAL_H

#include "carl/place.h"
#include "carl/sim.h"

/* New placement for one layer from the accumulated statistics (source-node x expert traffic and
 * expert loads, EMA) by the `traffic` algorithm with the old placement's slots per device, and the
 * time of the migration (carl_place_migrate, devices relabelled inside nodes to keep experts where
 * they are; expert_bytes per moved copy). */
carl_status carl__sim_refresh(const carl_topo_t *topo, const carl_placement_t *old, const carl_place_stats_t *stats,
                              int layer, double expert_bytes, carl_placement_t *out, double *migrate_s);

#endif
