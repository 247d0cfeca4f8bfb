/* libFuzzer harness for the .npy parser: any bytes must give CARL_OK with a consistent array, or an
 * error with a message naming the input; never a crash, leak, hang or out-of-bounds access.
 * Build: CC=clang scripts/build.sh build-fuzz -DCARL_FUZZ=ON ...; run: build-fuzz/fuzz_npy fuzz/corpus/npy */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "carl/array.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  carl_array_t a;
  carl_status st = carl_npy_parse(data, size, &a);
  if (st != CARL_OK) {
    if (a.data != NULL || strncmp(carl_errmsg(), "npy buffer: ", 12) != 0) abort();
    return 0;
  }
  /* a parsed array: known dtype, ndim in range, non-negative dims, data exactly the tail of the input */
  size_t es = carl_dtype_size(a.dtype);
  if (es == 0 || a.ndim < 0 || a.ndim > CARL_MAX_DIMS || a.data == NULL) abort();
  int64_t n = carl_array_numel(&a);
  for (int i = 0; i < a.ndim; i++)
    if (a.shape[i] < 0) abort();
  size_t bytes = (size_t)n * es;
  if (n < 0 || bytes > size || memcmp(a.data, data + size - bytes, bytes) != 0) abort();
  carl_array_free(&a);
  return 0;
}
