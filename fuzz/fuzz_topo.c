/* libFuzzer harness for the topology JSON parser: any text must give CARL_OK with a consistent
 * topology (whose link classes and costs are then queried) or an error; never a crash or leak. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carl/topo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  carl_topo_t t;
  carl_status st = carl_topo_parse((const char *)data, size, &t);
  if (st != CARL_OK) {
    if (carl_errmsg()[0] == '\0') abort(); /* every error has a detail */
    return 0;
  }
  if (t.nodes <= 0 || t.devices_per_node <= 0 || t.devices != t.nodes * t.devices_per_node) abort();
  if (memchr(t.name, '\0', sizeof t.name) == NULL) abort();
  /* query a few device pairs: first, last, and across the node boundary */
  int probe[4] = {0, t.devices - 1, t.devices_per_node - 1, t.devices_per_node % t.devices};
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) {
      int cls = carl_topo_link(&t, probe[i], probe[j]);
      if (cls < CARL_LINK_SELF || cls > CARL_LINK_INTER) abort();
      if ((cls == CARL_LINK_SELF) != (probe[i] == probe[j])) abort();
      double c = carl_topo_cost(&t, probe[i], probe[j]);
      if (!(c >= 0.0) || !isfinite(c)) abort();
      (void)carl_link_name(cls);
    }
  return 0;
}
