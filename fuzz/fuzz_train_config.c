/* libFuzzer harness for the train config parser: any text must give CARL_OK with a config that
 * writes back to JSON which parses again to the same text, or an error with a detail. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carl/train.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  carl_train_config_t c;
  carl_status st = carl_train_config_parse((const char *)data, size, "fuzz", &c);
  if (st != CARL_OK) {
    if (carl_errmsg()[0] == '\0') abort();
    return 0;
  }
  char *a = carl_train_config_to_json(&c);
  if (!a) abort();
  carl_train_config_t d;
  if (carl_train_config_parse(a, strlen(a), "fuzz again", &d) != CARL_OK) abort();
  char *b = carl_train_config_to_json(&d);
  if (!b || strcmp(a, b) != 0) abort(); /* parse(to_json(c)) is c */
  free(a);
  free(b);
  return 0;
}
