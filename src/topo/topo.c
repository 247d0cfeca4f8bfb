/* Cluster topology: JSON files, link classes and the normalised copy cost (ALGORITHMS.md section 1).
 * The file format and every error are documented in docs/topologies.md. */
#include "carl/topo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_internal.h"

#define TOPO_MAX_NODES 65536
#define TOPO_MAX_DEVICES_PER_NODE 4096
#define TOPO_MAX_DEVICES 65536

const char *carl_link_name(int cls) {
  switch (cls) {
    case CARL_LINK_SELF: return "self";
    case CARL_LINK_INTRA: return "intra";
    case CARL_LINK_RACK: return "rack";
    case CARL_LINK_INTER: return "inter";
  }
  return "unknown";
}

/* Checks of the assembled struct shared by parse and make; names the JSON fields. */
static carl_status topo_check(const carl_topo_t *t) {
  if (t->nodes < 1 || t->nodes > TOPO_MAX_NODES)
    return carl_fail(CARL_ERR_INVALID, "nodes must be in [1, %d], got %d", TOPO_MAX_NODES, t->nodes);
  if (t->devices_per_node < 1 || t->devices_per_node > TOPO_MAX_DEVICES_PER_NODE)
    return carl_fail(CARL_ERR_INVALID, "devices_per_node must be in [1, %d], got %d", TOPO_MAX_DEVICES_PER_NODE,
                     t->devices_per_node);
  if ((int64_t)t->nodes * t->devices_per_node > TOPO_MAX_DEVICES)
    return carl_fail(CARL_ERR_INVALID, "nodes * devices_per_node = %lld devices, more than the supported %d",
                     (long long)t->nodes * t->devices_per_node, TOPO_MAX_DEVICES);
  static const char *const names[CARL_NLINK] = {"", "links.intra", "links.rack", "links.inter"};
  for (int c = CARL_LINK_INTRA; c < CARL_NLINK; c++) {
    if (c == CARL_LINK_RACK && t->nodes_per_rack == 0) continue;
    if (!(t->link[c].GBps > 0) || !isfinite(t->link[c].GBps))
      return carl_fail(CARL_ERR_INVALID, "%s.GBps must be > 0, got %g", names[c], t->link[c].GBps);
    if (!(t->link[c].latency_us >= 0) || !isfinite(t->link[c].latency_us))
      return carl_fail(CARL_ERR_INVALID, "%s.latency_us must be >= 0, got %g", names[c], t->link[c].latency_us);
  }
  if (t->nodes_per_rack < 0 || t->nodes_per_rack > t->nodes)
    return carl_fail(CARL_ERR_INVALID, "nodes_per_rack must be in [1, nodes = %d], got %d", t->nodes,
                     t->nodes_per_rack);
  if (t->nics_per_node < 0) return carl_fail(CARL_ERR_INVALID, "nics_per_node must be >= 1, got %d", t->nics_per_node);
  return CARL_OK;
}

static carl_status topo_link_obj(const cJSON *links, const char *key, int required, carl_link_t *l, int *present) {
  char ctx[32];
  snprintf(ctx, sizeof ctx, "links.%s", key);
  const cJSON *o = NULL;
  if (required)
    CARL_TRY(carl_json_get_obj(links, "links", key, &o));
  else
    CARL_TRY(carl_json_opt_obj(links, "links", key, &o));
  *present = o != NULL;
  if (!o) return CARL_OK;
  static const char *const keys[] = {"GBps", "latency_us"};
  CARL_TRY(carl_json_check_keys(o, ctx, keys, 2));
  CARL_TRY(carl_json_get_num(o, ctx, "GBps", CARL_TOPO_GBPS_MIN, CARL_TOPO_GBPS_MAX, &l->GBps));
  CARL_TRY(carl_json_get_num(o, ctx, "latency_us", 0, CARL_TOPO_LATENCY_MAX_US, &l->latency_us));
  return CARL_OK;
}

/* Optional "flops": {"device": name, "peak_TFLOPS": > 0, "efficiency": (0, 1]}. */
static carl_status topo_flops(const cJSON *doc, carl_topo_t *t) {
  const cJSON *o = NULL;
  CARL_TRY(carl_json_opt_obj(doc, "", "flops", &o));
  if (!o) return CARL_OK;
  static const char *const keys[] = {"device", "peak_TFLOPS", "efficiency", "comment"};
  CARL_TRY(carl_json_check_keys(o, "flops", keys, 4));
  const char *dev;
  CARL_TRY(carl_json_opt_str(o, "flops", "device", "", &dev));
  if (strlen(dev) >= sizeof t->device)
    return carl_fail(CARL_ERR_INVALID, "flops.device must be shorter than %zu characters", sizeof t->device);
  snprintf(t->device, sizeof t->device, "%s", dev);
  CARL_TRY(carl_json_get_num(o, "flops", "peak_TFLOPS", CARL_TOPO_TFLOPS_MIN, CARL_TOPO_TFLOPS_MAX, &t->peak_TFLOPS));
  double eff;
  CARL_TRY(carl_json_get_num(o, "flops", "efficiency", -INFINITY, INFINITY, &eff));
  if (!(eff > 0) || eff > 1) return carl_fail(CARL_ERR_INVALID, "flops.efficiency must be in (0, 1], got %g", eff);
  t->efficiency = eff;
  t->flops = t->peak_TFLOPS * 1e12 * eff;
  const char *comment;
  CARL_TRY(carl_json_opt_str(o, "flops", "comment", "", &comment));
  return CARL_OK;
}

static carl_status topo_from_json(const cJSON *doc, carl_topo_t *t) {
  memset(t, 0, sizeof *t);
  static const char *const keys[] = {"name", "nodes", "devices_per_node", "links", "nodes_per_rack", "nics_per_node",
                                     "flops", "comment"};
  CARL_TRY(carl_json_check_keys(doc, "", keys, 8));
  const char *name;
  CARL_TRY(carl_json_opt_str(doc, "", "name", "", &name));
  if (strlen(name) >= sizeof t->name)
    return carl_fail(CARL_ERR_INVALID, "name must be shorter than %zu characters", sizeof t->name);
  snprintf(t->name, sizeof t->name, "%s", name);
  CARL_TRY(carl_json_get_int(doc, "", "nodes", 1, TOPO_MAX_NODES, &t->nodes));
  CARL_TRY(carl_json_get_int(doc, "", "devices_per_node", 1, TOPO_MAX_DEVICES_PER_NODE, &t->devices_per_node));
  const cJSON *links;
  CARL_TRY(carl_json_get_obj(doc, "", "links", &links));
  static const char *const lkeys[] = {"intra", "rack", "inter"};
  CARL_TRY(carl_json_check_keys(links, "links", lkeys, 3));
  int have_intra, have_rack, have_inter;
  CARL_TRY(topo_link_obj(links, "intra", 1, &t->link[CARL_LINK_INTRA], &have_intra));
  CARL_TRY(topo_link_obj(links, "rack", 0, &t->link[CARL_LINK_RACK], &have_rack));
  CARL_TRY(topo_link_obj(links, "inter", 1, &t->link[CARL_LINK_INTER], &have_inter));
  (void)have_intra;
  (void)have_inter;
  int npr = 0;
  CARL_TRY(carl_json_opt_int(doc, "", "nodes_per_rack", 1, t->nodes, 0, &npr));
  if (have_rack && npr == 0) return carl_fail(CARL_ERR_INVALID, "nodes_per_rack: missing (required with links.rack)");
  if (!have_rack && npr != 0) return carl_fail(CARL_ERR_INVALID, "nodes_per_rack given without links.rack");
  t->nodes_per_rack = npr;
  CARL_TRY(carl_json_opt_int(doc, "", "nics_per_node", 1, 4 * t->devices_per_node, 0, &t->nics_per_node));
  CARL_TRY(topo_flops(doc, t));
  const char *comment;
  CARL_TRY(carl_json_opt_str(doc, "", "comment", "", &comment));
  CARL_TRY(topo_check(t));
  t->devices = t->nodes * t->devices_per_node;
  if (t->nics_per_node > 0) {
    /* The file gives the bandwidth of one NIC; the node's NICs are shared by its devices. */
    double share = (double)t->nics_per_node / t->devices_per_node;
    t->link[CARL_LINK_INTER].GBps *= share;
    if (have_rack) t->link[CARL_LINK_RACK].GBps *= share;
  }
  if (t->name[0] == '\0') snprintf(t->name, sizeof t->name, "%dx%d", t->nodes, t->devices_per_node);
  return CARL_OK;
}

carl_status carl_topo_parse(const char *json, size_t len, carl_topo_t *t) {
  cJSON *doc;
  CARL_TRY(carl_json_parse(json, len, "topology", &doc));
  carl_status st = topo_from_json(doc, t);
  carl_json_free(doc);
  if (st != CARL_OK) return carl_errctx(st, "topology");
  return CARL_OK;
}

carl_status carl_topo_load(const char *path, carl_topo_t *t) {
  cJSON *doc;
  CARL_TRY(carl_json_load(path, &doc));
  carl_status st = topo_from_json(doc, t);
  carl_json_free(doc);
  if (st != CARL_OK) return carl_errctx(st, "%s", path);
  return CARL_OK;
}

carl_status carl_topo_make(carl_topo_t *t, int nodes, int devices_per_node, double intra_GBps, double intra_lat_us,
                           double inter_GBps, double inter_lat_us) {
  memset(t, 0, sizeof *t);
  t->nodes = nodes;
  t->devices_per_node = devices_per_node;
  t->link[CARL_LINK_INTRA] = (carl_link_t){intra_GBps, intra_lat_us};
  t->link[CARL_LINK_INTER] = (carl_link_t){inter_GBps, inter_lat_us};
  CARL_TRY(topo_check(t));
  t->devices = nodes * devices_per_node;
  snprintf(t->name, sizeof t->name, "%dx%d", nodes, devices_per_node);
  return CARL_OK;
}

int carl_topo_link(const carl_topo_t *t, int a, int b) {
  CARL_ASSERT(a >= 0 && a < t->devices && b >= 0 && b < t->devices);
  if (a == b) return CARL_LINK_SELF;
  int na = a / t->devices_per_node, nb = b / t->devices_per_node;
  if (na == nb) return CARL_LINK_INTRA;
  if (t->nodes_per_rack > 0 && na / t->nodes_per_rack == nb / t->nodes_per_rack) return CARL_LINK_RACK;
  return CARL_LINK_INTER;
}

double carl_topo_cost(const carl_topo_t *t, int a, int b) {
  int c = carl_topo_link(t, a, b);
  if (c == CARL_LINK_SELF) return 0.0;
  return t->link[CARL_LINK_INTER].GBps / t->link[c].GBps;
}

/* The file's per-NIC bandwidth that parses back to the stored per-device value x (parse multiplies
 * by share = nics_per_node / devices_per_node). */
static double topo_file_GBps(double x, double share) {
  double g = x / share;
  for (int i = 0; i < 8 && g * share != x; i++) g = nextafter(g, g * share < x ? INFINITY : -INFINITY);
  return g;
}

carl_status carl_topo_to_json(const carl_topo_t *t, char **text, size_t *len) {
  if (!text) return carl_fail(CARL_ERR_INVALID, "topology: text is NULL");
  *text = NULL;
  if (len) *len = 0;
  if (!t) return carl_fail(CARL_ERR_INVALID, "topology: NULL");
  CARL_TRY(topo_check(t));
  const double share = t->nics_per_node > 0 ? (double)t->nics_per_node / t->devices_per_node : 1;
  cJSON *o = cJSON_CreateObject();
  int ok = o != NULL;
  if (ok && t->name[0]) ok = cJSON_AddStringToObject(o, "name", t->name) != NULL;
  if (ok) ok = cJSON_AddNumberToObject(o, "nodes", t->nodes) && cJSON_AddNumberToObject(o, "devices_per_node", t->devices_per_node);
  cJSON *links = ok ? cJSON_AddObjectToObject(o, "links") : NULL;
  ok = links != NULL;
  static const int cls[3] = {CARL_LINK_INTRA, CARL_LINK_RACK, CARL_LINK_INTER};
  for (int i = 0; i < 3 && ok; i++) {
    const int c = cls[i];
    if (c == CARL_LINK_RACK && t->nodes_per_rack == 0) continue;
    cJSON *l = cJSON_AddObjectToObject(links, carl_link_name(c));
    double g = c == CARL_LINK_INTRA || t->nics_per_node == 0 ? t->link[c].GBps : topo_file_GBps(t->link[c].GBps, share);
    ok = l && cJSON_AddNumberToObject(l, "GBps", g) && cJSON_AddNumberToObject(l, "latency_us", t->link[c].latency_us);
  }
  if (ok && t->nodes_per_rack > 0) ok = cJSON_AddNumberToObject(o, "nodes_per_rack", t->nodes_per_rack) != NULL;
  if (ok && t->nics_per_node > 0) ok = cJSON_AddNumberToObject(o, "nics_per_node", t->nics_per_node) != NULL;
  if (ok && t->peak_TFLOPS > 0) {
    cJSON *f = cJSON_AddObjectToObject(o, "flops");
    ok = f && (!t->device[0] || cJSON_AddStringToObject(f, "device", t->device)) &&
         cJSON_AddNumberToObject(f, "peak_TFLOPS", t->peak_TFLOPS) && cJSON_AddNumberToObject(f, "efficiency", t->efficiency);
  }
  char *s = ok ? cJSON_Print(o) : NULL;
  cJSON_Delete(o);
  if (!s) return carl_fail(CARL_ERR_NOMEM, "topology: out of memory");
  /* cJSON allocates with malloc (no hooks are installed), so carl_mem_free / free release it */
  *text = s;
  if (len) *len = strlen(s);
  return CARL_OK;
}

carl_status carl_topo_save(const char *path, const carl_topo_t *t) {
  if (!path) return carl_fail(CARL_ERR_INVALID, "topology save: path is NULL");
  char *s;
  size_t n;
  carl_status st = carl_topo_to_json(t, &s, &n);
  if (st != CARL_OK) return carl_errctx(st, "%s", path);
  st = carl_write_file_atomic(path, s, n);
  free(s);
  return st;
}
