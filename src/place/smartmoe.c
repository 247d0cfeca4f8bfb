/* SmartMoE's dynamic re-placement (Zhai et al., USENIX ATC'23; the greedy mapping of its artifact,
 * fmoe/smartmoe/mapping.py): no replicas, each expert once, S slots per device.
 *
 * Given the current placement (in->prev; the contiguous placement when absent) and the
 * accumulated load w [E]:
 *   1. experts in order of w, heaviest first (equal w: the lower index first);
 *   2. each goes to the device with the least load so far among those with a free slot (equal:
 *      the lower device), except that its current device wins when it has a free slot and its load
 *      equals that least load;
 *   3. the new placement is taken only when the current one's largest device load is strictly
 *      larger than the new one's; otherwise the current placement is returned unchanged.
 * Slots are filled in the order experts arrive on a device. */
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"
#include "place_internal.h"

carl_status carl__place_smartmoe(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                                 int32_t *table) {
  (void)o;
  const int E = in->E, D = t->devices;
  const carl_placement_t *prev = in->prev;
  if (prev && (prev->E != E || prev->D != D || prev->slots != S))
    return carl_fail(CARL_ERR_INVALID, "smartmoe: the current placement has %d experts on %d devices x %d slots, expected %d on %d x %d",
                     prev->E, prev->D, prev->slots, E, D, S);
  carl_status st = CARL_OK;
  int32_t *order = malloc((size_t)E * sizeof *order), *old = malloc((size_t)E * sizeof *old);
  int32_t *cnt = calloc((size_t)D, sizeof *cnt);
  double *cur = calloc((size_t)D, sizeof *cur), *nw = calloc((size_t)D, sizeof *nw);
  int32_t *fresh = malloc((size_t)D * S * sizeof *fresh);
  if (!order || !old || !cnt || !cur || !nw || !fresh) {
    st = carl_fail(CARL_ERR_NOMEM, "smartmoe: out of memory for %d experts on %d devices", E, D);
    goto out;
  }
  for (int e = 0; e < E; e++) {
    old[e] = prev ? prev->home[e] : (int)((int64_t)e * D / E);
    cur[old[e]] += in->load[e];
  }
  if ((st = carl__sort_desc(in->load, E, order)) != CARL_OK) goto out;
  for (int i = 0; i < D * S; i++) fresh[i] = -1;
  for (int i = 0; i < E; i++) {
    const int e = order[i];
    int best = -1;
    for (int d = 0; d < D; d++)
      if (cnt[d] < S && (best < 0 || nw[d] < nw[best])) best = d;
    CARL_ASSERT(best >= 0); /* D * S >= E, checked by carl_place_compute */
    if (cnt[old[e]] < S && nw[old[e]] == nw[best]) best = old[e];
    fresh[(size_t)best * S + cnt[best]++] = e;
    nw[best] += in->load[e];
  }
  double cur_max = 0, new_max = 0;
  for (int d = 0; d < D; d++) {
    if (cur[d] > cur_max) cur_max = cur[d];
    if (nw[d] > new_max) new_max = nw[d];
  }
  if (cur_max > new_max) {
    memcpy(table, fresh, (size_t)D * S * sizeof *table);
  } else if (prev) {
    memcpy(table, prev->slot_expert, (size_t)D * S * sizeof *table);
  } else { /* the contiguous start, slots in ascending expert order */
    memset(cnt, 0, (size_t)D * sizeof *cnt);
    for (int i = 0; i < D * S; i++) table[i] = -1;
    for (int e = 0; e < E; e++) table[(size_t)old[e] * S + cnt[old[e]]++] = e;
  }
out:
  free(order); free(old); free(cnt); free(cur); free(nw); free(fresh);
  return st;
}
