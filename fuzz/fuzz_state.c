/* libFuzzer harness for a checkpoint's state.json (carl_ckpt_read_config): any text must give
 * CARL_OK with a step >= 0 and a valid config, or an error with a detail; never a crash or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carl/train.h"
#include "fuzz_file.inc"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[256];
  carl__fz_write("state.json", data, size, path, sizeof path);
  path[strlen(path) - strlen("/state.json")] = '\0'; /* the checkpoint directory */
  carl_train_config_t cfg;
  int64_t step = -1;
  carl_status st = carl_ckpt_read_config(path, &cfg, &step);
  if (st != CARL_OK) {
    if (carl_errmsg()[0] == '\0') abort();
    return 0;
  }
  if (step < 0) abort();
  char *again = carl_train_config_to_json(&cfg);
  if (!again) abort();
  carl_train_config_t back;
  if (carl_train_config_parse(again, strlen(again), "state.json again", &back) != CARL_OK) abort();
  free(again);
  return 0;
}
