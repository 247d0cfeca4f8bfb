/* Core: status/detail messages, Philox4x32-10 known-answer vectors, arena, atomic file writes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/core.h"

/* Known-answer vectors of Random123 (kat_vectors, "philox4x32 10"). */
static void test_philox_kat(void **s) {
  (void)s;
  static const struct {
    uint32_t ctr[4], key[2], out[4];
  } kat[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
    uint32_t out[4];
    carl_philox4x32_10(kat[i].ctr, kat[i].key, out);
    for (int j = 0; j < 4; j++) assert_int_equal(out[j], kat[i].out[j]);
  }
}

/* Uniforms lie in [0,1) and have mean 1/2 and variance 1/12 (closed form) within 5 sigma. */
static void test_rng_moments(void **s) {
  (void)s;
  const int n = 200000;
  double m = 0, v = 0, nm = 0, nv = 0;
  for (int i = 0; i < n; i++) {
    float u = carl_rng_uniform(42, CARL_STREAM_DATA, (uint64_t)i);
    assert_true(u >= 0.0f && u < 1.0f);
    m += u;
    v += (u - 0.5) * (u - 0.5);
    float g = carl_rng_normal(42, CARL_STREAM_INIT, (uint64_t)i);
    nm += g;
    nv += (double)g * g;
  }
  m /= n; v /= n; nm /= n; nv /= n;
  assert_true(fabs(m - 0.5) < 5 * sqrt(1.0 / 12 / n));
  assert_true(fabs(v - 1.0 / 12) < 5 * sqrt(1.0 / 180.0 / n));
  assert_true(fabs(nm) < 5 * sqrt(1.0 / n));
  assert_true(fabs(nv - 1.0) < 5 * sqrt(2.0 / n));
  /* different streams give different numbers for the same index */
  assert_true(carl_rng_uniform(42, 1, 7) != carl_rng_uniform(42, 2, 7));
}

static void test_status(void **s) {
  (void)s;
  carl_status st = carl_fail(CARL_ERR_SHAPE, "expected %d dims", 2);
  assert_int_equal(st, CARL_ERR_SHAPE);
  assert_string_equal(carl_errmsg(), "expected 2 dims");
  carl_errctx(st, "%s", "logits.npy");
  assert_string_equal(carl_errmsg(), "logits.npy: expected 2 dims");
  assert_string_equal(carl_strerror(CARL_OK), "ok");
  assert_string_equal(carl_strerror((carl_status)-999), "unknown status");
}

static void test_arena(void **s) {
  (void)s;
  carl_arena_t a;
  carl_arena_init(&a, 256);
  char *p = carl_arena_alloc(&a, 100);
  char *q = carl_arena_alloc(&a, 1000); /* larger than a block */
  assert_non_null(p);
  assert_non_null(q);
  assert_int_equal((uintptr_t)p % 64, 0);
  assert_int_equal((uintptr_t)q % 64, 0);
  memset(p, 1, 100);
  memset(q, 2, 1000);
  assert_int_equal(p[99], 1);
  carl_arena_reset(&a);
  char *r = carl_arena_alloc(&a, 10);
  assert_int_equal(r[0], 0); /* zero-filled */
  carl_arena_free(&a);
}

static void test_atomic_write(void **s) {
  (void)s;
  const char *path = CARL_BINARY_DIR "/test_core_atomic.txt";
  assert_int_equal(carl_write_file_atomic(path, "hello", 5), CARL_OK);
  char *buf;
  size_t len;
  assert_int_equal(carl_read_file(path, &buf, &len), CARL_OK);
  assert_int_equal(len, 5);
  assert_string_equal(buf, "hello");
  free(buf);
  remove(path);
  assert_int_equal(carl_read_file(CARL_BINARY_DIR "/no/such/file", &buf, &len), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "no/such/file"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_philox_kat), cmocka_unit_test(test_rng_moments), cmocka_unit_test(test_status),
      cmocka_unit_test(test_arena), cmocka_unit_test(test_atomic_write),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
