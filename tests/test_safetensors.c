/* safetensors: reading a fixture written by an independent python script, round trips, and every
 * kind of corrupt or truncated file giving a clear error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "carl/safetensors.h"

#define FIXTURE CARL_SOURCE_DIR "/tests/fixtures/safetensors/fixture.safetensors"

/* scripts/make_safetensors_fixture.py wrote (see its docstring):
 * b I64 [4] = 1,-2,3,-4; a F32 [2,3] = 0,.5,1,1.5,2,2.5; scalar F64 [] = 2.25; empty I32 [0];
 * c.d I32 [2,1,2] = 7,8,-9,2147483647; metadata format=pt, note="made by python". */
static void test_read_python_fixture(void **s) {
  (void)s;
  carl_st_file_t f;
  assert_int_equal(carl_st_read(FIXTURE, &f), CARL_OK);
  assert_int_equal(f.n, 5);
  float a[6];
  assert_int_equal(carl_st_get_f32(&f, "a", 2, (int64_t[]){2, 3}, a), CARL_OK);
  for (int i = 0; i < 6; i++) assert_true(a[i] == 0.5f * (float)i);
  int64_t b[4];
  assert_int_equal(carl_st_get(&f, "b", CARL_I64, 1, (int64_t[]){4}, b), CARL_OK);
  assert_true(b[0] == 1 && b[1] == -2 && b[2] == 3 && b[3] == -4);
  double sc;
  assert_int_equal(carl_st_get(&f, "scalar", CARL_F64, 0, NULL, &sc), CARL_OK);
  assert_true(sc == 2.25);
  int32_t cd[4];
  assert_int_equal(carl_st_get(&f, "c.d", CARL_I32, 3, (int64_t[]){2, 1, 2}, cd), CARL_OK);
  assert_true(cd[0] == 7 && cd[1] == 8 && cd[2] == -9 && cd[3] == 2147483647);
  const carl_st_tensor_t *e = carl_st_find(&f, "empty");
  assert_non_null(e);
  assert_int_equal(e->nbytes, 0);
  assert_int_equal(e->ndim, 1);
  assert_int_equal(e->shape[0], 0);
  assert_string_equal(carl_st_meta(&f, "format"), "pt");
  assert_string_equal(carl_st_meta(&f, "note"), "made by python");
  assert_null(carl_st_meta(&f, "absent"));
  /* wrong expectations are refused with the tensor's name and both shapes */
  assert_int_equal(carl_st_get_f32(&f, "a", 2, (int64_t[]){3, 2}, a), CARL_ERR_SHAPE);
  assert_non_null(strstr(carl_errmsg(), "'a' has shape [2,3], expected [3,2]"));
  assert_int_equal(carl_st_get_f32(&f, "b", 1, (int64_t[]){4}, a), CARL_ERR_DTYPE);
  assert_non_null(strstr(carl_errmsg(), "I64"));
  assert_int_equal(carl_st_get_f32(&f, "zz", 1, (int64_t[]){4}, a), CARL_ERR_NOT_FOUND);
  assert_non_null(strstr(carl_errmsg(), "'zz'"));
  carl_st_free(&f);
}

/* Write, then check the bytes by hand: 8-byte length multiple of 8, data laid out in the given
 * order right after the header, then read back. */
static void test_round_trip(void **s) {
  (void)s;
  float w[6] = {1, 2, 3, 4, 5, 6};
  int64_t step = 42;
  carl_st_tensor_t t[2] = {
      {.name = "w", .dtype = CARL_F32, .ndim = 2, .shape = {3, 2}, .data = w},
      {.name = "step", .dtype = CARL_I64, .ndim = 1, .shape = {1}, .data = &step},
  };
  const char *meta[] = {"format", "pt", "config", "{\"x\":1}", NULL};
  char path[] = "/tmp/carl_test_st_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(carl_st_write(path, t, 2, meta), CARL_OK);
  FILE *fp = fopen(path, "rb");
  unsigned char raw[1024];
  size_t len = fread(raw, 1, sizeof raw, fp);
  fclose(fp);
  uint64_t hl = 0;
  for (int i = 0; i < 8; i++) hl |= (uint64_t)raw[i] << (8 * i);
  assert_int_equal(hl % 8, 0);
  assert_int_equal(len, 8 + hl + 6 * 4 + 8); /* 24 bytes of floats + 8 of int64 */
  assert_memory_equal(raw + 8 + hl, w, 24);
  assert_memory_equal(raw + 8 + hl + 24, &step, 8);
  assert_int_equal(raw[8], '{');
  carl_st_file_t f;
  assert_int_equal(carl_st_read(path, &f), CARL_OK);
  float w2[6];
  int64_t step2;
  assert_int_equal(carl_st_get_f32(&f, "w", 2, (int64_t[]){3, 2}, w2), CARL_OK);
  assert_memory_equal(w, w2, sizeof w);
  assert_int_equal(carl_st_get(&f, "step", CARL_I64, 1, (int64_t[]){1}, &step2), CARL_OK);
  assert_int_equal(step2, 42);
  assert_string_equal(carl_st_meta(&f, "config"), "{\"x\":1}");
  carl_st_free(&f);
  /* refused inputs: duplicate names, reserved name, no file written for them */
  carl_st_tensor_t dup[2] = {t[0], t[0]};
  unlink(path);
  assert_int_equal(carl_st_write(path, dup, 2, NULL), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "twice"));
  assert_int_equal(access(path, F_OK), -1);
  carl_st_tensor_t bad = t[0];
  strcpy(bad.name, "__metadata__");
  assert_int_equal(carl_st_write(path, &bad, 1, NULL), CARL_ERR_INVALID);
  /* write into a missing directory: an I/O error naming the path */
  assert_int_equal(carl_st_write("/nonexistent-dir/x.safetensors", t, 2, NULL), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "/nonexistent-dir/x.safetensors"));
}

/* Build an image: 8-byte length, the header text as given, then `data_len` bytes. */
static size_t image(unsigned char *buf, const char *hdr, size_t data_len) {
  size_t hl = strlen(hdr);
  for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(buf + 8, hdr, hl);
  memset(buf + 8 + hl, 0x11, data_len);
  return 8 + hl + data_len;
}

static void expect_parse_error(const char *hdr, size_t data_len, carl_status want, const char *needle) {
  unsigned char buf[2048];
  size_t len = image(buf, hdr, data_len);
  carl_st_file_t f;
  carl_status st = carl_st_parse(buf, len, &f);
  if (st != want || !strstr(carl_errmsg(), needle))
    fail_msg("header %s: got %d '%s', want %d with '%s'", hdr, st, carl_errmsg(), want, needle);
  assert_null(f.buf);
}

static void test_corrupt(void **s) {
  (void)s;
  /* a valid image first, to show that image() builds good files: F32 [2] = 8 bytes */
  unsigned char buf[2048];
  size_t len = image(buf, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
  carl_st_file_t f;
  assert_int_equal(carl_st_parse(buf, len, &f), CARL_OK);
  carl_st_free(&f);
  /* truncated: the same image missing its last byte */
  assert_int_equal(carl_st_parse(buf, len - 1, &f), CARL_ERR_PARSE);
  assert_non_null(strstr(carl_errmsg(), "'x'"));
  assert_non_null(strstr(carl_errmsg(), "truncated"));
  /* cut inside the header, and shorter than the length field */
  assert_int_equal(carl_st_parse(buf, 20, &f), CARL_ERR_PARSE);
  assert_non_null(strstr(carl_errmsg(), "header length"));
  assert_int_equal(carl_st_parse(buf, 5, &f), CARL_ERR_PARSE);
  /* a huge length field */
  unsigned char big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
  assert_int_equal(carl_st_parse(big, sizeof big, &f), CARL_ERR_PARSE);

  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, CARL_ERR_PARSE, "header: malformed JSON");
  expect_parse_error("[1,2]", 0, CARL_ERR_PARSE, "not a JSON object");
  /* a shape whose byte size overflows 64 bits (2^32 * 2^32 elements) is named as such, not as -1 bytes */
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
                     CARL_ERR_SHAPE, "tensor 'x': shape [4294967296, 4294967296] of dtype F32 is too large (its byte size overflows)");
  expect_parse_error("{\"x\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, CARL_ERR_DTYPE, "BF16");
  expect_parse_error("{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, CARL_ERR_PARSE, "'dtype' missing");
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, CARL_ERR_PARSE, "shape entry 0");
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, CARL_ERR_PARSE, "shape entry 0");
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, CARL_ERR_PARSE, "'shape'");
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, CARL_ERR_PARSE, "data_offsets");
  /* size disagreeing with dtype x shape: F32 [3] needs 12 bytes, offsets give 8 */
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, CARL_ERR_SHAPE, "need 12");
  /* begin > end */
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8, CARL_ERR_PARSE, "outside");
  /* overlap: y starts inside x */
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, CARL_ERR_PARSE, "overlaps");
  /* hole: bytes 0..4 belong to nobody */
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, CARL_ERR_PARSE, "belong to no tensor");
  /* trailing bytes */
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, CARL_ERR_PARSE, "cover 4");
  /* duplicate names */
  expect_parse_error("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                     "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, CARL_ERR_PARSE, "twice");
  expect_parse_error("{\"__metadata__\":{\"a\":1}}", 0, CARL_ERR_PARSE, "not a string");
  /* two metadata objects (the second used to overflow the first one's table) */
  expect_parse_error("{\"__metadata__\":{\"a\":\"1\"},\"__metadata__\":{\"a\":\"1\",\"b\":\"2\"}}", 0, CARL_ERR_PARSE,
                     "__metadata__ appears twice");
  expect_parse_error("{\"x\":3}", 0, CARL_ERR_PARSE, "not an object");
  /* every single-byte truncation of the python fixture is refused, none crashes */
  char *fx;
  size_t fl;
  assert_int_equal(carl_read_file(FIXTURE, &fx, &fl), CARL_OK);
  for (size_t cut = 0; cut < fl; cut++) {
    assert_int_equal(carl_st_parse(fx, cut, &f), CARL_ERR_PARSE);
  }
  free(fx);
  /* missing file: an I/O error naming it */
  assert_int_equal(carl_st_read("/nonexistent/ck.safetensors", &f), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "/nonexistent/ck.safetensors"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_read_python_fixture),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_corrupt),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
