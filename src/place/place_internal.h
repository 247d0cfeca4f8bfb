/* Internal interfaces of the placement files (not a public interface).
 *
 * Layering (calls go one way only):
 *   place.c (registry, option checks, dispatch) -> the algorithms -> place_util.c
 *   algorithms: baseline.c (contiguous, roundrobin), eplb.c (eplb, eplb-nodup), traffic.c, coact.c,
 *   smartmoe.c.
 * No algorithm calls another algorithm's code; place_util.c calls none of them. */
#ifndef CARL_PLACE_INTERNAL_H
#define CARL_PLACE_INTERNAL_H

#include "carl/place.h"

/* ---- shared helpers (place_util.c) --------------------------------------------------------------- */
/* order[0..n) = indices sorted by w descending, ties by lower index (a stable sort). */
carl_status carl__sort_desc(const double *w, int n, int32_t *order);
/* Replica counts for R physical slots: every expert once, then each extra replica to argmax
 * w/cnt among experts with cnt < cap (ties: lower index). cnt: [E]. Needs E <= R <= E * cap. */
void carl__replica_counts(const double *w, int E, int R, int cap, int32_t *cnt);
/* Pack the items of one node onto its devices: items sorted by load descending, each to the
 * lightest device with a free slot that does not hold the same expert; then pairwise swaps that
 * lower the larger load of the pair. item_e, item_w: [n]; dev: [n] out, in [0, P). */
carl_status carl__pack_devices(const int32_t *item_e, const double *item_w, int n, int P, int S, int passes, int32_t *dev);
/* The device load the algorithms aim to stay under: bound * mean, unless the device that holds the
 * heaviest item (with the lightest items beside it, per_device in all) already exceeds that; then
 * bound * that floor. item_w: [n]. */
double carl__device_cap(double bound, double mean, const double *item_w, int n, int per_device);

/* ---- algorithms (called by place.c only) ------------------------------------------------------- */
/* Each fills table [D, S] (D = t->devices) with expert ids, -1 for an empty slot. The inputs are
 * checked by carl_place_compute before the call (shapes, finite values, E <= D * S <= E * D, the
 * statistics the algorithm needs). */
typedef carl_status (*carl__place_fn)(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o,
                                      int S, int32_t *table);
carl_status carl__place_contiguous(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                                   int32_t *table);
carl_status carl__place_roundrobin(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                                   int32_t *table);
carl_status carl__place_eplb(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                             int32_t *table);
carl_status carl__place_eplb_nodup(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o,
                                   int S, int32_t *table);
carl_status carl__place_traffic(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                                int32_t *table);
carl_status carl__place_smartmoe(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o,
                                 int S, int32_t *table);
carl_status carl__place_coact(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                              int32_t *table);

#endif
