/* Placement statistics: per-layer EMA of expert loads, source-node x expert traffic and expert
 * co-activation; merge across ranks; .npy save/load. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "carl/array.h"
#include "carl/fs.h"
#include "carl/place.h"

#define STATS_MAX_EXPERTS 65536
#define STATS_MAX_LAYERS 4096
#define STATS_MAX_NODES 65536

void carl_place_stats_free(carl_place_stats_t *s) {
  if (!s) return;
  free(s->batches);
  free(s->load);
  free(s->traffic);
  free(s->coact);
  memset(s, 0, sizeof *s);
}

carl_status carl_place_stats_init(carl_place_stats_t *s, int L, int E, int N, double decay) {
  CARL_ASSERT(s != NULL);
  memset(s, 0, sizeof *s);
  if (L < 1 || L > STATS_MAX_LAYERS) return carl_fail(CARL_ERR_INVALID, "stats: layers must be in [1, %d], got %d", STATS_MAX_LAYERS, L);
  if (E < 1 || E > STATS_MAX_EXPERTS) return carl_fail(CARL_ERR_INVALID, "stats: experts must be in [1, %d], got %d", STATS_MAX_EXPERTS, E);
  if (N < 1 || N > STATS_MAX_NODES) return carl_fail(CARL_ERR_INVALID, "stats: nodes must be in [1, %d], got %d", STATS_MAX_NODES, N);
  if (!(decay >= 0.0 && decay < 1.0)) return carl_fail(CARL_ERR_INVALID, "stats: decay must be in [0, 1), got %g", decay);
  s->L = L;
  s->E = E;
  s->N = N;
  s->decay = decay;
  s->batches = calloc((size_t)L, sizeof *s->batches);
  s->load = calloc((size_t)L * E, sizeof *s->load);
  s->traffic = calloc((size_t)L * N * E, sizeof *s->traffic);
  s->coact = calloc((size_t)L * E * E, sizeof *s->coact);
  if (!s->batches || !s->load || !s->traffic || !s->coact) {
    carl_place_stats_free(s);
    return carl_fail(CARL_ERR_NOMEM, "stats: out of memory for %d layers x %d experts", L, E);
  }
  return CARL_OK;
}

carl_status carl_place_stats_add(carl_place_stats_t *s, int layer, const int32_t *experts, const int32_t *src_node,
                                 int64_t T, int k) {
  CARL_ASSERT(s != NULL && s->load != NULL);
  const int E = s->E, N = s->N;
  if (layer < 0 || layer >= s->L) return carl_fail(CARL_ERR_INVALID, "stats: layer %d out of range [0, %d)", layer, s->L);
  if (T < 0 || k < 1) return carl_fail(CARL_ERR_INVALID, "stats: need T >= 0 and k >= 1, got T=%lld k=%d", (long long)T, k);
  if (T > 0 && !experts) return carl_fail(CARL_ERR_INVALID, "stats: experts is NULL");
  /* validate first: a bad batch changes nothing */
  for (int64_t t = 0; t < T; t++) {
    for (int j = 0; j < k; j++) {
      int32_t e = experts[t * k + j];
      if (e < -1 || e >= E)
        return carl_fail(CARL_ERR_INVALID, "stats: experts[%lld, %d] = %d is not in [0, %d) or -1", (long long)t, j, e, E);
    }
    if (src_node && (src_node[t] < 0 || src_node[t] >= N))
      return carl_fail(CARL_ERR_INVALID, "stats: src_node[%lld] = %d is not a node in [0, %d)", (long long)t, src_node[t], N);
  }
  double *bl = calloc((size_t)E, sizeof *bl);
  double *bt = calloc((size_t)N * E, sizeof *bt);
  double *bc = calloc((size_t)E * E, sizeof *bc);
  int32_t *set = malloc((size_t)k * sizeof *set);
  if (!bl || !bt || !bc || !set) {
    free(bl); free(bt); free(bc); free(set);
    return carl_fail(CARL_ERR_NOMEM, "stats: out of memory");
  }
  for (int64_t t = 0; t < T; t++) {
    int n = src_node ? src_node[t] : (int)(t * N / T);
    int m = 0; /* distinct experts of token t */
    for (int j = 0; j < k; j++) {
      int32_t e = experts[t * k + j];
      if (e < 0) continue;
      int dup = 0;
      for (int q = 0; q < m; q++) dup |= set[q] == e;
      if (!dup) set[m++] = e;
    }
    for (int a = 0; a < m; a++) {
      bl[set[a]] += 1.0;
      bt[(size_t)n * E + set[a]] += 1.0;
      for (int b = 0; b < m; b++)
        if (a != b) bc[(size_t)set[a] * E + set[b]] += 1.0;
    }
  }
  double *L = s->load + (size_t)layer * E, *A = s->traffic + (size_t)layer * N * E, *C = s->coact + (size_t)layer * E * E;
  if (s->batches[layer] == 0) {
    memcpy(L, bl, (size_t)E * sizeof *L);
    memcpy(A, bt, (size_t)N * E * sizeof *A);
    memcpy(C, bc, (size_t)E * E * sizeof *C);
  } else {
    const double a = s->decay, b = 1.0 - s->decay;
    for (size_t i = 0; i < (size_t)E; i++) L[i] = a * L[i] + b * bl[i];
    for (size_t i = 0; i < (size_t)N * E; i++) A[i] = a * A[i] + b * bt[i];
    for (size_t i = 0; i < (size_t)E * E; i++) C[i] = a * C[i] + b * bc[i];
  }
  s->batches[layer]++;
  free(bl); free(bt); free(bc); free(set);
  return CARL_OK;
}

carl_status carl_place_stats_merge(carl_place_stats_t *dst, const carl_place_stats_t *src) {
  CARL_ASSERT(dst != NULL && src != NULL);
  if (dst->L != src->L || dst->E != src->E || dst->N != src->N)
    return carl_fail(CARL_ERR_SHAPE, "stats merge: shapes differ (layers %d/%d, experts %d/%d, nodes %d/%d)", dst->L, src->L,
                     dst->E, src->E, dst->N, src->N);
  for (int l = 0; l < dst->L; l++)
    if (dst->batches[l] != 0 && src->batches[l] != 0 && dst->batches[l] != src->batches[l])
      return carl_fail(CARL_ERR_STATE, "stats merge: layer %d has %lld batches here and %lld in the other (merge statistics of the same batches)",
                       l, (long long)dst->batches[l], (long long)src->batches[l]);
  const size_t E = (size_t)dst->E, N = (size_t)dst->N;
  for (int l = 0; l < dst->L; l++) {
    if (src->batches[l] == 0) continue;
    for (size_t i = 0; i < E; i++) dst->load[l * E + i] += src->load[l * E + i];
    for (size_t i = 0; i < N * E; i++) dst->traffic[l * N * E + i] += src->traffic[l * N * E + i];
    for (size_t i = 0; i < E * E; i++) dst->coact[l * E * E + i] += src->coact[l * E * E + i];
    dst->batches[l] = src->batches[l];
  }
  return CARL_OK;
}

carl_status carl_place_stats_layer(const carl_place_stats_t *s, int layer, carl_place_input_t *in) {
  CARL_ASSERT(s != NULL && in != NULL);
  if (layer < 0 || layer >= s->L) return carl_fail(CARL_ERR_INVALID, "stats: layer %d out of range [0, %d)", layer, s->L);
  in->E = s->E;
  in->N = s->N;
  in->load = s->load + (size_t)layer * s->E;
  in->traffic = s->traffic + (size_t)layer * s->N * s->E;
  in->coact = s->coact + (size_t)layer * s->E * s->E;
  in->prev = NULL;
  return CARL_OK;
}

/* ---- files ------------------------------------------------------------------------------------- */
static carl_status stats_path(char *buf, size_t cap, const char *dir, const char *name) {
  if (snprintf(buf, cap, "%s/%s", dir, name) >= (int)cap) return carl_fail(CARL_ERR_INVALID, "%s: path too long", dir);
  return CARL_OK;
}

carl_status carl_place_stats_save(const carl_place_stats_t *s, const char *dir) {
  CARL_ASSERT(s != NULL && dir != NULL);
  CARL_TRY(carl_fs_mkdir_p(dir));
  char p[4096];
  int64_t sh[3];
  sh[0] = s->L; sh[1] = s->E;
  CARL_TRY(stats_path(p, sizeof p, dir, "load.npy"));
  CARL_TRY(carl_npy_save(p, CARL_F64, 2, sh, s->load));
  sh[1] = s->N; sh[2] = s->E;
  CARL_TRY(stats_path(p, sizeof p, dir, "traffic.npy"));
  CARL_TRY(carl_npy_save(p, CARL_F64, 3, sh, s->traffic));
  sh[1] = s->E; sh[2] = s->E;
  CARL_TRY(stats_path(p, sizeof p, dir, "coact.npy"));
  CARL_TRY(carl_npy_save(p, CARL_F64, 3, sh, s->coact));
  CARL_TRY(stats_path(p, sizeof p, dir, "batches.npy"));
  CARL_TRY(carl_npy_save(p, CARL_I64, 1, sh, s->batches));
  return CARL_OK;
}

/* Element i of a numeric array as a double. */
static double arr_get(const carl_array_t *a, int64_t i) {
  switch (a->dtype) {
    case CARL_F32: return ((const float *)a->data)[i];
    case CARL_F64: return ((const double *)a->data)[i];
    case CARL_I32: return ((const int32_t *)a->data)[i];
    default: return (double)((const int64_t *)a->data)[i];
  }
}

/* Copy a (already shape-checked) array into dst, checking values are finite and >= 0. */
static carl_status arr_copy(const carl_array_t *a, const char *path, double *dst) {
  int64_t n = carl_array_numel(a);
  for (int64_t i = 0; i < n; i++) {
    double v = arr_get(a, i);
    if (!isfinite(v)) return carl_fail(CARL_ERR_NUMERIC, "%s: element %lld is %g (counts must be finite)", path, (long long)i, v);
    if (v < 0) return carl_fail(CARL_ERR_INVALID, "%s: element %lld is %g (counts must be >= 0)", path, (long long)i, v);
    if (v > CARL_PLACE_COUNT_MAX)
      return carl_fail(CARL_ERR_INVALID, "%s: element %lld is %g (counts must be in [0, %g])", path, (long long)i, v,
                       CARL_PLACE_COUNT_MAX);
    dst[i] = v;
  }
  return CARL_OK;
}

static int file_exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

static const char *shape_text(const carl_array_t *a, char *buf, size_t cap) {
  size_t n = 0;
  n += (size_t)snprintf(buf + n, cap - n, "[");
  for (int i = 0; i < a->ndim && n < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)a->shape[i]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
  return buf;
}

carl_status carl_place_stats_load(const char *dir, double decay, carl_place_stats_t *s, int *has_traffic, int *has_coact) {
  CARL_ASSERT(dir != NULL && s != NULL);
  memset(s, 0, sizeof *s);
  char p[4096], sb[128];
  carl_array_t a = {0};
  carl_status st;
  CARL_TRY(stats_path(p, sizeof p, dir, "load.npy"));
  CARL_TRY(carl_npy_read(p, &a));
  int L, E;
  if (a.ndim == 1) {
    L = 1; E = (int)a.shape[0];
  } else if (a.ndim == 2) {
    L = (int)a.shape[0]; E = (int)a.shape[1];
  } else {
    st = carl_fail(CARL_ERR_SHAPE, "%s: shape %s, expected [layers, experts] or [experts]", p, shape_text(&a, sb, sizeof sb));
    carl_array_free(&a);
    return st;
  }
  if (a.shape[0] < 1 || a.shape[a.ndim - 1] < 1 || a.shape[0] > STATS_MAX_EXPERTS || a.shape[a.ndim - 1] > STATS_MAX_EXPERTS) {
    st = carl_fail(CARL_ERR_SHAPE, "%s: shape %s has an empty or oversized dimension", p, shape_text(&a, sb, sizeof sb));
    carl_array_free(&a);
    return st;
  }
  /* nodes come from traffic.npy when present */
  carl_array_t tr = {0}, co = {0}, ba = {0};
  char pt[4096], pc[4096], pb[4096];
  int N = 1, ht = 0, hc = 0;
  if ((st = stats_path(pt, sizeof pt, dir, "traffic.npy")) != CARL_OK) goto done;
  if ((st = stats_path(pc, sizeof pc, dir, "coact.npy")) != CARL_OK) goto done;
  if ((st = stats_path(pb, sizeof pb, dir, "batches.npy")) != CARL_OK) goto done;
  if (file_exists(pt)) {
    if ((st = carl_npy_read(pt, &tr)) != CARL_OK) goto done;
    int ok = (a.ndim == 1 && tr.ndim == 2 && tr.shape[1] == E) || (tr.ndim == 3 && tr.shape[0] == L && tr.shape[2] == E);
    if (!ok || tr.shape[tr.ndim - 2] < 1 || tr.shape[tr.ndim - 2] > STATS_MAX_NODES) {
      st = carl_fail(CARL_ERR_SHAPE, "%s: shape %s, expected [%d, nodes, %d] to match load.npy", pt, shape_text(&tr, sb, sizeof sb), L, E);
      goto done;
    }
    N = (int)tr.shape[tr.ndim - 2];
    ht = 1;
  }
  if (file_exists(pc)) {
    if ((st = carl_npy_read(pc, &co)) != CARL_OK) goto done;
    int ok = (a.ndim == 1 && co.ndim == 2 && co.shape[0] == E && co.shape[1] == E) ||
             (co.ndim == 3 && co.shape[0] == L && co.shape[1] == E && co.shape[2] == E);
    if (!ok) {
      st = carl_fail(CARL_ERR_SHAPE, "%s: shape %s, expected [%d, %d, %d] to match load.npy", pc, shape_text(&co, sb, sizeof sb), L, E, E);
      goto done;
    }
    hc = 1;
  }
  if ((st = carl_place_stats_init(s, L, E, N, decay)) != CARL_OK) goto done;
  if ((st = arr_copy(&a, p, s->load)) != CARL_OK) goto done;
  if (ht && (st = arr_copy(&tr, pt, s->traffic)) != CARL_OK) goto done;
  if (hc) {
    if ((st = arr_copy(&co, pc, s->coact)) != CARL_OK) goto done;
    for (int l = 0; l < L; l++)
      for (int e = 0; e < E; e++) s->coact[((size_t)l * E + e) * E + e] = 0.0; /* the diagonal is not used */
  }
  for (int l = 0; l < L; l++) s->batches[l] = 1;
  if (file_exists(pb)) {
    if ((st = carl_npy_read(pb, &ba)) != CARL_OK) goto done;
    if (!(ba.ndim == 1 && ba.shape[0] == L) || (ba.dtype != CARL_I64 && ba.dtype != CARL_I32)) {
      st = carl_fail(CARL_ERR_SHAPE, "%s: expected int64 [%d], got %s %s", pb, L, carl_dtype_name(ba.dtype), shape_text(&ba, sb, sizeof sb));
      goto done;
    }
    for (int l = 0; l < L; l++) {
      double v = arr_get(&ba, l);
      if (v < 0) {
        st = carl_fail(CARL_ERR_INVALID, "%s: element %d is %g (must be >= 0)", pb, l, v);
        goto done;
      }
      s->batches[l] = (int64_t)v;
    }
  }
done:
  if (st != CARL_OK) carl_place_stats_free(s);
  carl_array_free(&a);
  carl_array_free(&tr);
  carl_array_free(&co);
  carl_array_free(&ba);
  if (st == CARL_OK) {
    if (has_traffic) *has_traffic = ht;
    if (has_coact) *has_coact = hc;
  }
  return st;
}
