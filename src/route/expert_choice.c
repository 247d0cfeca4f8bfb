/* expert_choice: Expert Choice routing (Zhou et al., NeurIPS 2022). s = softmax(z); each expert
 * takes its C = ceil(cf * T * k / E) best tokens by s[., e] (cf = 1 when the capacity_factor option
 * is 0; C <= T); equal scores: the lower token index first. The output holds at most k experts per
 * token: a token chosen by more than k experts keeps its k best (by s; lower expert on ties), and
 * each expert left below C then takes its next best tokens that still have a free slot (experts
 * in index order). When T*k = C*E this fills every expert to exactly C. Gates = s (not
 * renormalised by default). Not causal: an expert's choice depends on the whole batch. */
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
