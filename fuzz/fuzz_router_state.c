/* libFuzzer harness for router state files (carl_router_load): the first byte picks one of the
 * routers that have state, the rest is the file. Any bytes give CARL_OK or an error with a detail;
 * never a crash or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carl/route.h"
#include "fuzz_file.inc"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const char *const *names = carl_router_names();
  const char *with[64];
  int n = 0;
  for (int i = 0; names[i] && n < 64; i++) {
    carl_router_t *r = NULL;
    if (carl_router_create(names[i], 0, NULL, NULL, &r) != CARL_OK) continue;
    if (carl_router_has_state(r)) with[n++] = names[i];
    carl_router_free(r);
  }
  if (n == 0) abort();
  char path[256];
  carl__fz_write("state.npy", data + 1, size - 1, path, sizeof path);
  carl_router_t *r = NULL;
  if (carl_router_create(with[data[0] % n], 0, NULL, NULL, &r) != CARL_OK) abort();
  carl_status st = carl_router_load(r, path);
  if (st != CARL_OK && carl_errmsg()[0] == '\0') abort();
  carl_router_free(r);
  return 0;
}
