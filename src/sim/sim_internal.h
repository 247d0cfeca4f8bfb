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

/* Step time of one layer's decision (carl_steptime_load + carl_steptime_layer with the config's
 * step_time options on cost->dispatch, the layer's most recent plan): adds to acc the slowest
 * device's compute, the mean compute and the layer time, in milliseconds. Does nothing when the
 * config has no step_time. */
carl_status carl__sim_steptime(const carl_sim_config_t *cfg, const carl_topo_t *topo, const carl_placement_t *pl,
                               const int32_t *experts /* [T, k] */, const int32_t *src /* [T] */, int64_t T, int k,
                               const carl_cost_t *cost, double acc[3]);

#endif
