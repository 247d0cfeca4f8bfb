/* carl/array.h: a typed n-d array and .npy (numpy format 1.0/2.0/3.0) read/write.
 *
 * Usage:
 *   carl_array_t a;
 *   CARL_TRY(carl_npy_read("logits.npy", &a));               // owns a.data
 *   CARL_TRY(carl_array_expect(&a, "logits", CARL_F32, 2));   // clear error on dtype/ndim mismatch
 *   float *z = a.data;  // [a.shape[0], a.shape[1]]
 *   carl_array_free(&a);
 *
 * Supported: little-endian float32, float64, int32, int64, C order ('fortran_order': False).
 * Ownership: carl_npy_read allocates data (free with carl_array_free); carl_npy_write only reads.
 * Writes are atomic (temporary file, fsync, rename) and produce format 1.0 files exactly as numpy's
 * np.save does (data 64-byte aligned).
 *
 * Errors (the detail from carl_errmsg() starts with the file name, or "npy buffer" for
 * carl_npy_parse; on failure out->data is NULL):
 *   CARL_ERR_IO           cannot open / read / write / rename
 *   CARL_ERR_PARSE        bad magic, unsupported format version, truncated preamble, header or data,
 *                         malformed header dict, bad shape text, data size not matching the shape
 *   CARL_ERR_DTYPE        any dtype other than <f4 <f8 <i4 <i8 (e.g. <f2, >f4, |b1, |O, structured)
 *   CARL_ERR_UNSUPPORTED  'fortran_order': True
 *   CARL_ERR_SHAPE        more than CARL_MAX_DIMS dims, or a shape whose byte size overflows int64
 */
#ifndef CARL_ARRAY_H
#define CARL_ARRAY_H

#include "carl/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CARL_F32 = 0, CARL_F64 = 1, CARL_I32 = 2, CARL_I64 = 3 } carl_dtype;
#define CARL_MAX_DIMS 8

typedef struct {
  carl_dtype dtype;
  int ndim;
  int64_t shape[CARL_MAX_DIMS];
  void *data; /* C order, shape[0] * ... * shape[ndim-1] elements */
} carl_array_t;

size_t carl_dtype_size(carl_dtype dt);
const char *carl_dtype_name(carl_dtype dt); /* "float32", ... */
int64_t carl_array_numel(const carl_array_t *a);

/* Allocate a zero-filled array (caller frees with carl_array_free). data is never NULL on success,
 * even for 0 elements. */
carl_status carl_array_alloc(carl_array_t *a, carl_dtype dt, int ndim, const int64_t *shape);
void carl_array_free(carl_array_t *a);

/* Error (naming `what`) unless a has dtype dt (CARL_ERR_DTYPE) and ndim dims (CARL_ERR_SHAPE);
 * ndim < 0 accepts any number of dims. */
carl_status carl_array_expect(const carl_array_t *a, const char *what, carl_dtype dt, int ndim);

/* Parse a .npy image held in memory (used by the reader and by the fuzzer). */
carl_status carl_npy_parse(const void *buf, size_t len, carl_array_t *out);
carl_status carl_npy_read(const char *path, carl_array_t *out);
carl_status carl_npy_write(const char *path, const carl_array_t *a);
/* Convenience: write a raw buffer with the given dtype and shape. */
carl_status carl_npy_save(const char *path, carl_dtype dt, int ndim, const int64_t *shape, const void *data);

#ifdef __cplusplus
}
#endif
#endif
