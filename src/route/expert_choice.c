/* expert_choice: Expert Choice routing (Zhou et al., NeurIPS 2022). s = softmax(z); each expert
 * takes its C = ceil(cf * T * k / E) best tokens by s[., e] (cf = 1 when the capacity_factor option
 * is 0; C <= T); equal scores: the lower token index first. The output holds at most k experts per
 * token: a token chosen by more than k experts keeps its k best (by s; lower expert on ties), and
 * each expert left below C then takes its next best tokens that still have a free slot (experts
 * in index order). Where that greedy fill leaves fewer than min(T k, C E) pairs, augmenting paths
 * in the token-slot / expert-capacity graph move slots until it has that many (ec_augment), so
 * every expert holds exactly C tokens when T k >= C E and every token k distinct experts when
 * T k <= C E. Gates = s (not renormalised by default). Not causal: an expert's choice depends on
 * the whole batch. */
#include <stdlib.h>

#include "route/router_impl.h"

typedef struct {
  float s;
  int32_t t;
} ec_pair_t;

/* Order: larger s first, then lower token index. */
static inline int ec_before(ec_pair_t a, ec_pair_t b) { return a.s > b.s || (a.s == b.s && a.t < b.t); }

static int ec_cmp(const void *x, const void *y) {
  ec_pair_t a = *(const ec_pair_t *)x, b = *(const ec_pair_t *)y;
  return ec_before(a, b) ? -1 : (ec_before(b, a) ? 1 : 0);
}

/* Put the m first elements (in ec order) in a[0..m-1] (unordered). Quickselect. */
static void ec_select(ec_pair_t *a, int64_t n, int64_t m) {
  int64_t lo = 0, hi = n - 1, want = m - 1;
  if (m <= 0 || m >= n) return;
  while (lo < hi) {
    ec_pair_t piv = a[lo + (hi - lo) / 2];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (ec_before(a[i], piv)) i++;
      while (ec_before(piv, a[j])) j--;
      if (i <= j) {
        ec_pair_t tmp = a[i];
        a[i] = a[j];
        a[j] = tmp;
        i++;
        j--;
      }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else return;
  }
}

/* Insert expert e into token t's slot list ex[0..n-1] (descending s, lower expert on ties). */
static void ec_insert(int32_t *ex, int n, const float *st /* [E] */, int32_t e) {
  int p = n;
  while (p > 0 && (st[ex[p - 1]] < st[e] || (st[ex[p - 1]] == st[e] && ex[p - 1] > e))) {
    ex[p] = ex[p - 1];
    p--;
  }
  ex[p] = e;
}

static int ec_has(const int32_t *ex, int n, int32_t e) {
  for (int j = 0; j < n; j++)
    if (ex[j] == e) return 1;
  return 0;
}

/* Raise the number of (token, expert) pairs to want = min(T k, C E), the most the graph allows
 * (tokens hold at most k distinct experts, experts at most C tokens; k <= E and C <= T, so the
 * assignment of slot i = t k + j to expert i mod E reaches it). One augmenting path per missing
 * pair: a breadth-first search over experts, from every expert below C, where x reaches f when a
 * full token holds f and not x (it could swap f for x), and the path ends at an expert that a
 * token with a free slot does not hold. The path is then applied from its end: the last expert
 * takes the free token with the largest s[t, .], and each step's token is the full one that loses
 * least, s[t, x] - s[t, f] largest (lower token on ties), looked up in f's list of tokens. Every
 * token keeps distinct experts, no expert loses a token, the root gains one. experts [T, k] (each
 * token's cnt[t] kept experts by descending s, then -1), cnt [T] and load [E] are updated. */
static carl_status ec_augment(const float *s /* [T, E] */, int64_t T, int E, int k, int64_t C, int32_t *experts,
                              int32_t *cnt, int64_t *load, int64_t assigned) {
  const int64_t want = T * k < C * E ? T * k : C * E;
  if (assigned >= want) return CARL_OK;
  int64_t nfree = 0;
  for (int64_t t = 0; t < T; t++) nfree += cnt[t] < k;
  int32_t *queue = malloc((size_t)E * sizeof *queue);
  int32_t *from = malloc((size_t)E * sizeof *from); /* the expert that reached f (-1: a root) */
  uint8_t *seen = malloc((size_t)E);
  int64_t *freet = malloc((size_t)(nfree ? nfree : 1) * sizeof *freet); /* tokens with a free slot */
  /* [E, C + 1] the tokens of each expert (one more than C: the path's last expert briefly holds
   * C + 1), nmem [E] their counts */
  int32_t *mem = malloc((size_t)E * (size_t)(C + 1) * sizeof *mem);
  int64_t *nmem = calloc((size_t)E, sizeof *nmem);
  carl_status rc = CARL_OK;
  if (!queue || !from || !seen || !freet || !mem || !nmem)
    rc = carl_fail(CARL_ERR_NOMEM, "expert_choice: out of memory (E = %d, C = %lld)", E, (long long)C);
  nfree = 0;
  for (int64_t t = 0; rc == CARL_OK && t < T; t++) {
    if (cnt[t] < k) freet[nfree++] = t;
    for (int j = 0; j < cnt[t]; j++) {
      const int32_t e = experts[t * k + j];
      mem[(int64_t)e * (C + 1) + nmem[e]++] = (int32_t)t;
    }
  }
  while (rc == CARL_OK && assigned < want) {
    int head = 0, tail = 0, unseen = 0;
    for (int e = 0; e < E; e++) {
      seen[e] = load[e] < C;
      from[e] = -1;
      if (seen[e]) queue[tail++] = e;
      else unseen++;
    }
    int32_t end_x = -1;
    int64_t end_t = -1;
    while (head < tail) {
      const int32_t x = queue[head++];
      for (int64_t i = 0; i < nfree; i++) { /* a free token without x ends the path */
        const int64_t t = freet[i];
        if (!ec_has(experts + t * k, cnt[t], x) && (end_t < 0 || s[t * E + x] > s[end_t * E + x] ||
                                                     (s[t * E + x] == s[end_t * E + x] && t < end_t)))
          end_t = t;
      }
      if (end_t >= 0) {
        end_x = x;
        break;
      }
      for (int64_t t = 0; t < T && unseen > 0; t++) { /* the experts x reaches, in token order */
        const int32_t *ex = experts + t * k;
        if (cnt[t] < k || ec_has(ex, k, x)) continue;
        for (int j = 0; j < k; j++)
          if (!seen[ex[j]]) {
            seen[ex[j]] = 1;
            from[ex[j]] = x;
            queue[tail++] = ex[j];
            unseen--;
          }
      }
    }
    if (end_x < 0) break; /* no augmenting path: cannot happen while assigned < want */
    ec_insert(experts + end_t * k, cnt[end_t], s + end_t * E, end_x);
    mem[(int64_t)end_x * (C + 1) + nmem[end_x]++] = (int32_t)end_t;
    if (++cnt[end_t] == k) /* the token is full: out of the free list */
      for (int64_t i = 0; i < nfree; i++)
        if (freet[i] == end_t) {
          freet[i] = freet[--nfree];
          break;
        }
    for (int32_t f = end_x; from[f] >= 0; f = from[f]) { /* from[f] takes a token of f's */
      const int32_t x = from[f];
      int32_t *mf = mem + (int64_t)f * (C + 1);
      int64_t best = -1, bi = -1;
      float bg = 0;
      for (int64_t i = 0; i < nmem[f]; i++) {
        const int64_t t = mf[i];
        if (cnt[t] < k || ec_has(experts + t * k, k, x)) continue;
        const float g = s[t * E + x] - s[t * E + f];
        if (best < 0 || g > bg || (g == bg && t < best)) {
          best = t;
          bi = i;
          bg = g;
        }
      }
      /* the search's witness is still there: only other experts were swapped in or out */
      CARL_ASSERT(best >= 0);
      mf[bi] = mf[--nmem[f]];
      mem[(int64_t)x * (C + 1) + nmem[x]++] = (int32_t)best;
      int32_t *ex = experts + best * k;
      int j = 0;
      while (ex[j] != f) j++;
      for (; j + 1 < k; j++) ex[j] = ex[j + 1];
      ec_insert(ex, k - 1, s + best * E, x);
    }
    int32_t root = end_x;
    while (from[root] >= 0) root = from[root];
    load[root]++;
    assigned++;
  }
  free(queue);
  free(from);
  free(seen);
  free(freet);
  free(mem);
  free(nmem);
  return rc;
}

static carl_status ec_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  carl_route_common_t c;
  carl_route_common(r, &c);
  const int64_t T = in->T;
  const int E = in->E, k = c.k;
  if (T > INT32_MAX) return carl_fail(CARL_ERR_INVALID, "expert_choice: T = %lld tokens is too many", (long long)T);
  int64_t C = carl_kern_capacity(c.cf > 0 ? c.cf : 1.0, T, k, E);
  if (C > T) C = T;
  float *s = malloc((size_t)T * (size_t)E * sizeof *s);
  int32_t *chosen = malloc((size_t)E * (size_t)C * sizeof *chosen); /* [E, C] tokens, -1 free */
  int32_t *cnt = calloc((size_t)T, sizeof *cnt);
  int64_t *load = calloc((size_t)E, sizeof *load);
  carl_status rc = CARL_OK;
  if (!s || !chosen || !cnt || !load) rc = carl_fail(CARL_ERR_NOMEM, "expert_choice: out of memory (T = %lld, E = %d)", (long long)T, E);
  if (rc == CARL_OK) rc = carl_route_scores(r, in->logits, T, E, c.score, s);
  int nomem = 0;
  if (rc == CARL_OK) {
    /* 1. each expert picks its top C tokens; the columns of 16 experts are gathered in one pass
     *    over the scores (one cache line per token) */
    enum { EC_CHUNK = 16 };
    const int nchunk = (E + EC_CHUNK - 1) / EC_CHUNK;
#pragma omp parallel if((int64_t)T * E >= CARL_OMP_MIN_WORK) reduction(| : nomem)
    {
      ec_pair_t *col = malloc((size_t)T * EC_CHUNK * sizeof *col);
      if (!col) nomem = 1;
#pragma omp for schedule(dynamic, 1)
      for (int ch = 0; ch < nchunk; ch++) {
        if (!col) continue;
        const int e0 = ch * EC_CHUNK, ne = E - e0 < EC_CHUNK ? E - e0 : EC_CHUNK;
        for (int64_t t = 0; t < T; t++)
          for (int j = 0; j < ne; j++) col[(int64_t)j * T + t] = (ec_pair_t){s[t * E + e0 + j], (int32_t)t};
        for (int j = 0; j < ne; j++) {
          ec_pair_t *cj = col + (int64_t)j * T;
          ec_select(cj, T, C);
          for (int64_t i = 0; i < C; i++) chosen[(int64_t)(e0 + j) * C + i] = cj[i].t;
        }
      }
      free(col);
    }
    if (nomem) rc = carl_fail(CARL_ERR_NOMEM, "expert_choice: out of memory");
  }
  if (rc == CARL_OK) {
    /* 2. per token, keep at most k experts (best s first; lower expert on ties); pos[t, j] is the
     *    index of the slot's entry in its expert's chosen list, so a pushed-off entry is freed there */
    int64_t *pos = malloc((size_t)T * (size_t)k * sizeof *pos);
    if (!pos) rc = carl_fail(CARL_ERR_NOMEM, "expert_choice: out of memory");
    for (int64_t i = 0; i < T * k; i++) out->experts[i] = -1;
    for (int e = 0; e < E && rc == CARL_OK; e++)
      for (int64_t i = 0; i < C; i++) {
        int32_t t = chosen[(int64_t)e * C + i];
        int32_t *ex = out->experts + (int64_t)t * k;
        int64_t *ps = pos + (int64_t)t * k;
        const float *st = s + (int64_t)t * E;
        float v = st[e];
        int p;
        if (cnt[t] == k) {
          if (!(v > st[ex[k - 1]])) { /* not better than the worst kept (ties: lower expert stays) */
            chosen[(int64_t)e * C + i] = -1;
            continue;
          }
          chosen[(int64_t)ex[k - 1] * C + ps[k - 1]] = -1; /* the worst kept is released */
          p = k - 1;
        } else {
          p = cnt[t]++;
        }
        while (p > 0 && (st[ex[p - 1]] < v || (st[ex[p - 1]] == v && ex[p - 1] > e))) {
          ex[p] = ex[p - 1];
          ps[p] = ps[p - 1];
          p--;
        }
        ex[p] = e;
        ps[p] = i;
      }
    free(pos);
    /* 3. refill: experts below C take their next best tokens with a free slot */
    for (int e = 0; e < E && rc == CARL_OK; e++) {
      int64_t have = 0;
      for (int64_t i = 0; i < C; i++) have += chosen[(int64_t)e * C + i] >= 0;
      if (have == C) continue;
      ec_pair_t *col = malloc((size_t)T * sizeof *col);
      uint8_t *mine = calloc((size_t)T, 1);
      if (!col || !mine) {
        free(col);
        free(mine);
        rc = carl_fail(CARL_ERR_NOMEM, "expert_choice: out of memory");
        break;
      }
      for (int64_t i = 0; i < C; i++)
        if (chosen[(int64_t)e * C + i] >= 0) mine[chosen[(int64_t)e * C + i]] = 1;
      int64_t n = 0;
      for (int64_t t = 0; t < T; t++)
        if (!mine[t] && cnt[t] < k) col[n++] = (ec_pair_t){s[t * E + e], (int32_t)t};
      qsort(col, (size_t)n, sizeof *col, ec_cmp);
      for (int64_t i = 0; i < n && have < C; i++) {
        int32_t t = col[i].t;
        int32_t *ex = out->experts + (int64_t)t * k;
        float v = col[i].s;
        int p = cnt[t]++;
        while (p > 0 && (s[(int64_t)t * E + ex[p - 1]] < v || (s[(int64_t)t * E + ex[p - 1]] == v && ex[p - 1] > e))) {
          ex[p] = ex[p - 1];
          p--;
        }
        ex[p] = e;
        have++;
      }
      free(col);
      free(mine);
    }
    /* 4. where the greedy fill stopped short of min(T k, C E) pairs: augmenting paths */
    if (rc == CARL_OK) {
      int64_t assigned = 0;
      for (int64_t i = 0; i < T * k; i++)
        if (out->experts[i] >= 0) {
          load[out->experts[i]]++;
          assigned++;
        }
      rc = ec_augment(s, T, E, k, C, out->experts, cnt, load, assigned);
    }
  }
  if (rc == CARL_OK) {
    int64_t assigned = 0;
    for (int64_t t = 0; t < T; t++) {
      float a = 0;
      for (int j = 0; j < k; j++) {
        int32_t e = out->experts[t * k + j];
        out->weights[t * k + j] = e >= 0 ? s[t * E + e] : 0.0f;
        a += out->weights[t * k + j];
        assigned += e >= 0;
      }
      if (c.renorm && a > 0)
        for (int j = 0; j < k; j++) out->weights[t * k + j] /= a;
    }
    out->capacity = C;
    out->dropped = T * k - assigned;
  }
  free(s);
  free(chosen);
  free(cnt);
  free(load);
  return rc;
}

static const carl_opt_t ec_opts[] = {
    {"renorm", 0, "0: gates are the softmax scores (Expert Choice); 1: renormalised per token"},
    {"capacity_factor", 0, "C = ceil(cf * T * k / E) tokens per expert; 0 means cf = 1"},
};

const carl_router_impl_t carl__router_expert_choice = {
    .name = "expert_choice",
    .help = "Expert Choice: each expert takes its top C = T*k/E tokens by score (perfect balance, not causal)",
    .opts = ec_opts,
    .nopts = 2,
    .route = ec_route,
};
