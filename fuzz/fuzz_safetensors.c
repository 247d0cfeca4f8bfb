/* libFuzzer harness for the safetensors parser: any bytes must give CARL_OK with tensors that lie
 * inside the data section, in ascending offset order, or an error with a detail; never a crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carl/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  carl_st_file_t f;
  carl_status st = carl_st_parse(data, size, &f);
  if (st != CARL_OK) {
    if (carl_errmsg()[0] == '\0') abort();
    return 0;
  }
  if (f.n < 0 || f.nmeta < 0 || f.len != size) abort();
  const unsigned char *end = f.buf + f.len, *prev = f.buf;
  for (int i = 0; i < f.n; i++) {
    const carl_st_tensor_t *t = &f.tensors[i];
    if (memchr(t->name, '\0', sizeof t->name) == NULL) abort();
    if (t->ndim < 0 || t->ndim > CARL_MAX_DIMS) abort();
    const unsigned char *p = t->data;
    if (t->nbytes && (p < prev || p > end || t->nbytes > (size_t)(end - p))) abort();
    if (t->nbytes) prev = p + t->nbytes;
    if (carl_st_find(&f, t->name) == NULL) abort();
  }
  for (int i = 0; i < f.nmeta; i++)
    if (!f.meta[2 * i] || !f.meta[2 * i + 1] || carl_st_meta(&f, f.meta[2 * i]) == NULL) abort();
  carl_st_free(&f);
  return 0;
}
