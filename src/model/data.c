/* Training text, byte tokenizer and the shuffling loader (carl/data.h). */
#include "carl/data.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

carl_status carl_text_load(const char *path, carl_text_t *t) {
  t->bytes = NULL;
  t->n = 0;
  struct stat sb;
  if (stat(path, &sb) != 0) {
    if (strstr(path, "data/"))
      return carl_fail(CARL_ERR_IO, "%s: corpus not prepared (file missing): run scripts/prepare_data.sh", path);
    return carl_fail(CARL_ERR_IO, "%s: file missing", path);
  }
  char *buf = NULL;
  size_t len = 0;
  CARL_TRY(carl_read_file(path, &buf, &len));
  if (len == 0) {
    free(buf);
    return carl_fail(CARL_ERR_INVALID, "%s: text file is empty", path);
  }
  t->bytes = (uint8_t *)buf;
  t->n = (int64_t)len;
  return CARL_OK;
}

carl_status carl_text_from(const void *bytes, int64_t n, carl_text_t *t) {
  t->bytes = NULL;
  t->n = 0;
  if (n < 0) return carl_fail(CARL_ERR_INVALID, "text: negative length %lld", (long long)n);
  t->bytes = malloc(n > 0 ? (size_t)n : 1);
  if (!t->bytes) return carl_fail(CARL_ERR_NOMEM, "text: out of memory for %lld bytes", (long long)n);
  if (n > 0) memcpy(t->bytes, bytes, (size_t)n);
  t->n = n;
  return CARL_OK;
}

void carl_text_free(carl_text_t *t) {
  free(t->bytes);
  t->bytes = NULL;
  t->n = 0;
}

int64_t carl_tok_encode(const void *s, int64_t n, int32_t *ids) {
  const uint8_t *p = s;
  for (int64_t i = 0; i < n; i++) ids[i] = p[i];
  return n;
}

carl_status carl_tok_decode(const int32_t *ids, int64_t n, uint8_t *out) {
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= CARL_BYTE_VOCAB)
      return carl_fail(CARL_ERR_INVALID, "token ids: id %d at position %lld is outside 0..255", ids[i],
                       (long long)i);
    out[i] = (uint8_t)ids[i];
  }
  return CARL_OK;
}

carl_status carl_loader_init(carl_loader_t *l, const carl_text_t *text, int B, int T, uint64_t seed) {
  memset(l, 0, sizeof *l);
  l->perm_epoch = -1;
  if (B < 1 || T < 1) return carl_fail(CARL_ERR_INVALID, "loader: batch %d and sequence length %d must be >= 1", B, T);
  if (!text || text->n < (int64_t)T + 1)
    return carl_fail(CARL_ERR_INVALID, "loader: text of %lld bytes is shorter than one window of %d bytes",
                     text ? (long long)text->n : 0LL, T + 1);
  l->text = text;
  l->B = B;
  l->T = T;
  l->seed = seed;
  l->windows = (text->n - 1) / T;
  l->perm = malloc((size_t)l->windows * sizeof *l->perm);
  if (!l->perm) return carl_fail(CARL_ERR_NOMEM, "loader: out of memory for %lld windows", (long long)l->windows);
  return CARL_OK;
}

/* Fisher-Yates: for i = W-1 .. 1, swap perm[i] with perm[j], j uniform in 0..i from the rng. */
static void carl__make_perm(carl_loader_t *l, int64_t epoch) {
  int64_t W = l->windows;
  for (int64_t i = 0; i < W; i++) l->perm[i] = i;
  for (int64_t i = W - 1; i > 0; i--) {
    double u = carl_rng_uniform64(l->seed, CARL_STREAM_SHUFFLE, (uint64_t)(epoch * W + i));
    int64_t j = (int64_t)(u * (double)(i + 1));
    if (j > i) j = i;
    int64_t tmp = l->perm[i];
    l->perm[i] = l->perm[j];
    l->perm[j] = tmp;
  }
  l->perm_epoch = epoch;
}

int64_t carl_loader_window(carl_loader_t *l, int64_t epoch, int64_t i) {
  CARL_ASSERT(epoch >= 0 && i >= 0 && i < l->windows);
  if (l->perm_epoch != epoch) carl__make_perm(l, epoch);
  return l->perm[i];
}

static void carl__fill(const carl_loader_t *l, int64_t w, int32_t *in, int32_t *tg) {
  const uint8_t *p = l->text->bytes + w * (int64_t)l->T;
  for (int t = 0; t < l->T; t++) {
    in[t] = p[t];
    tg[t] = p[t + 1];
  }
}

carl_status carl_loader_batch(carl_loader_t *l, int64_t step, int32_t *inputs, int32_t *targets) {
  if (step < 0) return carl_fail(CARL_ERR_INVALID, "loader: step %lld must be >= 0", (long long)step);
  for (int b = 0; b < l->B; b++) {
    int64_t j = step * l->B + b;
    int64_t w = carl_loader_window(l, j / l->windows, j % l->windows);
    carl__fill(l, w, inputs + (int64_t)b * l->T, targets + (int64_t)b * l->T);
  }
  return CARL_OK;
}

carl_status carl_loader_eval_batch(const carl_loader_t *l, int64_t first, int rows, int32_t *inputs,
                                   int32_t *targets) {
  if (first < 0 || rows < 0) return carl_fail(CARL_ERR_INVALID, "loader: eval window %lld and rows %d must be >= 0",
                                              (long long)first, rows);
  for (int r = 0; r < rows; r++) {
    int64_t w = (first + r) % l->windows;
    carl__fill(l, w, inputs + (int64_t)r * l->T, targets + (int64_t)r * l->T);
  }
  return CARL_OK;
}

void carl_loader_free(carl_loader_t *l) {
  free(l->perm);
  l->perm = NULL;
  l->perm_epoch = -1;
}
