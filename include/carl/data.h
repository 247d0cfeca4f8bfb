/* carl/data.h: training text, the byte-level tokenizer and a shuffling data loader.
 *
 * Usage:
 *   carl_text_t train;
 *   CARL_TRY(carl_text_load("data/kjv.train.txt", &train));     // owns train.bytes
 *   carl_loader_t ld;
 *   CARL_TRY(carl_loader_init(&ld, &train, B, T, seed));        // borrows train
 *   int32_t x[B * T], y[B * T];
 *   CARL_TRY(carl_loader_batch(&ld, step, x, y));                // y[b,t] = x[b,t+1] in the text
 *   carl_loader_free(&ld);
 *   carl_text_free(&train);
 *
 * Tokenizer: one token per byte (vocabulary 256), so cross-entropy in nats / ln 2 is bits per byte.
 *
 * Loader: the text is cut into W = floor((n - 1) / T) windows of T + 1 bytes that overlap by one
 * byte (window w starts at byte w*T). Sample j (= step * B + b) is window perm_e[j mod W] of
 * epoch e = j / W, where perm_e is a Fisher-Yates permutation drawn from carl_rng with
 * (seed, CARL_STREAM_SHUFFLE, e * W + i). A batch is a pure function of (seed, step): resuming
 * at step s gives the same batches as an uninterrupted run, with no loader state to save.
 * The loader caches the permutation of the last epoch it used (so it is not thread-safe).
 *
 * Validation: carl_loader_eval_batch gives the windows in order (no shuffling), so a validation
 * pass over windows 0..n_eval-1 is the same set every time.
 *
 * Ownership: carl_text_t owns its bytes (carl_text_free). The loader borrows the text (keep it
 * alive) and owns its permutation cache (carl_loader_free).
 */
#ifndef CARL_DATA_H
#define CARL_DATA_H

#include "carl/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CARL_BYTE_VOCAB 256

typedef struct {
  uint8_t *bytes; /* [n] */
  int64_t n;
} carl_text_t;

/* Read a whole text file. An empty or missing file is an error naming the path; a missing file
 * under data/ also says to run scripts/prepare_data.sh. */
carl_status carl_text_load(const char *path, carl_text_t *t);
/* Copy n bytes into a text (used by tests and by the sampler's prompt). */
carl_status carl_text_from(const void *bytes, int64_t n, carl_text_t *t);
void carl_text_free(carl_text_t *t);

/* ---- byte tokenizer ---------------------------------------------------------------------------- */
/* ids[i] = (uint8_t)s[i]. Returns n. */
int64_t carl_tok_encode(const void *s, int64_t n, int32_t *ids /* [n] */);
/* out[i] = ids[i]; an id outside 0..255 is an error naming its position. */
carl_status carl_tok_decode(const int32_t *ids /* [n] */, int64_t n, uint8_t *out /* [n] */);

/* ---- loader ------------------------------------------------------------------------------------ */
typedef struct {
  const carl_text_t *text; /* borrowed */
  int B, T;
  uint64_t seed;
  int64_t windows;     /* W = floor((n - 1) / T) */
  int64_t perm_epoch;  /* epoch whose permutation is cached, -1 none */
  int64_t *perm;       /* [W] window order of perm_epoch */
} carl_loader_t;

/* Errors: B or T < 1, or a text too short for one window of T + 1 bytes (names both sizes). */
carl_status carl_loader_init(carl_loader_t *l, const carl_text_t *text, int B, int T, uint64_t seed);
/* inputs[b,t] = text[start_b + t], targets[b,t] = text[start_b + t + 1], start_b from the shuffle
 * of sample step*B + b. step must be >= 0. */
carl_status carl_loader_batch(carl_loader_t *l, int64_t step, int32_t *inputs /* [B, T] */,
                              int32_t *targets /* [B, T] */);
/* Window w of the epoch-e order (the permutation itself; for tests and inspection). */
int64_t carl_loader_window(carl_loader_t *l, int64_t epoch, int64_t i);
/* Unshuffled windows first .. first+rows-1 (taken mod W), for validation. */
carl_status carl_loader_eval_batch(const carl_loader_t *l, int64_t first, int rows,
                                   int32_t *inputs /* [rows, T] */, int32_t *targets /* [rows, T] */);
void carl_loader_free(carl_loader_t *l);

#ifdef __cplusplus
}
#endif
#endif
