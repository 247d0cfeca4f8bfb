/* Placements without statistics: contiguous (expert e on device e*D/E) and roundrobin (expert e on
 * device e mod D), each expert once. */
#include <stdlib.h>

#include "carl/place.h"
#include "place_internal.h"

carl_status carl__place_contiguous(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                                   int32_t *table) {
  (void)o;
  const int E = in->E, D = t->devices;
  int32_t *used = calloc((size_t)D, sizeof *used);
  if (!used) return carl_fail(CARL_ERR_NOMEM, "placement: out of memory");
  for (int e = 0; e < E; e++) {
    int d = (int)((int64_t)e * D / E);
    table[(size_t)d * S + used[d]++] = e;
  }
  free(used);
  return CARL_OK;
}

carl_status carl__place_roundrobin(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o, int S,
                                   int32_t *table) {
  (void)o;
  const int E = in->E, D = t->devices;
  for (int e = 0; e < E; e++) table[(size_t)(e % D) * S + e / D] = e;
  return CARL_OK;
}
