/* Capacity (kern.h): C = ceil(cf T k / E), and the drop of the lowest-priority pairs of each
 * overfull expert. */
#include <stdlib.h>

#include "kern/kern.h"

int64_t carl_kern_capacity(double cf, int64_t T, int k, int E) {
  if (cf <= 0) return 0;
  double c = ceil(cf * (double)T * (double)k / (double)E);
  return c < 1 ? 1 : (int64_t)c;
}

typedef struct {
  float prio;
  int32_t slot;
  int64_t t;
} carl__pair_t;

static int carl__pair_cmp(const void *a, const void *b) {
  const carl__pair_t *x = a, *y = b;
  if (x->prio > y->prio) return -1;
  if (x->prio < y->prio) return 1;
  if (x->t != y->t) return x->t < y->t ? -1 : 1;
  return x->slot < y->slot ? -1 : (x->slot > y->slot);
}

carl_status carl_kern_apply_capacity(int64_t T, int k, int E, int64_t C, int32_t *experts, const float *prio,
                                     float *weights, int renorm, int64_t *dropped) {
  if (C <= 0) return carl_fail(CARL_ERR_INVALID, "capacity: %lld, must be >= 1 when not dropless", (long long)C);
  int64_t *cnt = calloc((size_t)E + 1, sizeof *cnt);
  if (!cnt) return carl_fail(CARL_ERR_NOMEM, "capacity: out of memory");
  int over = 0;
  for (int64_t i = 0; i < T * k; i++)
    if (experts[i] >= 0) cnt[experts[i]]++;
  for (int e = 0; e < E; e++) over |= cnt[e] > C;
  if (!over) {
    free(cnt);
    return CARL_OK;
  }
  /* pairs of the overfull experts only */
  int64_t *off = calloc((size_t)E + 1, sizeof *off);
  if (!off) {
    free(cnt);
    return carl_fail(CARL_ERR_NOMEM, "capacity: out of memory");
  }
  for (int e = 0; e < E; e++) off[e + 1] = off[e] + (cnt[e] > C ? cnt[e] : 0);
  carl__pair_t *pairs = malloc((size_t)(off[E] > 0 ? off[E] : 1) * sizeof *pairs);
  uint8_t *touched = calloc((size_t)T, 1);
  if (!pairs || !touched) {
    free(cnt);
    free(off);
    free(pairs);
    free(touched);
    return carl_fail(CARL_ERR_NOMEM, "capacity: out of memory");
  }
  for (int e = 0; e < E; e++) cnt[e] = 0;
  for (int64_t t = 0; t < T; t++)
    for (int j = 0; j < k; j++) {
      int32_t e = experts[t * k + j];
      if (e < 0 || off[e + 1] == off[e]) continue;
      carl__pair_t p = {prio[t * k + j], j, t};
      pairs[off[e] + cnt[e]++] = p;
    }
  int64_t nd = 0;
  for (int e = 0; e < E; e++) {
    int64_t n = off[e + 1] - off[e];
    if (n <= C) continue;
    qsort(pairs + off[e], (size_t)n, sizeof *pairs, carl__pair_cmp);
    for (int64_t i = C; i < n; i++) {
      const carl__pair_t *p = &pairs[off[e] + i];
      experts[p->t * k + p->slot] = -1;
      weights[p->t * k + p->slot] = 0;
      touched[p->t] = 1;
      nd++;
    }
  }
  if (renorm) {
    for (int64_t t = 0; t < T; t++) {
      if (!touched[t]) continue;
      float a = 0;
      for (int j = 0; j < k; j++) a += weights[t * k + j];
      if (a > 0)
        for (int j = 0; j < k; j++) weights[t * k + j] /= a;
    }
  }
  *dropped += nd;
  free(cnt);
  free(off);
  free(pairs);
  free(touched);
  return CARL_OK;
}

