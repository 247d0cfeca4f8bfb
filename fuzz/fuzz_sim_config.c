/* libFuzzer harness for the sim config parser (carl_sim_config_parse, files relative to
 * configs/experiments): any text must give CARL_OK and a describable config, or an error with a
 * detail; never a crash or leak. Run from the repository root (scripts/fuzz.sh does). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carl/sim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  carl_sim_config_t cfg;
  carl_status st = carl_sim_config_parse((const char *)data, size, "configs/experiments", &cfg);
  if (st != CARL_OK) {
    if (carl_errmsg()[0] == '\0') abort();
    return 0;
  }
  char *text = NULL;
  size_t len = 0;
  if (carl_sim_config_describe(&cfg, &text, &len) != CARL_OK || !text || strlen(text) != len) abort();
  free(text);
  carl_sim_config_free(&cfg);
  return 0;
}
