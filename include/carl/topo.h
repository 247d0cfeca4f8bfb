/* carl/topo.h: cluster topology (nodes, devices, link classes) and expert placement.
 *
 * Usage:
 *   carl_topo_t topo;
 *   CARL_TRY(carl_topo_load("configs/topologies/h800-2x8.json", &topo));
 *   int cls = carl_topo_link(&topo, a, b);        // CARL_LINK_SELF / INTRA / RACK / INTER
 *   double c = carl_topo_cost(&topo, a, b);       // normalised copy cost, ALGORITHMS.md section 1
 *
 *   carl_placement_t pl;
 *   CARL_TRY(carl_placement_contiguous(&pl, E, topo.devices));
 *   // or carl_placement_load("p.json", &topo, E, &pl)
 *   carl_placement_free(&pl);
 *
 * Topology JSON: {"nodes":2,"devices_per_node":8,
 *   "links":{"intra":{"GBps":160,"latency_us":3},"inter":{"GBps":50,"latency_us":10},
 *            "rack":{"GBps":..,"latency_us":..}},            (optional level)
 *   "nodes_per_rack": 4,                                        (with "rack")
 *   "nics_per_node": 8,                                         (optional; default one per device)
 *   "flops": {"device": "H800 SXM5", "peak_TFLOPS": 989.4, "efficiency": 0.6},
 *                                                               (optional; required by step time)
 *   "name": "h800-2x8", "comment": "..."}                       (optional)
 * Bandwidths are per device and per direction, in GB/s (1e9 bytes/s); latencies in microseconds.
 * With nics_per_node, links.inter.GBps (and links.rack.GBps) is the bandwidth of ONE NIC and a
 * device gets GBps * nics_per_node / devices_per_node: that is what link[INTER/RACK].GBps holds.
 * flops: the compute rate of one device (all devices of a topology are of one class): the dense
 * peak in TFLOPS at the precision of the expert GEMMs times the achieved fraction `efficiency`;
 * the library stores peak * efficiency * 1e12 in flops (0 when the file has no "flops").
 * Unknown keys are errors. Format and error list: docs/topologies.md.
 * Ownership: carl_topo_t is plain data (no heap). carl_placement_t owns its arrays.
 */
#ifndef CARL_TOPO_H
#define CARL_TOPO_H

#include "carl/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Link classes, ordered from cheapest to dearest. */
typedef enum { CARL_LINK_SELF = 0, CARL_LINK_INTRA = 1, CARL_LINK_RACK = 2, CARL_LINK_INTER = 3 } carl_link_class;
#define CARL_NLINK 4
/* Valid ranges of a topology file's numbers (larger or smaller ones would give inf/0 costs):
 * GBps in [1e-6, 1e6], latency_us in [0, 1e9], flops.peak_TFLOPS in [1e-6, 1e9]. */
#define CARL_TOPO_GBPS_MIN 1e-6
#define CARL_TOPO_GBPS_MAX 1e6
#define CARL_TOPO_LATENCY_MAX_US 1e9
#define CARL_TOPO_TFLOPS_MIN 1e-6
#define CARL_TOPO_TFLOPS_MAX 1e9

typedef struct {
  double GBps;       /* bandwidth per device, 1e9 bytes/s; 0 for an absent class */
  double latency_us; /* per message */
} carl_link_t;

typedef struct {
  int nodes;
  int devices_per_node;
  int devices;         /* nodes * devices_per_node */
  int nodes_per_rack;  /* 0: no rack level (RACK class unused) */
  int nics_per_node;   /* 0: one NIC per device */
  carl_link_t link[CARL_NLINK]; /* indexed by carl_link_class; link[SELF] is free */
  double flops;        /* FLOP/s of one device for the expert GEMMs (peak x efficiency); 0: not given */
  double peak_TFLOPS;  /* as in the file (0: not given) */
  double efficiency;   /* fraction of the peak, (0, 1] (0: not given) */
  char device[32];     /* device class name, e.g. "H800 SXM5" ("" when not given) */
  char name[64];
} carl_topo_t;

const char *carl_link_name(int cls); /* "self", "intra", "rack", "inter" */

/* Parse JSON text (errors name the field); load reads a file and prefixes its path. */
carl_status carl_topo_parse(const char *json, size_t len, carl_topo_t *t);
carl_status carl_topo_load(const char *path, carl_topo_t *t);
/* The topology as JSON text in the format above, NUL-terminated and malloc'ed (free with
 * carl_mem_free); len (may be NULL) without the NUL. carl_topo_parse of the text gives back *t field
 * for field (with nics_per_node the file's per-NIC bandwidth is written, the one that parses back
 * to the stored per-device value). save writes the text to path atomically. */
carl_status carl_topo_to_json(const carl_topo_t *t, char **text, size_t *len);
carl_status carl_topo_save(const char *path, const carl_topo_t *t);
/* A uniform topology built in code (used by tests and defaults). */
carl_status carl_topo_make(carl_topo_t *t, int nodes, int devices_per_node, double intra_GBps,
                           double intra_lat_us, double inter_GBps, double inter_lat_us);

static inline int carl_topo_node(const carl_topo_t *t, int device) { return device / t->devices_per_node; }
/* Link class between devices a and b. */
int carl_topo_link(const carl_topo_t *t, int a, int b);
/* Normalised cost of one copy a -> b: 0 self, B_inter/B_class otherwise (1 for inter). */
double carl_topo_cost(const carl_topo_t *t, int a, int b);

/* ---- placement: expert -> device slots (replicas allowed) ------------------------------------ */
/* Most slots per device a placement may have. */
#define CARL_PLACE_MAX_SLOTS (1 << 16)
typedef struct {
  int E;               /* logical experts */
  int D;               /* devices */
  int slots;           /* slots per device */
  int32_t *slot_expert;/* [D, slots] expert id in each slot, -1 empty */
  /* derived by carl_placement_index(): replicas of expert e are rep_dev[rep_off[e] .. rep_off[e+1]) */
  int32_t *rep_off;    /* [E+1] */
  int32_t *rep_dev;    /* [sum of replicas] devices, ascending */
  int32_t *home;       /* [E] first replica's device (the device of e when there are no replicas) */
} carl_placement_t;

/* (Re)build rep_off/rep_dev/home from slot_expert (after editing the table): checks ids in
 * [-1, E), no expert twice on one device, every expert on some device. */
carl_status carl_placement_index(carl_placement_t *p);
/* Contiguous: expert e on device e*D/E (slots = ceil(E/D)); each expert once. */
carl_status carl_placement_contiguous(carl_placement_t *p, int E, int D);
/* Build from a [D, slots] table (copied); checks every expert 0..E-1 appears and ids are in range. */
carl_status carl_placement_from_table(carl_placement_t *p, int E, int D, int slots, const int32_t *table);
/* JSON: {"experts":E,"devices":[[e,e,..],[..],..]} (one list per device, all of the same length,
 * -1 = empty slot); errors name the field. The number of lists must equal t->devices (t may be
 * NULL: no check). E > 0 must equal "experts"; E = 0 takes E from the file. save writes this format. */
carl_status carl_placement_parse(const char *json, size_t len, const carl_topo_t *t, int E, carl_placement_t *p);
carl_status carl_placement_load(const char *path, const carl_topo_t *t, int E, carl_placement_t *p);
carl_status carl_placement_save(const char *path, const carl_placement_t *p);
/* The text that carl_placement_save writes, NUL-terminated and malloc'ed (caller frees, or
 * carl_mem_free); len without the NUL. */
carl_status carl_placement_to_json(const carl_placement_t *p, char **text, size_t *len);
void carl_placement_free(carl_placement_t *p);

#ifdef __cplusplus
}
#endif
#endif
