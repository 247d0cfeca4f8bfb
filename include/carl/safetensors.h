/* carl/safetensors.h: read and write the safetensors format (the checkpoint format PyTorch and
 * Hugging Face load).
 *
 * Usage:
 *   carl_st_tensor_t t[2] = {
 *     {.name = "wte", .dtype = CARL_F32, .ndim = 2, .shape = {256, 64}, .data = wte},
 *     {.name = "step", .dtype = CARL_I64, .ndim = 1, .shape = {1}, .data = &step},
 *   };
 *   const char *meta[] = {"format", "pt", NULL};                  // key, value, ..., NULL
 *   CARL_TRY(carl_st_write("model.safetensors", t, 2, meta));     // atomic: tmp, fsync, rename
 *
 *   carl_st_file_t f;
 *   CARL_TRY(carl_st_read("model.safetensors", &f));               // validates everything
 *   CARL_TRY(carl_st_get_f32(&f, "wte", 2, (int64_t[]){256, 64}, wte));  // error on shape/dtype
 *   carl_st_free(&f);
 *
 * Format: 8 bytes little-endian u64 N, then N bytes of JSON
 *   {"NAME": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * then the data buffer; offsets are relative to the start of the buffer. The writer pads the
 * header with spaces to a multiple of 8 bytes (so the data is 8-byte aligned) and lays tensors out
 * in the order given. The reader accepts F32, F64, I32, I64 (little-endian) and refuses: a file
 * shorter than its header, a header that is not a JSON object, unknown dtypes, shapes that are not
 * lists of non-negative integers, offsets outside the buffer, sizes that disagree with
 * dtype x shape, overlapping tensors, bytes not covered by any tensor, duplicate names. Every
 * error names the file (or "safetensors" for an in-memory image) and the tensor.
 *
 * Ownership: carl_st_write only reads its inputs. carl_st_read/parse fill a carl_st_file_t that owns
 * a copy of the file; tensors[i].data points into it (it may be unaligned: copy with memcpy or
 * carl_st_get_*). Free with carl_st_free.
 */
#ifndef CARL_SAFETENSORS_H
#define CARL_SAFETENSORS_H

#include "carl/array.h"
#include "carl/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CARL_ST_NAME_MAX 256

typedef struct {
  char name[CARL_ST_NAME_MAX];
  carl_dtype dtype;
  int ndim;
  int64_t shape[CARL_MAX_DIMS];
  const void *data; /* writer: borrowed, shape[0]*...*shape[ndim-1] elements; reader: into the file copy */
  size_t nbytes;    /* set by the reader (and by carl_st_write internally) */
} carl_st_tensor_t;

typedef struct {
  int n;
  carl_st_tensor_t *tensors; /* [n] in file order (by data offset) */
  int nmeta;
  char **meta;               /* [2*nmeta] key, value, key, value ... */
  unsigned char *buf;        /* the whole file */
  size_t len;
} carl_st_file_t;

/* Serialize to a malloc'ed buffer (caller frees). meta: NULL or key,value,...,NULL. */
carl_status carl_st_serialize(const carl_st_tensor_t *t, int n, const char *const *meta, unsigned char **out,
                              size_t *out_len);
/* Serialize and write atomically (path.tmp, fsync, rename). */
carl_status carl_st_write(const char *path, const carl_st_tensor_t *t, int n, const char *const *meta);

/* Parse an image in memory (copied), or a file. */
carl_status carl_st_parse(const void *buf, size_t len, carl_st_file_t *out);
carl_status carl_st_read(const char *path, carl_st_file_t *out);
void carl_st_free(carl_st_file_t *f);

/* Tensor by name, NULL if absent. */
const carl_st_tensor_t *carl_st_find(const carl_st_file_t *f, const char *name);
/* Metadata value by key, NULL if absent. */
const char *carl_st_meta(const carl_st_file_t *f, const char *key);
/* Copy tensor `name` into dst after checking it exists, has dtype and exactly this shape. */
carl_status carl_st_get(const carl_st_file_t *f, const char *name, carl_dtype dtype, int ndim, const int64_t *shape,
                        void *dst);
static inline carl_status carl_st_get_f32(const carl_st_file_t *f, const char *name, int ndim, const int64_t *shape,
                                          float *dst) {
  return carl_st_get(f, name, CARL_F32, ndim, shape, dst);
}

#ifdef __cplusplus
}
#endif
#endif
