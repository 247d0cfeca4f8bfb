/* libFuzzer harness for the placement JSON parser. The first input byte picks the topology the
 * placement is checked against (none, 1x4 or 2x2 devices) and the expected expert count (0 = taken
 * from the file); the rest is the JSON text. A parsed placement must satisfy its invariants. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carl/topo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t sel = data[0];
  carl_topo_t topo;
  const carl_topo_t *t = NULL;
  if ((sel & 3) == 1 && carl_topo_make(&topo, 1, 4, 100, 3, 25, 10) == CARL_OK) t = &topo;
  if ((sel & 3) == 2 && carl_topo_make(&topo, 2, 2, 100, 3, 25, 10) == CARL_OK) t = &topo;
  int E = (sel >> 2) & 15; /* 0: from the file */
  carl_placement_t p;
  carl_status st = carl_placement_parse((const char *)data + 1, size - 1, t, E, &p);
  if (st != CARL_OK) {
    if (carl_errmsg()[0] == '\0') abort();
    /* a failed parse owns nothing (LeakSanitizer would also catch a leak) */
    if (p.slot_expert || p.rep_off || p.rep_dev || p.home) abort();
    return 0;
  }
  if (p.E <= 0 || p.D <= 0 || p.slots <= 0) abort();
  if (E > 0 && p.E != E) abort();
  if (t && p.D != t->devices) abort();
  /* every expert has >= 1 replica, on distinct devices in ascending order, home = first replica,
   * and each replica's device holds the expert in some slot */
  if (p.rep_off[0] != 0) abort();
  for (int e = 0; e < p.E; e++) {
    if (p.rep_off[e + 1] <= p.rep_off[e]) abort();
    if (p.home[e] != p.rep_dev[p.rep_off[e]]) abort();
    for (int r = p.rep_off[e]; r < p.rep_off[e + 1]; r++) {
      int d = p.rep_dev[r];
      if (d < 0 || d >= p.D || (r > p.rep_off[e] && d <= p.rep_dev[r - 1])) abort();
      int found = 0;
      for (int s = 0; s < p.slots; s++) found |= p.slot_expert[(size_t)d * p.slots + s] == e;
      if (!found) abort();
    }
  }
  for (size_t i = 0; i < (size_t)p.D * p.slots; i++)
    if (p.slot_expert[i] < -1 || p.slot_expert[i] >= p.E) abort();
  carl_placement_free(&p);
  return 0;
}
