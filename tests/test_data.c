/* Data: byte tokenizer, text loading errors, the shuffling loader (windows, permutation, resume). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "carl/data.h"

/* Bytes are their own ids; decode inverts encode; ids outside 0..255 are refused by position. */
static void test_tokenizer(void **s) {
  (void)s;
  const char txt[] = "In the beginning\n\xc3\xa9"; /* includes two bytes >= 128 (UTF-8 e-acute) */
  int64_t n = (int64_t)strlen(txt);
  int32_t ids[32];
  uint8_t back[32];
  assert_int_equal(carl_tok_encode(txt, n, ids), n);
  assert_int_equal(ids[0], 'I');  /* 73 */
  assert_int_equal(ids[2], ' ');  /* 32 */
  assert_int_equal(ids[16], '\n'); /* 10 */
  assert_int_equal(ids[17], 0xc3); /* 195, not sign-extended */
  assert_int_equal(ids[18], 0xa9); /* 169 */
  assert_int_equal(carl_tok_decode(ids, n, back), CARL_OK);
  assert_memory_equal(back, txt, (size_t)n);
  ids[3] = 256;
  assert_int_equal(carl_tok_decode(ids, n, back), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "position 3"));
  ids[3] = -1;
  assert_int_equal(carl_tok_decode(ids, n, back), CARL_ERR_INVALID);
}

/* Missing, empty and unprepared corpus files give clear errors. */
static void test_text_errors(void **s) {
  (void)s;
  carl_text_t t;
  assert_int_equal(carl_text_load("data/no-such-corpus.txt", &t), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "scripts/prepare_data.sh"));
  assert_null(t.bytes);
  char path[] = "/tmp/carl_test_data_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(carl_text_load(path, &t), CARL_ERR_INVALID);
  assert_non_null(strstr(carl_errmsg(), "empty"));
  FILE *f = fopen(path, "wb");
  fputs("abc", f);
  fclose(f);
  assert_int_equal(carl_text_load(path, &t), CARL_OK);
  assert_int_equal(t.n, 3);
  assert_memory_equal(t.bytes, "abc", 3);
  carl_text_free(&t);
  unlink(path);
}

/* Text "abcdefghijklmnopqrstu" (21 bytes), T = 4: W = floor(20/4) = 5 windows starting at bytes
 * 0,4,8,12,16, each T+1 = 5 bytes long: "abcde" "efghi" "ijklm" "mnopq" "qrstu". */
static void test_loader_windows(void **s) {
  (void)s;
  carl_text_t t;
  assert_int_equal(carl_text_from("abcdefghijklmnopqrstu", 21, &t), CARL_OK);
  carl_loader_t l;
  assert_int_equal(carl_loader_init(&l, &t, 1, 4, 7), CARL_OK);
  assert_int_equal(l.windows, 5);
  int32_t x[4], y[4];
  /* one epoch of B=1 batches visits every window exactly once */
  int seen[5] = {0};
  for (int step = 0; step < 5; step++) {
    assert_int_equal(carl_loader_batch(&l, step, x, y), CARL_OK);
    assert_int_equal((x[0] - 'a') % 4, 0);
    int w = (x[0] - 'a') / 4;
    assert_true(w >= 0 && w < 5);
    seen[w]++;
    for (int i = 0; i < 4; i++) {
      assert_int_equal(x[i], 'a' + 4 * w + i);
      assert_int_equal(y[i], 'a' + 4 * w + i + 1); /* next byte */
    }
  }
  for (int w = 0; w < 5; w++) assert_int_equal(seen[w], 1);
  /* unshuffled validation windows: 0 and 1, then wrap-around 4 -> 0 */
  int32_t ex[8], ey[8];
  assert_int_equal(carl_loader_eval_batch(&l, 0, 2, ex, ey), CARL_OK);
  static const int32_t want_x[8] = {'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'};
  static const int32_t want_y[8] = {'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'};
  assert_memory_equal(want_x, ex, sizeof ex);
  assert_memory_equal(want_y, ey, sizeof ey);
  assert_int_equal(carl_loader_eval_batch(&l, 4, 2, ex, ey), CARL_OK);
  assert_int_equal(ex[0], 'q');
  assert_int_equal(ex[4], 'a');
  carl_loader_free(&l);
  /* bad sizes */
  assert_int_equal(carl_loader_init(&l, &t, 1, 21, 7), CARL_ERR_INVALID); /* needs 22 bytes */
  assert_non_null(strstr(carl_errmsg(), "21 bytes"));
  assert_int_equal(carl_loader_init(&l, &t, 0, 4, 7), CARL_ERR_INVALID);
  assert_int_equal(carl_loader_init(&l, &t, 1, 20, 7), CARL_OK); /* exactly one window */
  assert_int_equal(l.windows, 1);
  carl_loader_free(&l);
  carl_text_free(&t);
}

/* The permutation equals a Fisher-Yates shuffle written here from the same rng draws, every epoch
 * is a permutation, epochs and seeds differ, and a batch depends only on (seed, step). */
static void test_loader_shuffle(void **s) {
  (void)s;
  enum { N = 4001, T = 4, B = 3 }; /* W = 1000 */
  uint8_t *buf = malloc(N);
  for (int i = 0; i < N; i++) buf[i] = (uint8_t)(i * 7 + 3);
  carl_text_t t;
  assert_int_equal(carl_text_from(buf, N, &t), CARL_OK);
  carl_loader_t a, b, c;
  assert_int_equal(carl_loader_init(&a, &t, B, T, 1234), CARL_OK);
  assert_int_equal(carl_loader_init(&b, &t, B, T, 1234), CARL_OK);
  assert_int_equal(carl_loader_init(&c, &t, B, T, 1235), CARL_OK);
  const int64_t W = a.windows;
  assert_int_equal(W, 1000);
  int64_t *ref = malloc(W * sizeof *ref);
  char *hit = calloc(1000, 1);
  for (int64_t epoch = 0; epoch < 3; epoch++) {
    for (int64_t i = 0; i < W; i++) ref[i] = i;
    for (int64_t i = W - 1; i > 0; i--) {
      double u = carl_rng_uniform64(1234, CARL_STREAM_SHUFFLE, (uint64_t)(epoch * W + i));
      int64_t j = (int64_t)(u * (double)(i + 1));
      int64_t tmp = ref[i];
      ref[i] = ref[j];
      ref[j] = tmp;
    }
    memset(hit, 0, 1000);
    int64_t fixed = 0, same_as_c = 0;
    for (int64_t i = 0; i < W; i++) {
      int64_t w = carl_loader_window(&a, epoch, i);
      assert_int_equal(w, ref[i]);
      assert_int_equal(hit[w], 0);
      hit[w] = 1;
      fixed += (w == i);
    }
    for (int64_t i = 0; i < W; i++) same_as_c += carl_loader_window(&c, epoch, i) == carl_loader_window(&a, epoch, i);
    /* a random permutation of 1000 has ~1 fixed point; identical orders would give 1000 */
    assert_true(fixed < 20);
    assert_true(same_as_c < 20);
  }
  /* resume: a fresh loader asked for step 700 (epoch 2) gives what a loader that walked 0..700 gives */
  int32_t x1[B * T], y1[B * T], x2[B * T], y2[B * T];
  for (int64_t step = 0; step <= 700; step++) assert_int_equal(carl_loader_batch(&a, step, x1, y1), CARL_OK);
  assert_int_equal(carl_loader_batch(&b, 700, x2, y2), CARL_OK);
  assert_memory_equal(x1, x2, sizeof x1);
  assert_memory_equal(y1, y2, sizeof y1);
  /* sample j = 700*3 + b lies in epoch 2 at position 100 + b: window ref (epoch 2) */
  for (int bb = 0; bb < B; bb++) assert_int_equal(x1[bb * T], buf[ref[100 + bb] * T]);
  assert_int_equal(carl_loader_batch(&a, -1, x1, y1), CARL_ERR_INVALID);
  free(ref);
  free(hit);
  carl_loader_free(&a);
  carl_loader_free(&b);
  carl_loader_free(&c);
  carl_text_free(&t);
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tokenizer),
      cmocka_unit_test(test_text_errors),
      cmocka_unit_test(test_loader_windows),
      cmocka_unit_test(test_loader_shuffle),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
