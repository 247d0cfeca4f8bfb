/* c2r: Collaboration-Constrained Routing (ALGORITHMS.md 2.9; research/routers.md section 1).
 *
 * e1 = argmax_e s[t, e]; the other k-1 experts are the best by s among collab[e1][0 .. Tc-1];
 * g = s at the chosen experts (renormalised when the common option renorm is 1).
 * The collaboration table comes from a profile: co-activation counts C[i][j] of top-k sets,
 * diagonal excluded, row i sorted by descending C[i][j] with ties to the lower j (the reference
 * code's argsort(-C[i]) with C[i][i] = -1 puts self last; we drop self, leaving E-1 entries).
 * With Tc = E-1 the rule is exactly topk.
 *
 * State: the table (int32 [E, E-1]) and, with profile = 1, the co-activation counts accumulated by
 * update() from the decisions of each step (int64 [E, E]). Without a table the router refuses to
 * route unless profile = 1, in which case it routes as plain topk while it profiles.
 * Files (carl_router_save/load): .npy, either the table int32 [E, E-1] or counts [E, E] (int32 or
 * int64; the table is built from them). save writes the counts when it has them, else the table.
 */
#include <stdlib.h>
#include <string.h>

#include "carl/array.h"
#include "carl/route_seed.h"
#include "route/router_impl.h"
#include "route/seed_internal.h"

/* ---- profiler ---------------------------------------------------------------------------------- */
carl_status carl_c2r_count_sets(int64_t T, int k, const int32_t *experts, int E, int64_t *counts) {
  if (T < 0 || k < 1 || E < 1) return carl_fail(CARL_ERR_INVALID, "c2r profile: T=%lld, k=%d, E=%d", (long long)T, k, E);
  CARL_ASSERT(counts && (T == 0 || experts));
  for (int64_t t = 0; t < T; t++) {
    const int32_t *S = experts + t * k;
    for (int a = 0; a < k; a++) {
      if (S[a] < 0) continue;
      if (S[a] >= E) return carl_fail(CARL_ERR_INVALID, "experts[%lld][%d]: %d out of range [0, %d)", (long long)t, a, S[a], E);
      for (int b = 0; b < k; b++)
        if (S[b] >= 0 && S[b] < E) counts[(size_t)S[a] * E + S[b]]++;
    }
  }
  return CARL_OK;
}

carl_status carl_c2r_count_logits(int64_t T, int E, int k, const float *logits, int64_t *counts) {
  if (T < 0 || E < 1 || k < 1 || k > E)
    return carl_fail(CARL_ERR_INVALID, "c2r profile: k=%d must lie in [1, E=%d] (T=%lld)", k, E, (long long)T);
  float *s = malloc((size_t)E * sizeof *s);
  float *val = malloc((size_t)k * sizeof *val);
  int32_t *idx = malloc((size_t)k * sizeof *idx);
  if (!s || !val || !idx) {
    free(s); free(val); free(idx);
    return carl_fail(CARL_ERR_NOMEM, "c2r profile: E=%d", E);
  }
  carl_status st = CARL_OK;
  for (int64_t t = 0; t < T && st == CARL_OK; t++) {
    float lse = carl_kern_score_row(logits + t * E, E, CARL_SCORE_SOFTMAX, s);
    if (lse != lse) {
      st = carl_fail(CARL_ERR_NUMERIC, "logits: token %lld holds a NaN or an infinity", (long long)t);
      break;
    }
    carl_kern_topk_row(s, E, k, idx, val);
    st = carl_c2r_count_sets(1, k, idx, E, counts);
  }
  free(s); free(val); free(idx);
  return st;
}

carl_status carl_c2r_table(int E, const int64_t *counts, int32_t *table) {
  if (E < 2) return carl_fail(CARL_ERR_INVALID, "c2r table: E=%d must be >= 2", E);
  CARL_ASSERT(counts && table);
  for (int i = 0; i < E; i++) {
    const int64_t *c = counts + (size_t)i * E;
    int32_t *row = table + (size_t)i * (E - 1);
    int n = 0;
    /* insertion sort of the others: descending count, ties to the lower index (stable on j) */
    for (int j = 0; j < E; j++) {
      if (j == i) continue;
      int p = n++;
      while (p > 0 && c[row[p - 1]] < c[j]) {
        row[p] = row[p - 1];
        p--;
      }
      row[p] = j;
    }
  }
  return CARL_OK;
}

/* ---- router ------------------------------------------------------------------------------------- */
typedef struct {
  int Tc;
  int profile;
  int E;          /* E of the table/counts, 0 before any */
  int32_t *table; /* [E, E-1] or NULL */
  int64_t *counts;/* [E, E] or NULL (profile) */
} c2r_state;

static const carl_opt_t c2r_opts[] = {
    {"renorm", 0, "0: gate weights are the raw scores s (the C2R reference code); 1: renormalised"},
    {"Tc", 5, "collaborators per expert that the other k-1 experts are chosen from (k-1 <= Tc <= E-1)"},
    {"profile", 0, "1: accumulate co-activation counts in update(); without a table route as topk"},
};

static carl_status c2r_init(carl_router_t *r) {
  c2r_state *st = calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "c2r: state");
  r->state = st;
  CARL_TRY(carl_router_opt_int(r, "Tc", 1, 1 << 20, &st->Tc));
  CARL_TRY(carl_router_opt_int(r, "profile", 0, 1, &st->profile));
  return CARL_OK;
}

static void c2r_free(carl_router_t *r) {
  c2r_state *st = r->state;
  if (!st) return;
  free(st->table);
  free(st->counts);
  free(st);
  r->state = NULL;
}

/* Make room for E experts (first use fixes E). */
static carl_status c2r_fix_E(c2r_state *st, int E, const char *what) {
  if (st->E && st->E != E)
    return carl_fail(CARL_ERR_SHAPE, "c2r: %s has E=%d but the collaboration profile has E=%d", what, E, st->E);
  st->E = E;
  return CARL_OK;
}

static carl_status c2r_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  c2r_state *st = r->state;
  carl_route_common_t c;
  carl_route_common(r, &c);
  const int E = in->E, k = c.k;
  if (!st->table) {
    if (st->profile) return carl_route_topk_biased(r, in, out, NULL, 0, NULL);
    return carl_fail(CARL_ERR_STATE,
                     "c2r: no collaboration table: load one with carl_router_load (.npy int32 [E, E-1] or counts "
                     "[E, E]), or set profile=1 to route as topk while profiling");
  }
  CARL_TRY(c2r_fix_E(st, E, "logits"));
  if (st->Tc < k - 1 || st->Tc > E - 1)
    return carl_fail(CARL_ERR_INVALID, "c2r: Tc=%d out of range [k-1, E-1] = [%d, %d]", st->Tc, k - 1, E - 1);
  const int64_t T = in->T;
  float *s = malloc((size_t)T * E * sizeof *s);
  float *prio = malloc((size_t)T * k * sizeof *prio);
  if (!s || !prio) {
    free(s); free(prio);
    return carl_fail(CARL_ERR_NOMEM, "c2r: T=%lld E=%d", (long long)T, E);
  }
  carl_status rc = carl_route_scores(r, in->logits, T, E, c.score, s);
  if (rc == CARL_OK) {
#pragma omp parallel
    {
      uint8_t *mask = calloc((size_t)E, 1);
      float *val = malloc((size_t)k * sizeof *val);
      CARL_ASSERT(mask && val);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; t++) {
        const float *st_ = s + t * E;
        int32_t *ex = out->experts + t * k;
        float *w = out->weights + t * k;
        carl_kern_topk_row(st_, E, 1, ex, val);
        const int32_t *cand = st->table + (size_t)ex[0] * (E - 1);
        for (int i = 0; i < st->Tc; i++) mask[cand[i]] = 1;
        if (k > 1) carl_kern_topk_row_masked(st_, mask, E, k - 1, ex + 1, val + 1);
        for (int i = 0; i < st->Tc; i++) mask[cand[i]] = 0;
        for (int j = 0; j < k; j++) {
          w[j] = st_[ex[j]];
          prio[t * k + j] = st_[ex[j]];
        }
      }
      free(mask);
      free(val);
    }
    rc = carl__seed_finish(T, k, E, carl_kern_capacity(c.cf, T, k, E), c.renorm, out->experts, out->weights, prio, out);
  }
  free(s);
  free(prio);
  return rc;
}

static carl_status c2r_update(carl_router_t *r, const carl_route_in_t *in, const carl_route_out_t *out) {
  c2r_state *st = r->state;
  if (!st->profile) return CARL_OK;
  const int E = in->E;
  CARL_TRY(c2r_fix_E(st, E, "logits"));
  if (!st->counts) {
    st->counts = calloc((size_t)E * E, sizeof *st->counts);
    if (!st->counts) return carl_fail(CARL_ERR_NOMEM, "c2r: counts [%d, %d]", E, E);
  }
  return carl_c2r_count_sets(in->T, (int)r->opt[CARL_OPT_K], out->experts, E, st->counts);
}

static carl_status c2r_save(const carl_router_t *r, const char *path) {
  const c2r_state *st = r->state;
  const int64_t E = st->E;
  if (st->counts) {
    int64_t shape[2] = {E, E};
    return carl_npy_save(path, CARL_I64, 2, shape, st->counts);
  }
  if (st->table) {
    int64_t shape[2] = {E, E - 1};
    return carl_npy_save(path, CARL_I32, 2, shape, st->table);
  }
  return carl_fail(CARL_ERR_STATE, "c2r: nothing to save to %s: no table and no profile counts", path);
}

static carl_status c2r_load(carl_router_t *r, const char *path) {
  c2r_state *st = r->state;
  carl_array_t a;
  memset(&a, 0, sizeof a);
  CARL_TRY(carl_npy_read(path, &a));
  carl_status rc = CARL_OK;
  int32_t *table = NULL;
  int64_t *counts = NULL;
  int64_t E = a.ndim == 2 ? a.shape[0] : 0;
  if (a.ndim != 2 || E < 2 || E > (1 << 20) || (a.shape[1] != E && a.shape[1] != E - 1)) {
    rc = carl_fail(CARL_ERR_SHAPE, "%s: a collaboration table must be [E, E-1] or counts [E, E] with E >= 2", path);
  } else if (a.shape[1] == E - 1) { /* table */
    if (a.dtype != CARL_I32 && a.dtype != CARL_I64) {
      rc = carl_fail(CARL_ERR_DTYPE, "%s: a collaboration table must be int32 (found %s)", path, carl_dtype_name(a.dtype));
    } else {
      table = malloc((size_t)E * (E - 1) * sizeof *table);
      uint8_t *seen = calloc((size_t)E, 1);
      if (!table || !seen) rc = carl_fail(CARL_ERR_NOMEM, "%s: table", path);
      for (int64_t i = 0; i < E && rc == CARL_OK; i++) {
        memset(seen, 0, (size_t)E);
        seen[i] = 1;
        for (int64_t j = 0; j < E - 1 && rc == CARL_OK; j++) {
          int64_t v = a.dtype == CARL_I32 ? ((const int32_t *)a.data)[i * (E - 1) + j] : ((const int64_t *)a.data)[i * (E - 1) + j];
          if (v < 0 || v >= E || seen[v])
            rc = carl_fail(CARL_ERR_INVALID, "%s: row %lld of the collaboration table must list the other %lld experts once each "
                           "(entry %lld is %lld)", path, (long long)i, (long long)(E - 1), (long long)j, (long long)v);
          else {
            seen[v] = 1;
            table[i * (E - 1) + j] = (int32_t)v;
          }
        }
      }
      free(seen);
    }
  } else { /* counts */
    if (a.dtype != CARL_I32 && a.dtype != CARL_I64) {
      rc = carl_fail(CARL_ERR_DTYPE, "%s: co-activation counts must be int32 or int64 (found %s)", path, carl_dtype_name(a.dtype));
    } else {
      counts = malloc((size_t)E * E * sizeof *counts);
      table = malloc((size_t)E * (E - 1) * sizeof *table);
      if (!counts || !table) rc = carl_fail(CARL_ERR_NOMEM, "%s: counts", path);
      for (int64_t i = 0; i < E * E && rc == CARL_OK; i++) {
        counts[i] = a.dtype == CARL_I32 ? ((const int32_t *)a.data)[i] : ((const int64_t *)a.data)[i];
        if (counts[i] < 0) rc = carl_fail(CARL_ERR_INVALID, "%s: co-activation count [%lld] is negative", path, (long long)i);
      }
      if (rc == CARL_OK) rc = carl_c2r_table((int)E, counts, table);
      if (!st->profile) { /* the counts only matter to a router that keeps profiling */
        free(counts);
        counts = NULL;
      }
    }
  }
  carl_array_free(&a);
  if (rc != CARL_OK) {
    free(table);
    free(counts);
    return rc;
  }
  free(st->table);
  free(st->counts);
  st->table = table;
  st->counts = counts;
  st->E = (int)E;
  return CARL_OK;
}

const carl_router_impl_t carl__router_c2r = {
    .name = "c2r",
    .help = "C2R: top-1, then the other k-1 among the top-1 expert's Tc collaborators (needs a profile)",
    .opts = c2r_opts,
    .nopts = sizeof c2r_opts / sizeof c2r_opts[0],
    .init = c2r_init,
    .route = c2r_route,
    .update = c2r_update,
    .save = c2r_save,
    .load = c2r_load,
    .free = c2r_free,
};
