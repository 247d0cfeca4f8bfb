/* .npy reader and writer.
 *
 * Expected values come from numpy: scripts/make_npy_fixtures.py wrote the .npy files in tests/fixtures/npy and
 * MANIFEST.txt (shape, dtype and every value as numpy.load returns it, floats as exact hex).
 * Round trips use values given by a closed formula; tests/cli/npy_numpy_roundtrip.sh runs this
 * program with `--write DIR` and checks with numpy that what we write loads to the same formula.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "carl/array.h"

#define FIXDIR CARL_SOURCE_DIR "/tests/fixtures/npy"
#define OUTDIR CARL_BINARY_DIR "/test_npy_out"

static carl_status status_from_name(const char *s) {
  if (!strcmp(s, "PARSE")) return CARL_ERR_PARSE;
  if (!strcmp(s, "DTYPE")) return CARL_ERR_DTYPE;
  if (!strcmp(s, "SHAPE")) return CARL_ERR_SHAPE;
  if (!strcmp(s, "UNSUPPORTED")) return CARL_ERR_UNSUPPORTED;
  if (!strcmp(s, "IO")) return CARL_ERR_IO;
  fail_msg("unknown status name '%s' in MANIFEST.txt", s);
  return CARL_OK;
}

static carl_dtype dtype_from_name(const char *s) {
  if (!strcmp(s, "float32")) return CARL_F32;
  if (!strcmp(s, "float64")) return CARL_F64;
  if (!strcmp(s, "int32")) return CARL_I32;
  if (!strcmp(s, "int64")) return CARL_I64;
  fail_msg("unknown dtype '%s' in MANIFEST.txt", s);
  return CARL_F32;
}

/* Element i of a equals the manifest text v (bit-exact; NaN matches any NaN). */
static void check_value(const carl_array_t *a, int64_t i, const char *v, const char *file) {
  switch (a->dtype) {
    case CARL_F32: {
      float want = (float)strtod(v, NULL), got = ((const float *)a->data)[i];
      if (isnan(want)) {
        if (!isnan(got)) fail_msg("%s[%lld]: got %a, want nan", file, (long long)i, (double)got);
      } else if (memcmp(&want, &got, sizeof want) != 0) {
        fail_msg("%s[%lld]: got %a, want %a", file, (long long)i, (double)got, (double)want);
      }
      break;
    }
    case CARL_F64: {
      double want = strtod(v, NULL), got = ((const double *)a->data)[i];
      if (isnan(want)) {
        if (!isnan(got)) fail_msg("%s[%lld]: got %a, want nan", file, (long long)i, got);
      } else if (memcmp(&want, &got, sizeof want) != 0) {
        fail_msg("%s[%lld]: got %a, want %a", file, (long long)i, got, want);
      }
      break;
    }
    case CARL_I32:
      assert_int_equal(((const int32_t *)a->data)[i], (int32_t)strtoll(v, NULL, 10));
      break;
    case CARL_I64: {
      long long want = strtoll(v, NULL, 10), got = ((const int64_t *)a->data)[i];
      if (want != got) fail_msg("%s[%lld]: got %lld, want %lld", file, (long long)i, got, want);
      break;
    }
  }
}

static int split(char *line, char **tok, int cap) {
  int n = 0;
  for (char *save = NULL, *t = strtok_r(line, " ", &save); t && n < cap; t = strtok_r(NULL, " ", &save))
    tok[n++] = t;
  return n;
}

typedef struct {
  int good, bad;
} counts_t;

/* Run every manifest line through the reader (from the file and from memory). */
static counts_t check_manifest(void) {
  char *text;
  size_t len;
  counts_t c = {0, 0};
  assert_int_equal(carl_read_file(FIXDIR "/MANIFEST.txt", &text, &len), CARL_OK);
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    if (line[0] == '#') continue;
    static char *tok[4096];
    int nt = split(line, tok, 4096);
    assert_true(nt >= 3);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", FIXDIR, tok[1]);
    char *img;
    size_t img_len;
    assert_int_equal(carl_read_file(path, &img, &img_len), CARL_OK);
    carl_array_t a, b;
    carl_status st = carl_npy_read(path, &a);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", carl_errmsg());
    carl_status st2 = carl_npy_parse(img, img_len, &b);
    if (!strcmp(tok[0], "good")) {
      if (st != CARL_OK) fail_msg("%s: %s", tok[1], carl_errmsg());
      assert_int_equal(st2, CARL_OK);
      assert_int_equal(a.dtype, dtype_from_name(tok[2]));
      assert_string_equal(carl_dtype_name(a.dtype), tok[2]);
      int ndim = atoi(tok[3]);
      assert_int_equal(a.ndim, ndim);
      assert_int_equal(b.ndim, ndim);
      for (int d = 0; d < ndim; d++) {
        assert_int_equal(a.shape[d], strtoll(tok[4 + d], NULL, 10));
        assert_int_equal(b.shape[d], a.shape[d]);
      }
      int64_t count = strtoll(tok[4 + ndim], NULL, 10);
      assert_int_equal(carl_array_numel(&a), count);
      assert_int_equal(nt, 5 + ndim + count);
      assert_non_null(a.data);
      for (int64_t i = 0; i < count; i++) {
        check_value(&a, i, tok[5 + ndim + i], tok[1]);
        check_value(&b, i, tok[5 + ndim + i], tok[1]);
      }
      carl_array_free(&a);
      carl_array_free(&b);
      c.good++;
    } else {
      assert_string_equal(tok[0], "bad");
      carl_status want = status_from_name(tok[2]);
      if (st != want) fail_msg("%s: status %s, want %s (%s)", tok[1], carl_strerror(st), carl_strerror(want), msg);
      assert_null(a.data);
      /* the message names the file and says something after the name */
      if (!strstr(msg, tok[1])) fail_msg("%s: message does not name the file: %s", tok[1], msg);
      assert_true(strlen(msg) > strlen(path) + 10);
      /* the in-memory parser agrees and names its input */
      assert_int_equal(st2, want);
      assert_null(b.data);
      assert_non_null(strstr(carl_errmsg(), "npy buffer: "));
      c.bad++;
    }
    free(img);
  }
  free(text);
  return c;
}

static void test_fixtures(void **s) {
  (void)s;
  counts_t c = check_manifest();
  /* the manifest lists every fixture file: 24 good, 33 bad as written by the script */
  assert_true(c.good >= 20);
  assert_true(c.bad >= 30);
  int files = 0;
  DIR *d = opendir(FIXDIR);
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d));)
    if (strstr(e->d_name, ".npy")) files++;
  closedir(d);
  assert_int_equal(files, c.good + c.bad);
}

/* Specific messages say what is wrong. */
static void test_messages(void **s) {
  (void)s;
  carl_array_t a;
  struct {
    const char *file, *text;
  } cases[] = {
      {"bad_magic.npy", "bad magic"},
      {"trunc_header.npy", "truncated header"},
      {"trunc_data.npy", "truncated data"},
      {"trailing_data.npy", "trailing bytes"},
      {"dtype_f2.npy", "'<f2'"},
      {"dtype_big_endian.npy", "big-endian"},
      {"dtype_bool.npy", "'|b1'"},
      {"dtype_object.npy", "'|O'"},
      {"dtype_struct.npy", "structured"},
      {"fortran.npy", "fortran_order"},
      {"dims_9.npy", "more than 8 dimensions"},
      {"shape_negative.npy", "negative"},
      {"shape_overflow.npy", "too large"},
      {"shape_huge_dim.npy", "int64 range"},
      {"shape_mismatch.npy", "(1099511627776,)"},
      {"hdr_missing_key.npy", "missing key 'fortran_order'"},
      {"hdr_extra_key.npy", "unexpected key 'x'"},
      {"bad_version.npy", "version 4.0"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", FIXDIR, cases[i].file);
    assert_int_not_equal(carl_npy_read(path, &a), CARL_OK);
    if (!strstr(carl_errmsg(), cases[i].text))
      fail_msg("%s: message '%s' lacks '%s'", cases[i].file, carl_errmsg(), cases[i].text);
  }
  assert_int_equal(carl_npy_read(FIXDIR "/no_such_file.npy", &a), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "no_such_file.npy"));
  assert_int_equal(carl_npy_read(FIXDIR, &a), CARL_ERR_IO); /* a directory */
  assert_non_null(strstr(carl_errmsg(), "fixtures/npy"));
}

/* Read a fixture through a pipe (not a regular file: no size known in advance). */
static carl_status read_via_pipe(const char *name, carl_array_t *a, char *msg, size_t cap) {
  char path[1024], fdpath[64];
  snprintf(path, sizeof path, "%s/%s", FIXDIR, name);
  char *img;
  size_t len;
  assert_int_equal(carl_read_file(path, &img, &len), CARL_OK);
  assert_true(len < 4096); /* fits in the pipe buffer, so one thread can write it all first */
  int fd[2];
  assert_int_equal(pipe(fd), 0);
  assert_int_equal(write(fd[1], img, len), (ssize_t)len);
  close(fd[1]);
  free(img);
  snprintf(fdpath, sizeof fdpath, "/dev/fd/%d", fd[0]);
  carl_status st = carl_npy_read(fdpath, a);
  snprintf(msg, cap, "%s", carl_errmsg());
  close(fd[0]);
  return st;
}

static void test_pipe(void **s) {
  (void)s;
  carl_array_t a, b;
  char msg[1024];
  assert_int_equal(read_via_pipe("f8_3d.npy", &a, msg, sizeof msg), CARL_OK);
  assert_int_equal(carl_npy_read(FIXDIR "/f8_3d.npy", &b), CARL_OK);
  assert_int_equal(a.ndim, 3);
  assert_memory_equal(a.data, b.data, 24 * sizeof(double));
  carl_array_free(&a);
  carl_array_free(&b);
  assert_int_equal(read_via_pipe("trunc_data.npy", &a, msg, sizeof msg), CARL_ERR_PARSE);
  assert_non_null(strstr(msg, "truncated data"));
  assert_null(a.data);
  assert_int_equal(read_via_pipe("trailing_data.npy", &a, msg, sizeof msg), CARL_ERR_PARSE);
  assert_non_null(strstr(msg, "8 trailing bytes"));
  /* 2^40 float32 declared, 8 bytes present: truncated, without trying to allocate 4 TiB */
  assert_int_equal(read_via_pipe("shape_mismatch.npy", &a, msg, sizeof msg), CARL_ERR_PARSE);
  assert_non_null(strstr(msg, "truncated data: 8 bytes"));
  assert_int_equal(read_via_pipe("f4_empty.npy", &a, msg, sizeof msg), CARL_OK);
  assert_int_equal(carl_array_numel(&a), 0);
  carl_array_free(&a);
}

/* A .npy image in memory with the given header text (not padded) and data. */
static size_t make_image(unsigned char *buf, const char *hdr, const void *data, size_t dlen) {
  size_t h = strlen(hdr);
  memcpy(buf, "\x93NUMPY\x01\x00", 8);
  buf[8] = (unsigned char)(h & 0xff);
  buf[9] = (unsigned char)(h >> 8);
  memcpy(buf + 10, hdr, h);
  memcpy(buf + 10 + h, data, dlen);
  return 10 + h + dlen;
}

/* Header grammar corner cases, by hand (Python literal rules written beside each case). */
static void test_header_grammar(void **s) {
  (void)s;
  static unsigned char buf[4096];
  const float d2[2] = {1.0f, 2.0f};
  struct {
    const char *hdr;
    carl_status want;
  } cases[] = {
      {"{'descr':'<f4','fortran_order':False,'shape':(2,)}", CARL_OK},
      {"{'descr':'<f4','fortran_order':False,'shape':(2,),}\n", CARL_OK},
      {"{'descr':'<f4','fortran_order':False,'shape':(1,2)}", CARL_OK},
      {"{'descr':'<f4','fortran_order':False,'shape':(2)}", CARL_ERR_PARSE},   /* (2) is an int */
      {"{'descr':'<f4','fortran_order':Falsey,'shape':(2,)}", CARL_ERR_PARSE}, /* a name, not False */
      {"{'descr':'<f4','fortran_order':True,'shape':(2,)}", CARL_ERR_UNSUPPORTED},
      {"{'descr':'<f4','descr':'<f4','fortran_order':False,'shape':(2,)}", CARL_ERR_PARSE}, /* twice */
      {"{'descr':'<f4','fortran_order':False,'shape':(2,)}}", CARL_ERR_PARSE},  /* text after */
      {"{'descr':'<f4','fortran_order':False,'shape':(2,)", CARL_ERR_PARSE},    /* no '}' */
      {"{'descr':'<f4','fortran_order':False,'shape':(0x2,)}", CARL_ERR_PARSE}, /* hex */
      {"{'descr':'<f4','fortran_order':False,'shape':(+2,)}", CARL_ERR_PARSE},
      {"{'descr':'<f4','fortran_order':False,'shape':(,)}", CARL_ERR_PARSE},
      {"{'descr':'<f4','fortran_order':False,'shape':()}", CARL_ERR_PARSE},  /* 0-d needs 4 bytes */
      {"{'descr':'<f4','fortran_order':False,'shape':(1,1,1,1,1,1,1,1,2)}", CARL_ERR_SHAPE},
      {"{'descr':'<f\\x34','fortran_order':False,'shape':(2,)}", CARL_ERR_PARSE}, /* escapes */
      {"{'descr':'>f4','fortran_order':False,'shape':(2,)}", CARL_ERR_DTYPE},
      {"{'descr':'f4','fortran_order':False,'shape':(2,)}", CARL_ERR_DTYPE},
      {"{'descr':[('a','<f4')],'fortran_order':False,'shape':(2,)}", CARL_ERR_DTYPE},
      {"{descr:'<f4','fortran_order':False,'shape':(2,)}", CARL_ERR_PARSE},
      {"", CARL_ERR_PARSE},
      {"{", CARL_ERR_PARSE},
      {"{}", CARL_ERR_PARSE},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t n = make_image(buf, cases[i].hdr, d2, sizeof d2);
    carl_array_t a;
    carl_status st = carl_npy_parse(buf, n, &a);
    if (st != cases[i].want)
      fail_msg("header %s: got %s (%s), want %s", cases[i].hdr, carl_strerror(st), carl_errmsg(),
               carl_strerror(cases[i].want));
    if (st == CARL_OK) {
      assert_int_equal(carl_array_numel(&a), 2);
      assert_true(((float *)a.data)[1] == 2.0f);
    } else {
      assert_null(a.data);
    }
    carl_array_free(&a);
  }
  /* every prefix of a valid image is refused, never read past its end (ASan checks) */
  size_t n = make_image(buf, "{'descr':'<f4','fortran_order':False,'shape':(2,)}", d2, sizeof d2);
  for (size_t k = 0; k < n; k++) {
    unsigned char *copy = malloc(k ? k : 1);
    memcpy(copy, buf, k);
    carl_array_t a;
    assert_int_equal(carl_npy_parse(copy, k, &a), CARL_ERR_PARSE);
    free(copy);
  }
  carl_array_t a;
  assert_int_equal(carl_npy_parse(NULL, 0, &a), CARL_ERR_PARSE);
  assert_int_equal(carl_npy_parse(NULL, 5, &a), CARL_ERR_INVALID);
}

/* Closed-form test values: element i of the written arrays. The same formulas are in
 * tests/cli/npy_numpy_roundtrip.sh (numpy side). */
static double formula_f(int64_t i) { return (double)(i - 7) * 0.25; }
static int64_t formula_i32(int64_t i) { return i * i - 50; }
static int64_t formula_i64(int64_t i) { return (i - 3) * 1000000007LL * 1000; }

static void fill_formula(carl_array_t *a) {
  int64_t n = carl_array_numel(a);
  for (int64_t i = 0; i < n; i++) {
    switch (a->dtype) {
      case CARL_F32: ((float *)a->data)[i] = (float)formula_f(i); break;
      case CARL_F64: ((double *)a->data)[i] = formula_f(i); break;
      case CARL_I32: ((int32_t *)a->data)[i] = (int32_t)formula_i32(i); break;
      case CARL_I64: ((int64_t *)a->data)[i] = formula_i64(i); break;
    }
  }
}

static const struct {
  int ndim;
  int64_t shape[CARL_MAX_DIMS];
  const char *tag;
} SHAPES[] = {
    {0, {0}, "0d"},        {1, {5}, "1d"},           {2, {3, 4}, "2d"},
    {3, {2, 3, 4}, "3d"},  {1, {0}, "empty"},        {3, {2, 0, 3}, "empty3d"},
    {8, {1, 2, 1, 2, 1, 1, 2, 1}, "8d"},
};
static const char *SHORT[] = {"f4", "f8", "i4", "i8"};

/* Write every dtype x shape into dir as <dtype>_<tag>.npy. */
static int write_all_formula(const char *dir) {
  for (int dt = 0; dt < 4; dt++)
    for (size_t k = 0; k < sizeof SHAPES / sizeof SHAPES[0]; k++) {
      carl_array_t a;
      if (carl_array_alloc(&a, (carl_dtype)dt, SHAPES[k].ndim, SHAPES[k].shape) != CARL_OK) return -1;
      fill_formula(&a);
      char path[1024];
      snprintf(path, sizeof path, "%s/%s_%s.npy", dir, SHORT[dt], SHAPES[k].tag);
      carl_status st = carl_npy_write(path, &a);
      carl_array_free(&a);
      if (st != CARL_OK) {
        fprintf(stderr, "%s\n", carl_errmsg());
        return -1;
      }
    }
  return 0;
}

static void test_roundtrip(void **s) {
  (void)s;
  mkdir(OUTDIR, 0755);
  assert_int_equal(write_all_formula(OUTDIR), 0);
  assert_int_equal(write_all_formula(OUTDIR), 0); /* overwriting existing files */
  for (int dt = 0; dt < 4; dt++)
    for (size_t k = 0; k < sizeof SHAPES / sizeof SHAPES[0]; k++) {
      char path[1024];
      snprintf(path, sizeof path, "%s/%s_%s.npy", OUTDIR, SHORT[dt], SHAPES[k].tag);
      carl_array_t a, want;
      assert_int_equal(carl_npy_read(path, &a), CARL_OK);
      assert_int_equal(carl_array_alloc(&want, (carl_dtype)dt, SHAPES[k].ndim, SHAPES[k].shape), CARL_OK);
      fill_formula(&want);
      assert_int_equal(a.dtype, dt);
      assert_int_equal(a.ndim, SHAPES[k].ndim);
      for (int d = 0; d < a.ndim; d++) assert_int_equal(a.shape[d], SHAPES[k].shape[d]);
      size_t bytes = (size_t)carl_array_numel(&a) * carl_dtype_size(a.dtype);
      if (bytes) assert_memory_equal(a.data, want.data, bytes);
      /* the file: format 1.0 preamble, data starting on a 64-byte boundary, header ends in '\n' */
      char *img;
      size_t len;
      assert_int_equal(carl_read_file(path, &img, &len), CARL_OK);
      assert_memory_equal(img, "\x93NUMPY\x01\x00", 8);
      size_t hlen = (unsigned char)img[8] | (size_t)(unsigned char)img[9] << 8;
      assert_int_equal((10 + hlen) % 64, 0);
      assert_int_equal(img[10 + hlen - 1], '\n');
      assert_int_equal(len, 10 + hlen + bytes);
      assert_int_equal(memcmp(img + 10 + hlen, want.data, bytes), 0);
      free(img);
      carl_array_free(&a);
      carl_array_free(&want);
    }
  /* no temporary files are left behind */
  DIR *d = opendir(OUTDIR);
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d));) assert_null(strstr(e->d_name, ".tmp"));
  closedir(d);

  /* a larger array (4 MiB) through carl_npy_save */
  const int64_t shape[2] = {1024, 1024};
  float *big = malloc(sizeof(float) * 1024 * 1024);
  for (int i = 0; i < 1024 * 1024; i++) big[i] = (float)formula_f(i);
  assert_int_equal(carl_npy_save(OUTDIR "/big.npy", CARL_F32, 2, shape, big), CARL_OK);
  carl_array_t a;
  assert_int_equal(carl_npy_read(OUTDIR "/big.npy", &a), CARL_OK);
  assert_int_equal(carl_array_expect(&a, "big", CARL_F32, 2), CARL_OK);
  assert_memory_equal(a.data, big, sizeof(float) * 1024 * 1024);
  carl_array_free(&a);
  free(big);
  remove(OUTDIR "/big.npy");
}

static void test_write_errors(void **s) {
  (void)s;
  carl_array_t a;
  const int64_t shape[1] = {3};
  assert_int_equal(carl_array_alloc(&a, CARL_F32, 1, shape), CARL_OK);
  assert_int_equal(carl_npy_write(OUTDIR "/no/such/dir/x.npy", &a), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "no/such/dir/x.npy"));
  a.shape[0] = -1;
  assert_int_equal(carl_npy_write(OUTDIR "/neg.npy", &a), CARL_ERR_SHAPE);
  assert_non_null(strstr(carl_errmsg(), "neg.npy"));
  a.shape[0] = 3;
  void *keep = a.data;
  a.data = NULL;
  assert_int_equal(carl_npy_write(OUTDIR "/null.npy", &a), CARL_ERR_INVALID);
  a.data = keep;
  a.ndim = 9;
  assert_int_equal(carl_npy_write(OUTDIR "/nine.npy", &a), CARL_ERR_SHAPE);
  a.ndim = 1;
  carl_array_free(&a);
  assert_int_equal(carl_npy_save(OUTDIR "/nine.npy", CARL_F32, 9, shape, NULL), CARL_ERR_SHAPE);
  /* a failed write leaves the previous file intact */
  mkdir(OUTDIR, 0755);
  const float one[1] = {1.0f};
  const int64_t s1[1] = {1};
  assert_int_equal(carl_npy_save(OUTDIR "/keep.npy", CARL_F32, 1, s1, one), CARL_OK);
  const int64_t bad[1] = {-5};
  assert_int_not_equal(carl_npy_save(OUTDIR "/keep.npy", CARL_F32, 1, bad, one), CARL_OK);
  assert_int_equal(carl_npy_read(OUTDIR "/keep.npy", &a), CARL_OK);
  assert_true(((float *)a.data)[0] == 1.0f);
  carl_array_free(&a);
}

static void test_array_helpers(void **s) {
  (void)s;
  assert_int_equal(carl_dtype_size(CARL_F32), 4);
  assert_int_equal(carl_dtype_size(CARL_F64), 8);
  assert_int_equal(carl_dtype_size(CARL_I32), 4);
  assert_int_equal(carl_dtype_size(CARL_I64), 8);
  assert_string_equal(carl_dtype_name(CARL_F64), "float64");
  assert_string_equal(carl_dtype_name(CARL_I32), "int32");
  carl_array_t a;
  const int64_t shape[3] = {2, 3, 5};
  assert_int_equal(carl_array_alloc(&a, CARL_I64, 3, shape), CARL_OK);
  assert_int_equal(carl_array_numel(&a), 30); /* 2*3*5 */
  for (int i = 0; i < 30; i++) assert_int_equal(((int64_t *)a.data)[i], 0);
  assert_int_equal(carl_array_expect(&a, "counts", CARL_I64, 3), CARL_OK);
  assert_int_equal(carl_array_expect(&a, "counts", CARL_I64, -1), CARL_OK); /* any ndim */
  assert_int_equal(carl_array_expect(&a, "counts", CARL_F32, 3), CARL_ERR_DTYPE);
  assert_string_equal(carl_errmsg(), "counts: expected dtype float32, got int64");
  assert_int_equal(carl_array_expect(&a, "counts", CARL_I64, 2), CARL_ERR_SHAPE);
  assert_string_equal(carl_errmsg(), "counts: expected 2 dimensions, got 3 (shape (2, 3, 5))");
  carl_array_free(&a);
  assert_null(a.data);
  carl_array_free(&a); /* twice is harmless */
  const int64_t huge[2] = {INT64_MAX / 2, 3};
  assert_int_equal(carl_array_alloc(&a, CARL_F32, 2, huge), CARL_ERR_SHAPE);
  assert_null(a.data);
  const int64_t zero[2] = {0, 7};
  assert_int_equal(carl_array_alloc(&a, CARL_F32, 2, zero), CARL_OK);
  assert_int_equal(carl_array_numel(&a), 0);
  assert_non_null(a.data);
  carl_array_free(&a);
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "--write")) return write_all_formula(argv[2]) == 0 ? 0 : 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fixtures),      cmocka_unit_test(test_messages), cmocka_unit_test(test_pipe),
      cmocka_unit_test(test_header_grammar), cmocka_unit_test(test_roundtrip),
      cmocka_unit_test(test_write_errors),  cmocka_unit_test(test_array_helpers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
