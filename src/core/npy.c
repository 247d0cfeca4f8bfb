/* .npy (numpy format 1.0/2.0/3.0) read and write, and the carl_array_t helpers.
 *
 * File layout (numpy's NEP 1 / numpy.lib.format):
 *   "\x93NUMPY" major minor | header length (uint16 LE for 1.0, uint32 LE for 2.0/3.0)
 *   | header: a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 *     padded with spaces and ended by '\n' so that the data starts on a 64-byte boundary
 *   | data: shape[0] * ... * shape[ndim-1] elements, C order.
 * The header is parsed by a small hand-written parser of exactly that literal grammar; nothing is
 * evaluated. Every error names the input ("<path>: ..." for files, "npy buffer: ..." in memory).
 */
#include "carl/array.h"
#include "carl/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "carl .npy I/O assumes a little-endian host"
#endif

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_MAX_HEADER ((size_t)1 << 20) /* numpy itself refuses headers over 10000 bytes */

/* ---- dtypes and arrays ------------------------------------------------------------------------ */

size_t carl_dtype_size(carl_dtype dt) {
  switch (dt) {
    case CARL_F32: case CARL_I32: return 4;
    case CARL_F64: case CARL_I64: return 8;
  }
  return 0;
}

const char *carl_dtype_name(carl_dtype dt) {
  switch (dt) {
    case CARL_F32: return "float32";
    case CARL_F64: return "float64";
    case CARL_I32: return "int32";
    case CARL_I64: return "int64";
  }
  return "unknown";
}

static const char *dtype_descr(carl_dtype dt) {
  switch (dt) {
    case CARL_F32: return "<f4";
    case CARL_F64: return "<f8";
    case CARL_I32: return "<i4";
    case CARL_I64: return "<i8";
  }
  return NULL;
}

/* "(3, 4)" in Python tuple syntax ("()" for 0-d, "(5,)" for 1-d). */
static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t n = 0;
  n += (size_t)snprintf(buf + n, cap - n, "(");
  for (int i = 0; i < ndim && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (n < cap) snprintf(buf + n, cap - n, ndim == 1 ? ",)" : ")");
}

/* Check a shape and compute its element and byte counts. The product of all non-zero dims times
 * the element size must fit in int64 (as numpy requires), even when some dim is 0. */
static carl_status shape_size(carl_dtype dt, int ndim, const int64_t *shape, int64_t *numel, size_t *bytes) {
  size_t es = carl_dtype_size(dt);
  if (es == 0) return carl_fail(CARL_ERR_DTYPE, "unknown dtype code %d", (int)dt);
  if (ndim < 0 || ndim > CARL_MAX_DIMS)
    return carl_fail(CARL_ERR_SHAPE, "%d dimensions (0 to %d are supported)", ndim, CARL_MAX_DIMS);
  uint64_t n = 1, nz = 1; /* n: true product; nz: product of the non-zero dims */
  const uint64_t limit = (uint64_t)INT64_MAX / es;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return carl_fail(CARL_ERR_SHAPE, "negative dimension %lld", (long long)shape[i]);
    uint64_t d = (uint64_t)shape[i];
    if (d > 1) {
      if (nz > limit / d) {
        char s[256];
        shape_str(s, sizeof s, ndim, shape);
        return carl_fail(CARL_ERR_SHAPE, "shape %s is too large (its byte size overflows)", s);
      }
      nz *= d;
    }
    n *= d; /* cannot overflow: n <= nz or n == 0 */
  }
  if (numel) *numel = (int64_t)n;
  if (bytes) *bytes = (size_t)(n * es);
  return CARL_OK;
}

int64_t carl_array_numel(const carl_array_t *a) {
  int64_t n = 1;
  for (int i = 0; i < a->ndim; i++) n *= a->shape[i];
  return n;
}

carl_status carl_array_alloc(carl_array_t *a, carl_dtype dt, int ndim, const int64_t *shape) {
  CARL_ASSERT(a != NULL);
  memset(a, 0, sizeof *a);
  size_t bytes;
  carl_status st = shape_size(dt, ndim, shape, NULL, &bytes);
  if (st != CARL_OK) return carl_errctx(st, "array");
  /* never NULL, even for an empty array, so that callers can test data != NULL */
  void *p = calloc(bytes ? bytes : 1, 1);
  if (!p) return carl_fail(CARL_ERR_NOMEM, "array: cannot allocate %zu bytes", bytes);
  a->dtype = dt;
  a->ndim = ndim;
  for (int i = 0; i < ndim; i++) a->shape[i] = shape[i];
  a->data = p;
  return CARL_OK;
}

void carl_array_free(carl_array_t *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}

carl_status carl_array_expect(const carl_array_t *a, const char *what, carl_dtype dt, int ndim) {
  if (a->dtype != dt)
    return carl_fail(CARL_ERR_DTYPE, "%s: expected dtype %s, got %s", what, carl_dtype_name(dt),
                     carl_dtype_name(a->dtype));
  if (ndim >= 0 && a->ndim != ndim) {
    char s[256];
    shape_str(s, sizeof s, a->ndim, a->shape);
    return carl_fail(CARL_ERR_SHAPE, "%s: expected %d dimension%s, got %d (shape %s)", what, ndim,
                     ndim == 1 ? "" : "s", a->ndim, s);
  }
  return CARL_OK;
}

/* ---- header parsing ---------------------------------------------------------------------------- */

typedef struct {
  carl_dtype dtype;
  int ndim;
  int64_t shape[CARL_MAX_DIMS];
  size_t data_off; /* where the data starts */
  size_t data_bytes;
  int64_t numel;
} npy_header_t;

typedef struct {
  const char *p, *end;
} cursor_t;

static int cur_peek(const cursor_t *c) { return c->p < c->end ? (unsigned char)*c->p : -1; }

static void cur_ws(cursor_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r' || *c->p == '\f'))
    c->p++;
}

/* A printable rendering of a header fragment for error messages. */
static void snippet(char *out, size_t cap, const char *s, size_t n) {
  size_t j = 0;
  for (size_t i = 0; i < n && j + 5 < cap; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
      out[j++] = (char)ch;
    } else {
      j += (size_t)snprintf(out + j, cap - j, "\\x%02x", ch);
    }
  }
  if (j >= cap) j = cap - 1;
  out[j] = '\0';
}

static carl_status syntax(const cursor_t *c, const char *what) {
  char near[40];
  size_t left = (size_t)(c->end - c->p);
  snippet(near, sizeof near, c->p, left < 12 ? left : 12);
  if (left == 0) return carl_fail(CARL_ERR_PARSE, "malformed header: %s, found the end of the header", what);
  return carl_fail(CARL_ERR_PARSE, "malformed header: %s, found '%s'", what, near);
}

/* A quoted Python string without escapes: 'abc' or "abc". */
static carl_status parse_str(cursor_t *c, const char **s, size_t *n) {
  int q = cur_peek(c);
  if (q != '\'' && q != '"') return syntax(c, "expected a quoted string");
  const char *start = ++c->p;
  while (c->p < c->end && *c->p != q) {
    if (*c->p == '\\' || *c->p == '\n') return syntax(c, "unsupported character in a string");
    c->p++;
  }
  if (c->p >= c->end) return syntax(c, "unterminated string");
  *s = start;
  *n = (size_t)(c->p - start);
  c->p++;
  return CARL_OK;
}

static int is_ident_char(int ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_';
}

static carl_status parse_bool(cursor_t *c, int *v) {
  size_t left = (size_t)(c->end - c->p);
  if (left >= 4 && !memcmp(c->p, "True", 4) && (left == 4 || !is_ident_char((unsigned char)c->p[4]))) {
    c->p += 4;
    *v = 1;
    return CARL_OK;
  }
  if (left >= 5 && !memcmp(c->p, "False", 5) && (left == 5 || !is_ident_char((unsigned char)c->p[5]))) {
    c->p += 5;
    *v = 0;
    return CARL_OK;
  }
  return syntax(c, "'fortran_order' must be True or False");
}

/* A tuple of non-negative decimal integers: (), (5,), (3, 4), (3, 4,); a legacy 'L' suffix is
 * accepted as numpy does. "(5)" is not a tuple in Python and is refused. */
static carl_status parse_shape(cursor_t *c, npy_header_t *h) {
  if (cur_peek(c) != '(') return syntax(c, "'shape' must be a tuple of integers");
  c->p++;
  h->ndim = 0;
  cur_ws(c);
  if (cur_peek(c) == ')') {
    c->p++;
    return CARL_OK;
  }
  for (;;) {
    cur_ws(c);
    int ch = cur_peek(c);
    if (ch == '-') return syntax(c, "bad 'shape': a dimension is negative");
    if (ch < '0' || ch > '9') return syntax(c, "bad 'shape': expected a non-negative integer");
    uint64_t v = 0;
    while ((ch = cur_peek(c)) >= '0' && ch <= '9') {
      if (v > ((uint64_t)INT64_MAX - (uint64_t)(ch - '0')) / 10)
        return carl_fail(CARL_ERR_SHAPE, "bad 'shape': a dimension exceeds the int64 range");
      v = v * 10 + (uint64_t)(ch - '0');
      c->p++;
    }
    if (ch == 'L' || ch == 'l') c->p++;
    if (is_ident_char(cur_peek(c)) || cur_peek(c) == '.')
      return syntax(c, "bad 'shape': expected a non-negative integer");
    if (h->ndim == CARL_MAX_DIMS)
      return carl_fail(CARL_ERR_SHAPE, "'shape' has more than %d dimensions (the most supported)", CARL_MAX_DIMS);
    h->shape[h->ndim++] = (int64_t)v;
    cur_ws(c);
    ch = cur_peek(c);
    if (ch == ',') {
      c->p++;
      cur_ws(c);
      if (cur_peek(c) == ')') {
        c->p++;
        return CARL_OK;
      }
      continue;
    }
    if (ch == ')') {
      if (h->ndim == 1) return syntax(c, "bad 'shape': '(n)' is not a tuple, write '(n,)'");
      c->p++;
      return CARL_OK;
    }
    return syntax(c, "bad 'shape': expected ',' or ')'");
  }
}

/* Parse the header dict text (hlen bytes) into h (dtype, ndim, shape). */
static carl_status parse_dict(const char *text, size_t hlen, npy_header_t *h) {
  cursor_t c = {text, text + hlen};
  const char *descr = NULL;
  size_t descr_len = 0;
  int has_descr = 0, has_fortran = 0, has_shape = 0, fortran = 0;
  cur_ws(&c);
  if (cur_peek(&c) != '{') return syntax(&c, "expected a dict '{...}'");
  c.p++;
  for (;;) {
    cur_ws(&c);
    if (cur_peek(&c) == '}') break;
    const char *key;
    size_t klen;
    CARL_TRY(parse_str(&c, &key, &klen));
    cur_ws(&c);
    if (cur_peek(&c) != ':') return syntax(&c, "expected ':' after a key");
    c.p++;
    cur_ws(&c);
    int *seen;
    if (klen == 5 && !memcmp(key, "descr", 5)) {
      seen = &has_descr;
      if (cur_peek(&c) != '\'' && cur_peek(&c) != '"')
        return carl_fail(CARL_ERR_DTYPE,
                         "unsupported dtype: structured or sub-array 'descr' (supported: <f4, <f8, <i4, <i8)");
      CARL_TRY(parse_str(&c, &descr, &descr_len));
    } else if (klen == 13 && !memcmp(key, "fortran_order", 13)) {
      seen = &has_fortran;
      CARL_TRY(parse_bool(&c, &fortran));
    } else if (klen == 5 && !memcmp(key, "shape", 5)) {
      seen = &has_shape;
      CARL_TRY(parse_shape(&c, h));
    } else {
      char k[64];
      snippet(k, sizeof k, key, klen < 40 ? klen : 40);
      return carl_fail(CARL_ERR_PARSE, "malformed header: unexpected key '%s' (expected descr, fortran_order, shape)", k);
    }
    if (*seen) return carl_fail(CARL_ERR_PARSE, "malformed header: a key appears twice");
    *seen = 1;
    cur_ws(&c);
    if (cur_peek(&c) == ',') {
      c.p++;
      continue;
    }
    if (cur_peek(&c) == '}') break;
    return syntax(&c, "expected ',' or '}'");
  }
  c.p++; /* '}' */
  cur_ws(&c);
  if (c.p != c.end) return syntax(&c, "unexpected text after the header dict");
  if (!has_descr) return carl_fail(CARL_ERR_PARSE, "malformed header: missing key 'descr'");
  if (!has_fortran) return carl_fail(CARL_ERR_PARSE, "malformed header: missing key 'fortran_order'");
  if (!has_shape) return carl_fail(CARL_ERR_PARSE, "malformed header: missing key 'shape'");

  static const struct {
    const char *descr;
    carl_dtype dt;
  } known[] = {{"<f4", CARL_F32}, {"<f8", CARL_F64}, {"<i4", CARL_I32}, {"<i8", CARL_I64}};
  int found = 0;
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (descr_len == 3 && !memcmp(descr, known[i].descr, 3)) {
      h->dtype = known[i].dt;
      found = 1;
    }
  if (!found) {
    char d[64];
    snippet(d, sizeof d, descr, descr_len < 24 ? descr_len : 24);
    const char *why = "";
    if (descr_len > 0 && descr[0] == '>') why = ": big-endian data, save it little-endian (arr.astype('<f4'))";
    return carl_fail(CARL_ERR_DTYPE, "unsupported dtype '%s'%s; supported: <f4, <f8, <i4, <i8", d, why);
  }
  if (fortran)
    return carl_fail(CARL_ERR_UNSUPPORTED,
                     "fortran_order True is not supported (save a C-order array: np.ascontiguousarray)");
  return shape_size(h->dtype, h->ndim, h->shape, &h->numel, &h->data_bytes);
}

/* Preamble: magic, version, header length. b holds the first n bytes of the input (n may be short).
 * On success *hoff is where the header text starts and *hlen its length. */
static carl_status parse_preamble(const unsigned char *b, size_t n, size_t *hoff, size_t *hlen) {
  size_t m = n < NPY_MAGIC_LEN ? n : NPY_MAGIC_LEN;
  if (memcmp(b, NPY_MAGIC, m) != 0) return carl_fail(CARL_ERR_PARSE, "not a .npy file (bad magic, expected \\x93NUMPY)");
  if (n < 10) return carl_fail(CARL_ERR_PARSE, "truncated: %zu bytes, shorter than the .npy preamble", n);
  int major = b[6], minor = b[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0)
    return carl_fail(CARL_ERR_PARSE, "unsupported .npy format version %d.%d (1.0, 2.0 and 3.0 are read)", major, minor);
  if (major == 1) {
    *hoff = 10;
    *hlen = (size_t)b[8] | (size_t)b[9] << 8;
  } else {
    if (n < 12) return carl_fail(CARL_ERR_PARSE, "truncated: %zu bytes, shorter than the .npy preamble", n);
    *hoff = 12;
    *hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
  }
  if (*hlen > NPY_MAX_HEADER)
    return carl_fail(CARL_ERR_PARSE, "header length %zu exceeds the limit of %zu bytes", *hlen, NPY_MAX_HEADER);
  return CARL_OK;
}

static carl_status data_size_error(const npy_header_t *h, size_t have) {
  char s[256];
  shape_str(s, sizeof s, h->ndim, h->shape);
  if (have < h->data_bytes)
    return carl_fail(CARL_ERR_PARSE, "truncated data: %zu bytes, but shape %s %s needs %zu", have, s,
                     carl_dtype_name(h->dtype), h->data_bytes);
  return carl_fail(CARL_ERR_PARSE, "data size %zu bytes does not match shape %s %s (%zu bytes): %zu trailing bytes",
                   have, s, carl_dtype_name(h->dtype), h->data_bytes, have - h->data_bytes);
}

static carl_status fill_array(const npy_header_t *h, carl_array_t *out) {
  memset(out, 0, sizeof *out);
  void *p = malloc(h->data_bytes ? h->data_bytes : 1);
  if (!p) return carl_fail(CARL_ERR_NOMEM, "cannot allocate %zu bytes of data", h->data_bytes);
  out->dtype = h->dtype;
  out->ndim = h->ndim;
  for (int i = 0; i < h->ndim; i++) out->shape[i] = h->shape[i];
  out->data = p;
  return CARL_OK;
}

static carl_status npy_parse(const unsigned char *b, size_t len, carl_array_t *out) {
  size_t hoff, hlen;
  npy_header_t h;
  memset(&h, 0, sizeof h);
  CARL_TRY(parse_preamble(b, len, &hoff, &hlen));
  if (len - hoff < hlen)
    return carl_fail(CARL_ERR_PARSE, "truncated header: it declares %zu bytes but only %zu follow", hlen, len - hoff);
  CARL_TRY(parse_dict((const char *)b + hoff, hlen, &h));
  h.data_off = hoff + hlen;
  size_t have = len - h.data_off;
  if (have != h.data_bytes) return data_size_error(&h, have);
  CARL_TRY(fill_array(&h, out));
  if (h.data_bytes) memcpy(out->data, b + h.data_off, h.data_bytes);
  return CARL_OK;
}

carl_status carl_npy_parse(const void *buf, size_t len, carl_array_t *out) {
  CARL_ASSERT(out != NULL);
  memset(out, 0, sizeof *out);
  if (!buf && len) return carl_fail(CARL_ERR_INVALID, "npy buffer: NULL with length %zu", len);
  static const unsigned char empty[1] = {0};
  carl_status st = npy_parse(buf ? buf : empty, len, out);
  if (st != CARL_OK) return carl_errctx(st, "npy buffer");
  return CARL_OK;
}

/* ---- reading a file ------------------------------------------------------------------------------ */

/* Read up to n bytes; returns the count read (short only at end of file or on error). */
static size_t read_upto(FILE *f, void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    size_t r = fread((unsigned char *)buf + got, 1, n - got, f);
    if (r == 0) break;
    got += r;
  }
  return got;
}

static carl_status npy_read_file(FILE *f, carl_array_t *out) {
  struct stat sb;
  int have_stat = fstat(fileno(f), &sb) == 0;
  if (have_stat && S_ISDIR(sb.st_mode)) return carl_fail(CARL_ERR_IO, "is a directory");
  int regular = have_stat && S_ISREG(sb.st_mode);
  unsigned char pre[12];
  size_t n = read_upto(f, pre, sizeof pre);
  if (ferror(f)) return carl_fail(CARL_ERR_IO, "read error: %s", strerror(errno));
  size_t hoff, hlen;
  CARL_TRY(parse_preamble(pre, n, &hoff, &hlen));
  /* pre holds bytes [0, n); the header starts at hoff <= n */
  char *hdr = malloc(hlen ? hlen : 1);
  if (!hdr) return carl_fail(CARL_ERR_NOMEM, "cannot allocate %zu bytes of header", hlen);
  size_t in_pre = n - hoff < hlen ? n - hoff : hlen;
  memcpy(hdr, pre + hoff, in_pre);
  size_t got = in_pre + read_upto(f, hdr + in_pre, hlen - in_pre);
  if (got < hlen) {
    free(hdr);
    if (ferror(f)) return carl_fail(CARL_ERR_IO, "read error: %s", strerror(errno));
    return carl_fail(CARL_ERR_PARSE, "truncated header: it declares %zu bytes but only %zu follow", hlen, got);
  }
  npy_header_t h;
  memset(&h, 0, sizeof h);
  carl_status st = parse_dict(hdr, hlen, &h);
  free(hdr);
  if (st != CARL_OK) return st;
  h.data_off = hoff + hlen;
  /* bytes already read past the header (only when the header is shorter than 2 bytes: n = 12) */
  size_t extra = n > h.data_off ? n - h.data_off : 0;
  if (regular) { /* check the size before allocating, so a huge shape in a small file fails fast */
    size_t have = (uint64_t)sb.st_size > h.data_off ? (size_t)((uint64_t)sb.st_size - h.data_off) : 0;
    if (have != h.data_bytes) return data_size_error(&h, have);
  }
  /* A regular file was checked to hold exactly data_bytes; from a pipe, grow the buffer as data
   * arrives so that a huge shape with little data fails as truncated, not as out of memory. */
  size_t cap = regular || h.data_bytes < ((size_t)1 << 20) ? h.data_bytes : (size_t)1 << 20;
  unsigned char *buf = malloc(cap ? cap : 1);
  if (!buf) return carl_fail(CARL_ERR_NOMEM, "cannot allocate %zu bytes of data", cap);
  size_t lead = extra < h.data_bytes ? extra : h.data_bytes;
  memcpy(buf, pre + h.data_off, lead);
  got = lead;
  for (;;) {
    got += read_upto(f, buf + got, cap - got);
    if (got < cap || cap == h.data_bytes) break;
    size_t ncap = cap > h.data_bytes / 2 ? h.data_bytes : 2 * cap;
    unsigned char *nb = realloc(buf, ncap);
    if (!nb) {
      free(buf);
      return carl_fail(CARL_ERR_NOMEM, "cannot allocate %zu bytes of data", ncap);
    }
    buf = nb;
    cap = ncap;
  }
  out->dtype = h.dtype;
  out->ndim = h.ndim;
  for (int i = 0; i < h.ndim; i++) out->shape[i] = h.shape[i];
  out->data = buf;
  st = CARL_OK;
  if (ferror(f)) {
    st = carl_fail(CARL_ERR_IO, "read error: %s", strerror(errno));
  } else if (got < h.data_bytes) {
    st = data_size_error(&h, got);
  } else if (extra > h.data_bytes || fgetc(f) != EOF) {
    /* count what follows for the message */
    size_t more = extra > h.data_bytes ? extra - h.data_bytes : 1;
    unsigned char tmp[4096];
    size_t r;
    while ((r = fread(tmp, 1, sizeof tmp, f)) > 0) more += r;
    st = data_size_error(&h, h.data_bytes + more);
  }
  if (st != CARL_OK) carl_array_free(out);
  return st;
}

carl_status carl_npy_read(const char *path, carl_array_t *out) {
  CARL_ASSERT(path != NULL && out != NULL);
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f) return carl_fail(CARL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  carl_status st = npy_read_file(f, out);
  fclose(f);
  if (st != CARL_OK) return carl_errctx(st, "%s", path);
  return CARL_OK;
}

/* ---- writing ------------------------------------------------------------------------------------- */

/* The header exactly as numpy writes it (format 1.0, or 2.0 if it would not fit in 65535 bytes),
 * padded with spaces and '\n' so that the data starts at a multiple of 64 bytes. Returns its total
 * length including the preamble, or 0 if it does not fit in cap. */
static size_t build_header(char *buf, size_t cap, const carl_array_t *a) {
  char dict[512], s[256];
  shape_str(s, sizeof s, a->ndim, a->shape);
  int dn = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                    dtype_descr(a->dtype), s);
  if (dn < 0 || (size_t)dn >= sizeof dict) return 0;
  size_t pre = 10, total = pre + (size_t)dn + 1;
  total = (total + 63) & ~(size_t)63;
  if (total - pre > 65535) { /* format 2.0; cannot happen with <= 8 dims but kept for completeness */
    pre = 12;
    total = ((pre + (size_t)dn + 1) + 63) & ~(size_t)63;
  }
  if (total > cap) return 0;
  size_t hlen = total - pre;
  memcpy(buf, NPY_MAGIC, NPY_MAGIC_LEN);
  buf[6] = pre == 10 ? 1 : 2;
  buf[7] = 0;
  buf[8] = (char)(hlen & 0xff);
  buf[9] = (char)((hlen >> 8) & 0xff);
  if (pre == 12) {
    buf[10] = (char)((hlen >> 16) & 0xff);
    buf[11] = (char)((hlen >> 24) & 0xff);
  }
  memcpy(buf + pre, dict, (size_t)dn);
  memset(buf + pre + dn, ' ', total - pre - (size_t)dn - 1);
  buf[total - 1] = '\n';
  return total;
}

carl_status carl_npy_write(const char *path, const carl_array_t *a) {
  CARL_ASSERT(path != NULL && a != NULL);
  size_t bytes;
  carl_status st = shape_size(a->dtype, a->ndim, a->shape, NULL, &bytes);
  if (st != CARL_OK) return carl_errctx(st, "%s: cannot write", path);
  if (!a->data && bytes) return carl_fail(CARL_ERR_INVALID, "%s: cannot write: data is NULL", path);
  char hdr[1024];
  size_t hn = build_header(hdr, sizeof hdr, a);
  CARL_ASSERT(hn > 0);
  carl_fs_part_t parts[2] = {{hdr, hn}, {a->data, bytes}};
  return carl_fs_write_parts(path, parts, 2);
}

carl_status carl_npy_save(const char *path, carl_dtype dt, int ndim, const int64_t *shape, const void *data) {
  carl_array_t a;
  memset(&a, 0, sizeof a);
  if (ndim < 0 || ndim > CARL_MAX_DIMS)
    return carl_fail(CARL_ERR_SHAPE, "%s: cannot write: %d dimensions (0 to %d are supported)", path, ndim, CARL_MAX_DIMS);
  a.dtype = dt;
  a.ndim = ndim;
  for (int i = 0; i < ndim; i++) a.shape[i] = shape[i];
  a.data = (void *)data;
  return carl_npy_write(path, &a);
}
