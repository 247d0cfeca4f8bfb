/* Expert placement: device slot tables, validation, the replica index, JSON files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_internal.h"
#include "carl/topo.h"

#define PLACE_MAX_EXPERTS (1 << 20)

void carl_placement_free(carl_placement_t *p) {
  if (!p) return;
  free(p->slot_expert);
  free(p->rep_off);
  free(p->rep_dev);
  free(p->home);
  memset(p, 0, sizeof *p);
}

carl_status carl_placement_index(carl_placement_t *p) {
  free(p->rep_off);
  free(p->rep_dev);
  free(p->home);
  p->rep_off = p->rep_dev = p->home = NULL;
  const int E = p->E, D = p->D, S = p->slots;
  for (int d = 0; d < D; d++)
    for (int s = 0; s < S; s++) {
      int e = p->slot_expert[(size_t)d * S + s];
      if (e < -1 || e >= E)
        return carl_fail(CARL_ERR_INVALID, "devices[%d][%d] = %d is not an expert id in [0, %d) (or -1 for empty)", d,
                         s, e, E);
      for (int s2 = 0; s2 < s && e >= 0; s2++)
        if (p->slot_expert[(size_t)d * S + s2] == e)
          return carl_fail(CARL_ERR_INVALID, "devices[%d] holds expert %d twice (slots %d and %d)", d, e, s2, s);
    }
  p->rep_off = calloc((size_t)E + 1, sizeof *p->rep_off);
  p->home = malloc((size_t)E * sizeof *p->home);
  if (!p->rep_off || !p->home) return carl_fail(CARL_ERR_NOMEM, "placement: out of memory for %d experts", E);
  for (size_t i = 0; i < (size_t)D * S; i++)
    if (p->slot_expert[i] >= 0) p->rep_off[p->slot_expert[i] + 1]++;
  for (int e = 0; e < E; e++) {
    if (p->rep_off[e + 1] == 0) return carl_fail(CARL_ERR_INVALID, "expert %d is on no device (every expert in [0, %d) must appear)", e, E);
    p->rep_off[e + 1] += p->rep_off[e];
  }
  size_t nrep = (size_t)p->rep_off[E];
  p->rep_dev = malloc(nrep * sizeof *p->rep_dev);
  int32_t *fill = malloc((size_t)E * sizeof *fill);
  if (!p->rep_dev || !fill) {
    free(fill);
    return carl_fail(CARL_ERR_NOMEM, "placement: out of memory for %zu replicas", nrep);
  }
  memcpy(fill, p->rep_off, (size_t)E * sizeof *fill);
  /* Devices in ascending order, so each expert's replica list comes out sorted. */
  for (int d = 0; d < D; d++)
    for (int s = 0; s < S; s++) {
      int e = p->slot_expert[(size_t)d * S + s];
      if (e >= 0) p->rep_dev[fill[e]++] = d;
    }
  free(fill);
  for (int e = 0; e < E; e++) p->home[e] = p->rep_dev[p->rep_off[e]];
  return CARL_OK;
}

static carl_status place_check_dims(int E, int D, int slots) {
  if (E < 1 || E > PLACE_MAX_EXPERTS)
    return carl_fail(CARL_ERR_INVALID, "experts must be in [1, %d], got %d", PLACE_MAX_EXPERTS, E);
  if (D < 1) return carl_fail(CARL_ERR_INVALID, "placement: devices must be >= 1, got %d", D);
  if (slots < 1 || slots > CARL_PLACE_MAX_SLOTS)
    return carl_fail(CARL_ERR_INVALID, "placement: slots per device must be in [1, %d], got %d", CARL_PLACE_MAX_SLOTS, slots);
  if ((int64_t)D * slots < E)
    return carl_fail(CARL_ERR_INVALID, "placement: %d devices x %d slots cannot hold %d experts", D, slots, E);
  return CARL_OK;
}

carl_status carl_placement_from_table(carl_placement_t *p, int E, int D, int slots, const int32_t *table) {
  memset(p, 0, sizeof *p);
  CARL_TRY(place_check_dims(E, D, slots));
  p->E = E;
  p->D = D;
  p->slots = slots;
  p->slot_expert = malloc((size_t)D * slots * sizeof *p->slot_expert);
  if (!p->slot_expert) return carl_fail(CARL_ERR_NOMEM, "placement: out of memory for %d x %d slots", D, slots);
  memcpy(p->slot_expert, table, (size_t)D * slots * sizeof *table);
  carl_status st = carl_placement_index(p);
  if (st != CARL_OK) carl_placement_free(p);
  return st;
}

carl_status carl_placement_contiguous(carl_placement_t *p, int E, int D) {
  memset(p, 0, sizeof *p);
  if (E < 1 || E > PLACE_MAX_EXPERTS)
    return carl_fail(CARL_ERR_INVALID, "experts must be in [1, %d], got %d", PLACE_MAX_EXPERTS, E);
  if (D < 1) return carl_fail(CARL_ERR_INVALID, "placement: devices must be >= 1, got %d", D);
  int slots = (E + D - 1) / D;
  int32_t *table = malloc((size_t)D * slots * sizeof *table);
  int *used = calloc((size_t)D, sizeof *used);
  if (!table || !used) {
    free(table);
    free(used);
    return carl_fail(CARL_ERR_NOMEM, "placement: out of memory");
  }
  for (size_t i = 0; i < (size_t)D * slots; i++) table[i] = -1;
  for (int e = 0; e < E; e++) {
    int d = (int)((int64_t)e * D / E); /* at most ceil(E/D) experts land on one device */
    table[(size_t)d * slots + used[d]++] = e;
  }
  carl_status st = carl_placement_from_table(p, E, D, slots, table);
  free(table);
  free(used);
  return st;
}

static carl_status place_from_json(const cJSON *doc, const carl_topo_t *t, int E, carl_placement_t *p) {
  static const char *const keys[] = {"experts", "devices", "comment"};
  CARL_TRY(carl_json_check_keys(doc, "", keys, 3));
  const char *comment;
  CARL_TRY(carl_json_opt_str(doc, "", "comment", "", &comment));
  int fileE;
  CARL_TRY(carl_json_get_int(doc, "", "experts", 1, PLACE_MAX_EXPERTS, &fileE));
  if (E > 0 && fileE != E)
    return carl_fail(CARL_ERR_INVALID, "experts is %d but the model has %d experts", fileE, E);
  E = fileE;
  const cJSON *devs = cJSON_GetObjectItemCaseSensitive(doc, "devices");
  if (!devs) return carl_fail(CARL_ERR_INVALID, "devices: missing (required array of one list per device)");
  if (!cJSON_IsArray(devs))
    return carl_fail(CARL_ERR_INVALID, "devices must be an array of one list per device, got %s",
                     carl_json_type_name(devs));
  int D = cJSON_GetArraySize(devs);
  if (t && D != t->devices)
    return carl_fail(CARL_ERR_INVALID, "devices has %d lists but the topology has %d devices", D, t->devices);
  if (D < 1) return carl_fail(CARL_ERR_INVALID, "devices must not be empty");
  int slots = -1, d = 0;
  int32_t *table = NULL;
  carl_status st = CARL_OK;
  for (const cJSON *row = devs->child; row && st == CARL_OK; row = row->next, d++) {
    char name[32];
    snprintf(name, sizeof name, "devices[%d]", d);
    int32_t *v = NULL;
    int n = 0;
    st = carl_json_int_array(row, name, -1, E - 1, &v, &n);
    if (st != CARL_OK) break;
    if (d == 0) {
      slots = n;
      if (n < 1 || n > CARL_PLACE_MAX_SLOTS) {
        free(v);
        st = carl_fail(CARL_ERR_INVALID, "devices[0] must have between 1 and %d slots, got %d", CARL_PLACE_MAX_SLOTS, n);
        break;
      }
      table = malloc((size_t)D * slots * sizeof *table);
      if (!table) {
        free(v);
        st = carl_fail(CARL_ERR_NOMEM, "placement: out of memory");
        break;
      }
    } else if (n != slots) {
      free(v);
      st = carl_fail(CARL_ERR_INVALID,
                     "devices[%d] has %d slots but devices[0] has %d (every device lists the same number of slots; "
                     "pad with -1)",
                     d, n, slots);
      break;
    }
    memcpy(table + (size_t)d * slots, v, (size_t)n * sizeof *v);
    free(v);
  }
  if (st == CARL_OK) st = carl_placement_from_table(p, E, D, slots, table);
  free(table);
  return st;
}

carl_status carl_placement_parse(const char *json, size_t len, const carl_topo_t *t, int E, carl_placement_t *p) {
  memset(p, 0, sizeof *p);
  cJSON *doc;
  CARL_TRY(carl_json_parse(json, len, "placement", &doc));
  carl_status st = place_from_json(doc, t, E, p);
  carl_json_free(doc);
  if (st != CARL_OK) return carl_errctx(st, "placement");
  return CARL_OK;
}

carl_status carl_placement_load(const char *path, const carl_topo_t *t, int E, carl_placement_t *p) {
  memset(p, 0, sizeof *p);
  cJSON *doc;
  CARL_TRY(carl_json_load(path, &doc));
  carl_status st = place_from_json(doc, t, E, p);
  carl_json_free(doc);
  if (st != CARL_OK) return carl_errctx(st, "%s", path);
  return CARL_OK;
}

carl_status carl_placement_to_json(const carl_placement_t *p, char **text, size_t *len) {
  /* One device per line: {"experts": E, "devices": [\n  [0, 1],\n  [2, -1]\n]} */
  *text = NULL;
  *len = 0;
  size_t cap = 64 + (size_t)p->D * (8 + (size_t)p->slots * 10), n = 0;
  char *buf = malloc(cap);
  if (!buf) return carl_fail(CARL_ERR_NOMEM, "placement: out of memory");
  n += (size_t)snprintf(buf + n, cap - n, "{\"experts\": %d, \"devices\": [\n", p->E);
  for (int d = 0; d < p->D; d++) {
    n += (size_t)snprintf(buf + n, cap - n, "  [");
    for (int s = 0; s < p->slots; s++)
      n += (size_t)snprintf(buf + n, cap - n, "%s%d", s ? ", " : "", p->slot_expert[(size_t)d * p->slots + s]);
    n += (size_t)snprintf(buf + n, cap - n, "]%s\n", d + 1 < p->D ? "," : "");
  }
  n += (size_t)snprintf(buf + n, cap - n, "]}\n");
  CARL_ASSERT(n < cap);
  *text = buf;
  *len = n;
  return CARL_OK;
}

carl_status carl_placement_save(const char *path, const carl_placement_t *p) {
  char *buf;
  size_t n;
  carl_status st = carl_placement_to_json(p, &buf, &n);
  if (st != CARL_OK) return carl_errctx(st, "%s", path);
  st = carl_write_file_atomic(path, buf, n);
  free(buf);
  return st;
}
