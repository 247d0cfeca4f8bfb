/* safetensors read/write (carl/safetensors.h). The JSON header goes through cJSON. */
#include "carl/safetensors.h"
#include "core/json_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CARL_ST_MAX_HEADER (100u << 20) /* the reference implementation's limit: 100 MB */

static const struct {
  carl_dtype dt;
  const char *name;
  size_t size;
} carl__st_dtypes[] = {{CARL_F32, "F32", 4}, {CARL_F64, "F64", 8}, {CARL_I32, "I32", 4}, {CARL_I64, "I64", 8}};
#define CARL_ST_NDT (sizeof carl__st_dtypes / sizeof carl__st_dtypes[0])

static int carl__st_dtype_index(carl_dtype dt) {
  for (size_t i = 0; i < CARL_ST_NDT; i++)
    if (carl__st_dtypes[i].dt == dt) return (int)i;
  return -1;
}

static int carl__little_endian(void) {
  const uint16_t one = 1;
  return *(const uint8_t *)&one == 1;
}

/* numel * size with overflow checks; -1 on overflow or bad dims. */
static int64_t carl__st_nbytes(int ndim, const int64_t *shape, size_t size) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return -1;
    if (shape[i] != 0 && n > INT64_MAX / 16 / shape[i]) return -1;
    n *= shape[i];
  }
  return n * (int64_t)size;
}

carl_status carl_st_serialize(const carl_st_tensor_t *t, int n, const char *const *meta, unsigned char **out,
                              size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (!carl__little_endian()) return carl_fail(CARL_ERR_UNSUPPORTED, "safetensors: big-endian hosts are not supported");
  if (n < 0) return carl_fail(CARL_ERR_INVALID, "safetensors: negative tensor count %d", n);
  cJSON *root = cJSON_CreateObject();
  if (!root) return carl_fail(CARL_ERR_NOMEM, "safetensors: out of memory");
  carl_status st = CARL_OK;
  int64_t off = 0;
  for (int i = 0; i < n && st == CARL_OK; i++) {
    int di = carl__st_dtype_index(t[i].dtype);
    int64_t nb = di < 0 || t[i].ndim < 0 || t[i].ndim > CARL_MAX_DIMS ? -1 : carl__st_nbytes(t[i].ndim, t[i].shape, carl__st_dtypes[di].size);
    if (!t[i].name[0] || !strcmp(t[i].name, "__metadata__")) {
      st = carl_fail(CARL_ERR_INVALID, "safetensors: tensor %d has an empty or reserved name", i);
    } else if (nb < 0) {
      st = carl_fail(CARL_ERR_INVALID, "safetensors: tensor '%s' has an unsupported dtype or a bad shape", t[i].name);
    } else if (cJSON_GetObjectItemCaseSensitive(root, t[i].name)) {
      st = carl_fail(CARL_ERR_INVALID, "safetensors: tensor name '%s' appears twice", t[i].name);
    } else if (nb > 0 && !t[i].data) {
      st = carl_fail(CARL_ERR_INVALID, "safetensors: tensor '%s' has no data", t[i].name);
    } else {
      cJSON *o = cJSON_AddObjectToObject(root, t[i].name);
      cJSON *shape = o ? cJSON_AddArrayToObject(o, "shape") : NULL;
      cJSON *offs = o ? cJSON_AddArrayToObject(o, "data_offsets") : NULL;
      if (!o || !shape || !offs || !cJSON_AddStringToObject(o, "dtype", carl__st_dtypes[di].name)) {
        st = carl_fail(CARL_ERR_NOMEM, "safetensors: out of memory");
        break;
      }
      for (int d = 0; d < t[i].ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t[i].shape[d]));
      cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
      cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
      off += nb;
    }
  }
  if (st == CARL_OK && meta && meta[0]) {
    cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
    for (int i = 0; meta[i]; i += 2) {
      if (!meta[i + 1]) {
        st = carl_fail(CARL_ERR_INVALID, "safetensors: metadata key '%s' has no value", meta[i]);
        break;
      }
      cJSON_AddStringToObject(m, meta[i], meta[i + 1]);
    }
  }
  char *hdr = st == CARL_OK ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (st != CARL_OK) return st;
  if (!hdr) return carl_fail(CARL_ERR_NOMEM, "safetensors: out of memory");
  size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
  size_t total = 8 + padded + (size_t)off;
  unsigned char *buf = malloc(total);
  if (!buf) {
    free(hdr);
    return carl_fail(CARL_ERR_NOMEM, "safetensors: out of memory for %zu bytes", total);
  }
  uint64_t n64 = padded;
  for (int b = 0; b < 8; b++) buf[b] = (unsigned char)(n64 >> (8 * b));
  memcpy(buf + 8, hdr, hl);
  memset(buf + 8 + hl, ' ', padded - hl);
  free(hdr);
  unsigned char *p = buf + 8 + padded;
  for (int i = 0; i < n; i++) {
    int64_t nb = carl__st_nbytes(t[i].ndim, t[i].shape, carl__st_dtypes[carl__st_dtype_index(t[i].dtype)].size);
    if (nb > 0) memcpy(p, t[i].data, (size_t)nb);
    p += nb;
  }
  *out = buf;
  *out_len = total;
  return CARL_OK;
}

carl_status carl_st_write(const char *path, const carl_st_tensor_t *t, int n, const char *const *meta) {
  unsigned char *buf;
  size_t len;
  carl_status st = carl_st_serialize(t, n, meta, &buf, &len);
  if (st != CARL_OK) return carl_errctx(st, "%s", path);
  st = carl_write_file_atomic(path, buf, len);
  free(buf);
  return st;
}

void carl_st_free(carl_st_file_t *f) {
  free(f->tensors);
  if (f->meta)
    for (int i = 0; i < 2 * f->nmeta; i++) free(f->meta[i]);
  free(f->meta);
  free(f->buf);
  memset(f, 0, sizeof *f);
}

/* A JSON number that is an integer in [0, 2^53]; -1 otherwise. */
static int64_t carl__st_uint(const cJSON *v) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) return -1;
  return (int64_t)d;
}

static int carl__st_cmp_off(const void *a, const void *b) {
  const carl_st_tensor_t *x = a, *y = b;
  const unsigned char *px = x->data, *py = y->data;
  return px < py ? -1 : px > py ? 1 : (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

static carl_status carl__st_parse_header(carl_st_file_t *f, const cJSON *root, const unsigned char *data,
                                         size_t data_len) {
  int count = 0;
  for (const cJSON *it = root->child; it; it = it->next)
    if (strcmp(it->string, "__metadata__")) count++;
  f->tensors = calloc(count ? (size_t)count : 1, sizeof *f->tensors);
  if (!f->tensors) return carl_fail(CARL_ERR_NOMEM, "out of memory");
  for (const cJSON *it = root->child; it; it = it->next) {
    const char *name = it->string;
    if (!strcmp(name, "__metadata__")) {
      if (!cJSON_IsObject(it)) return carl_fail(CARL_ERR_PARSE, "__metadata__ must be an object of strings");
      if (f->meta) return carl_fail(CARL_ERR_PARSE, "__metadata__ appears twice");
      int nm = cJSON_GetArraySize(it);
      f->meta = calloc(2 * (size_t)nm + 1, sizeof *f->meta);
      if (!f->meta) return carl_fail(CARL_ERR_NOMEM, "out of memory");
      for (const cJSON *m = it->child; m; m = m->next) {
        if (!cJSON_IsString(m)) return carl_fail(CARL_ERR_PARSE, "__metadata__ value of '%s' is not a string", m->string);
        f->meta[2 * f->nmeta] = strdup(m->string);
        f->meta[2 * f->nmeta + 1] = strdup(m->valuestring);
        f->nmeta++;
        if (!f->meta[2 * f->nmeta - 2] || !f->meta[2 * f->nmeta - 1]) return carl_fail(CARL_ERR_NOMEM, "out of memory");
      }
      continue;
    }
    if (strlen(name) == 0 || strlen(name) >= CARL_ST_NAME_MAX)
      return carl_fail(CARL_ERR_PARSE, "tensor name of %zu bytes (must be 1..%d)", strlen(name), CARL_ST_NAME_MAX - 1);
    for (int j = 0; j < f->n; j++)
      if (!strcmp(f->tensors[j].name, name)) return carl_fail(CARL_ERR_PARSE, "tensor '%s' appears twice", name);
    if (!cJSON_IsObject(it)) return carl_fail(CARL_ERR_PARSE, "tensor '%s': entry is not an object", name);
    carl_st_tensor_t *t = &f->tensors[f->n];
    memcpy(t->name, name, strlen(name) + 1);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(dt)) return carl_fail(CARL_ERR_PARSE, "tensor '%s': 'dtype' missing or not a string", name);
    int di = -1;
    for (size_t k = 0; k < CARL_ST_NDT; k++)
      if (!strcmp(dt->valuestring, carl__st_dtypes[k].name)) di = (int)k;
    if (di < 0)
      return carl_fail(CARL_ERR_DTYPE, "tensor '%s': dtype '%s' is not supported (F32, F64, I32, I64)", name,
                       dt->valuestring);
    t->dtype = carl__st_dtypes[di].dt;
    if (!cJSON_IsArray(sh)) return carl_fail(CARL_ERR_PARSE, "tensor '%s': 'shape' missing or not a list", name);
    t->ndim = cJSON_GetArraySize(sh);
    if (t->ndim > CARL_MAX_DIMS) return carl_fail(CARL_ERR_SHAPE, "tensor '%s': %d dims (at most %d)", name, t->ndim, CARL_MAX_DIMS);
    int d = 0;
    for (const cJSON *s = sh->child; s; s = s->next, d++) {
      t->shape[d] = carl__st_uint(s);
      if (t->shape[d] < 0) return carl_fail(CARL_ERR_PARSE, "tensor '%s': shape entry %d is not a non-negative integer", name, d);
    }
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2)
      return carl_fail(CARL_ERR_PARSE, "tensor '%s': 'data_offsets' must be a list [begin, end]", name);
    int64_t b = carl__st_uint(of->child), e = carl__st_uint(of->child->next);
    if (b < 0 || e < 0) return carl_fail(CARL_ERR_PARSE, "tensor '%s': data_offsets are not non-negative integers", name);
    if (b > e || (uint64_t)e > data_len)
      return carl_fail(CARL_ERR_PARSE, "tensor '%s': data_offsets [%lld, %lld] outside the %zu-byte data buffer "
                       "(file truncated?)", name, (long long)b, (long long)e, data_len);
    int64_t nb = carl__st_nbytes(t->ndim, t->shape, carl__st_dtypes[di].size);
    if (nb < 0) {
      char sh[200] = "";
      for (int k = 0; k < t->ndim; k++)
        snprintf(sh + strlen(sh), sizeof sh - strlen(sh), "%s%lld", k ? ", " : "", (long long)t->shape[k]);
      return carl_fail(CARL_ERR_SHAPE, "tensor '%s': shape [%s] of dtype %s is too large (its byte size overflows)",
                       name, sh, carl__st_dtypes[di].name);
    }
    if (nb != e - b)
      return carl_fail(CARL_ERR_SHAPE, "tensor '%s': %lld data bytes but dtype %s and its shape need %lld", name,
                       (long long)(e - b), carl__st_dtypes[di].name, (long long)nb);
    t->data = data + b;
    t->nbytes = (size_t)nb;
    f->n++;
  }
  /* offsets must tile the buffer: sorted, no overlap, no hole, nothing left over */
  qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, carl__st_cmp_off);
  size_t pos = 0;
  for (int i = 0; i < f->n; i++) {
    size_t b = (size_t)((const unsigned char *)f->tensors[i].data - data);
    if (b < pos) return carl_fail(CARL_ERR_PARSE, "tensor '%s' overlaps the tensor before it", f->tensors[i].name);
    if (b > pos) return carl_fail(CARL_ERR_PARSE, "bytes %zu..%zu of the data buffer belong to no tensor", pos, b);
    pos = b + f->tensors[i].nbytes;
  }
  if (pos != data_len)
    return carl_fail(CARL_ERR_PARSE, "the data buffer has %zu bytes but the tensors cover %zu", data_len, pos);
  return CARL_OK;
}

carl_status carl_st_parse(const void *img, size_t len, carl_st_file_t *f) {
  memset(f, 0, sizeof *f);
  if (!carl__little_endian()) return carl_fail(CARL_ERR_UNSUPPORTED, "safetensors: big-endian hosts are not supported");
  if (len < 8) return carl_fail(CARL_ERR_PARSE, "safetensors: %zu bytes, too short for the 8-byte header length", len);
  const unsigned char *p = img;
  uint64_t hl = 0;
  for (int b = 0; b < 8; b++) hl |= (uint64_t)p[b] << (8 * b);
  if (hl < 2 || hl > CARL_ST_MAX_HEADER || hl > len - 8)
    return carl_fail(CARL_ERR_PARSE, "safetensors: header length %llu does not fit the %zu-byte file (truncated or not "
                     "a safetensors file)", (unsigned long long)hl, len);
  f->buf = malloc(len + 1);
  if (!f->buf) return carl_fail(CARL_ERR_NOMEM, "safetensors: out of memory for %zu bytes", len);
  memcpy(f->buf, img, len);
  f->buf[len] = 0;
  f->len = len;
  cJSON *root = NULL;
  carl_status st = carl_json_parse((const char *)f->buf + 8, (size_t)hl, "header", &root);
  if (st == CARL_OK && !cJSON_IsObject(root)) st = carl_fail(CARL_ERR_PARSE, "header is not a JSON object");
  if (st == CARL_OK) st = carl__st_parse_header(f, root, f->buf + 8 + hl, len - 8 - (size_t)hl);
  cJSON_Delete(root);
  if (st != CARL_OK) {
    carl_st_free(f);
    return carl_errctx(st, "safetensors");
  }
  return CARL_OK;
}

carl_status carl_st_read(const char *path, carl_st_file_t *out) {
  memset(out, 0, sizeof *out);
  char *buf;
  size_t len;
  CARL_TRY(carl_read_file(path, &buf, &len));
  carl_status st = carl_st_parse(buf, len, out);
  free(buf);
  if (st != CARL_OK) return carl_errctx(st, "%s", path);
  return CARL_OK;
}

const carl_st_tensor_t *carl_st_find(const carl_st_file_t *f, const char *name) {
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
  return NULL;
}

const char *carl_st_meta(const carl_st_file_t *f, const char *key) {
  for (int i = 0; i < f->nmeta; i++)
    if (!strcmp(f->meta[2 * i], key)) return f->meta[2 * i + 1];
  return NULL;
}

carl_status carl_st_get(const carl_st_file_t *f, const char *name, carl_dtype dtype, int ndim, const int64_t *shape,
                        void *dst) {
  const carl_st_tensor_t *t = carl_st_find(f, name);
  if (!t) return carl_fail(CARL_ERR_NOT_FOUND, "tensor '%s' is missing", name);
  if (t->dtype != dtype) {
    int a = carl__st_dtype_index(t->dtype), b = carl__st_dtype_index(dtype);
    return carl_fail(CARL_ERR_DTYPE, "tensor '%s' has dtype %s, expected %s", name, carl__st_dtypes[a].name,
                     b >= 0 ? carl__st_dtypes[b].name : "?");
  }
  int same = t->ndim == ndim;
  for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
  if (!same) {
    char got[160] = "", want[160] = "";
    for (int d = 0; d < t->ndim; d++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "", (long long)t->shape[d]);
    for (int d = 0; d < ndim; d++)
      snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "," : "", (long long)shape[d]);
    return carl_fail(CARL_ERR_SHAPE, "tensor '%s' has shape [%s], expected [%s]", name, got, want);
  }
  if (t->nbytes) memcpy(dst, t->data, t->nbytes);
  return CARL_OK;
}
