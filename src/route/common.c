/* Common routing machinery: scores, top-k with the tie rule, capacity, gate backward, the fused
 * top-k kernel, expert groups and state files (carl/route_util.h). */
#include <float.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/route_util.h"

/* Tokens per block for the statistics: sums over a block, then over blocks in order, so results do
 * not depend on the thread count. */
#define CARL__BLK 256

/* ---- scores ---------------------------------------------------------------------------------- */
float carl_route_score_row(const float *z, int E, int score, float *s) {
  float m8[8], b8[8], a8[8];
  for (int j = 0; j < 8; j++) {
    m8[j] = -FLT_MAX;
    b8[j] = 0.0f;
    a8[j] = 0.0f;
  }
  int e = 0;
  for (; e + 8 <= E; e += 8)
    for (int j = 0; j < 8; j++) {
      float v = z[e + j];
      m8[j] = v > m8[j] ? v : m8[j];
      b8[j] += v * 0.0f; /* NaN iff some value is NaN or infinite */
    }
  for (; e < E; e++) {
    float v = z[e];
    m8[0] = v > m8[0] ? v : m8[0];
    b8[0] += v * 0.0f;
  }
  float mx = m8[0], bad = b8[0];
  for (int j = 1; j < 8; j++) {
    mx = m8[j] > mx ? m8[j] : mx;
    bad += b8[j];
  }
  if (bad != bad) return NAN;
  /* s = exp(z - max) (softmax numerators), their sum gives logsumexp */
  e = 0;
  for (; e + 8 <= E; e += 8)
    for (int j = 0; j < 8; j++) {
      float x = carl_expf(z[e + j] - mx);
      s[e + j] = x;
      a8[j] += x;
    }
  for (; e < E; e++) {
    float x = carl_expf(z[e] - mx);
    s[e] = x;
    a8[0] += x;
  }
  float sum = ((a8[0] + a8[1]) + (a8[2] + a8[3])) + ((a8[4] + a8[5]) + (a8[6] + a8[7]));
  float lse = mx + logf(sum);
  if (score == CARL_SCORE_SIGMOID) {
    for (e = 0; e < E; e++) s[e] = 1.0f / (1.0f + carl_expf(-z[e]));
  } else {
    float inv = 1.0f / sum;
    for (e = 0; e < E; e++) s[e] *= inv;
  }
  return lse;
}

/* Block partial sums of p (p = s, or s / sum(s) for sigmoid) and lse^2 for the registry. */
static void carl__stats_row(const float *s, int E, int score, float lse, float *pp, double *zs) {
  if (score == CARL_SCORE_SIGMOID) {
    float a = 0;
    for (int e = 0; e < E; e++) a += s[e];
    float inv = 1.0f / a;
    for (int e = 0; e < E; e++) pp[e] += s[e] * inv;
  } else {
    for (int e = 0; e < E; e++) pp[e] += s[e];
  }
  *zs += (double)lse * (double)lse;
}

static void carl__stats_finish(carl_router_t *r, const float *part, const double *zpart, int64_t nb, int E) {
  if (!r || !r->psum || r->psum_cap < E) return;
  for (int e = 0; e < E; e++) r->psum[e] = 0;
  double z = 0;
  for (int64_t b = 0; b < nb; b++) {
    const float *pp = part + b * E;
    for (int e = 0; e < E; e++) r->psum[e] += pp[e];
    z += zpart[b];
  }
  r->zsum = z;
  r->have_psum = 1;
  r->have_zsum = 1;
}

static carl_status carl__bad_token(int64_t bad, const float *logits, int E) {
  const float *z = logits + bad * E;
  int e = 0;
  while (e < E && isfinite(z[e])) e++;
  return carl_fail(CARL_ERR_NUMERIC, "logits: token %lld, expert %d is %s (finite values required)", (long long)bad,
                   e < E ? e : 0, e < E && isnan(z[e]) ? "NaN" : "infinite");
}

carl_status carl_route_scores(carl_router_t *r, const float *logits, int64_t T, int E, int score, float *s) {
  if (!logits || !s) return carl_fail(CARL_ERR_INVALID, "logits: NULL");
  const int64_t nb = (T + CARL__BLK - 1) / CARL__BLK;
  const int stats = r && r->psum && r->psum_cap >= E;
  float *part = stats ? calloc((size_t)nb * (size_t)E, sizeof *part) : NULL;
  double *zpart = stats ? calloc((size_t)nb, sizeof *zpart) : NULL;
  if (stats && (!part || !zpart)) {
    free(part);
    free(zpart);
    return carl_fail(CARL_ERR_NOMEM, "scores: out of memory");
  }
  int64_t bad = INT64_MAX;
#pragma omp parallel for if((int64_t)T * E >= CARL_PAR_MIN) schedule(static) reduction(min : bad)
  for (int64_t b = 0; b < nb; b++) {
    int64_t t1 = (b + 1) * CARL__BLK < T ? (b + 1) * CARL__BLK : T;
    for (int64_t t = b * CARL__BLK; t < t1; t++) {
      float lse = carl_route_score_row(logits + t * E, E, score, s + t * E);
      if (isnan(lse)) {
        if (t < bad) bad = t;
        continue;
      }
      if (stats) carl__stats_row(s + t * E, E, score, lse, part + b * E, &zpart[b]);
    }
  }
  if (bad != INT64_MAX) {
    free(part);
    free(zpart);
    return carl__bad_token(bad, logits, E);
  }
  if (stats) carl__stats_finish(r, part, zpart, nb, E);
  free(part);
  free(zpart);
  return CARL_OK;
}

/* ---- top-k ----------------------------------------------------------------------------------- */
/* Insert v[i] into the sorted buffer (descending; equal values keep the earlier index first). */
static inline void carl__topk_push(float x, int32_t i, int k, int *m, int32_t *idx, float *val) {
  int p;
  if (*m == k) {
    if (!(x > val[k - 1])) return;
    p = k - 1;
  } else {
    p = (*m)++;
  }
  while (p > 0 && val[p - 1] < x) {
    val[p] = val[p - 1];
    idx[p] = idx[p - 1];
    p--;
  }
  val[p] = x;
  idx[p] = i;
}

void carl_topk_row(const float *v, int n, int k, int32_t *idx, float *val) {
  int m = 0;
  int i = 0;
  for (; i < n && m < k; i++) carl__topk_push(v[i], i, k, &m, idx, val);
  /* blocks of 16: skip a block whose maximum does not beat the current k-th value */
  for (; i + 16 <= n; i += 16) {
    float b8[8];
    for (int j = 0; j < 8; j++) b8[j] = v[i + j] > v[i + 8 + j] ? v[i + j] : v[i + 8 + j];
    float bm = b8[0];
    for (int j = 1; j < 8; j++) bm = b8[j] > bm ? b8[j] : bm;
    if (!(bm > val[k - 1])) continue;
    for (int j = 0; j < 16; j++) carl__topk_push(v[i + j], i + j, k, &m, idx, val);
  }
  for (; i < n; i++) carl__topk_push(v[i], i, k, &m, idx, val);
  for (; m < k; m++) {
    idx[m] = -1;
    val[m] = -INFINITY;
  }
}

void carl_topk_row_masked(const float *v, const uint8_t *mask, int n, int k, int32_t *idx, float *val) {
  int m = 0;
  for (int i = 0; i < n; i++)
    if (mask[i]) carl__topk_push(v[i], i, k, &m, idx, val);
  for (; m < k; m++) {
    idx[m] = -1;
    val[m] = -INFINITY;
  }
}

/* ---- capacity -------------------------------------------------------------------------------- */
int64_t carl_route_capacity(double cf, int64_t T, int k, int E) {
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

carl_status carl_route_apply_capacity(int64_t T, int k, int E, int64_t C, int32_t *experts, const float *prio,
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

/* ---- gate backward --------------------------------------------------------------------------- */
carl_status carl_route_gate_backward(const float *logits, int64_t T, int E, int k, int score, int renorm,
                                     const int32_t *experts, const float *dweights, float *dlogits) {
  if (!logits || !experts || !dweights || !dlogits)
    return carl_fail(CARL_ERR_INVALID, "gate backward: NULL argument");
  int64_t bad = INT64_MAX;
  int nomem = 0;
#pragma omp parallel if((int64_t)T * E >= CARL_PAR_MIN) reduction(min : bad) reduction(| : nomem)
  {
    float *s = malloc((size_t)E * sizeof *s);
    double *ds = malloc((size_t)E * sizeof *ds);
    if (!s || !ds) nomem = 1;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
      if (!s || !ds) continue;
      const float *z = logits + t * E;
      if (isnan(carl_route_score_row(z, E, score, s))) {
        if (t < bad) bad = t;
        continue;
      }
      const int32_t *ex = experts + t * k;
      const float *dw = dweights + t * k;
      /* w_j = s_{e_j} / Z, Z = sum of s over kept slots (renorm) or 1.
       * dL/ds_a = [a = e_j] dw_j / Z - [a kept] (sum_j dw_j w_j) / Z */
      double Z = 1, dot = 0;
      if (renorm) {
        Z = 0;
        for (int j = 0; j < k; j++)
          if (ex[j] >= 0) Z += s[ex[j]];
        if (!(Z > 0)) continue;
        for (int j = 0; j < k; j++)
          if (ex[j] >= 0) dot += (double)dw[j] * s[ex[j]] / Z;
      }
      for (int e = 0; e < E; e++) ds[e] = 0;
      for (int j = 0; j < k; j++)
        if (ex[j] >= 0) ds[ex[j]] += dw[j] / Z - (renorm ? dot / Z : 0);
      float *dz = dlogits + t * E;
      if (score == CARL_SCORE_SIGMOID) {
        for (int e = 0; e < E; e++) dz[e] += (float)(ds[e] * s[e] * (1.0 - s[e]));
      } else {
        double a = 0;
        for (int j = 0; j < k; j++)
          if (ex[j] >= 0) {
            int dup = 0; /* an expert repeated in a row counts once in the dot product */
            for (int i = 0; i < j; i++) dup |= ex[i] == ex[j];
            if (!dup) a += (double)s[ex[j]] * ds[ex[j]];
          }
        for (int e = 0; e < E; e++) dz[e] += (float)(s[e] * (ds[e] - a));
      }
    }
    free(s);
    free(ds);
  }
  if (nomem) return carl_fail(CARL_ERR_NOMEM, "gate backward: out of memory");
  if (bad != INT64_MAX) return carl__bad_token(bad, logits, E);
  return CARL_OK;
}

/* ---- the fused top-k kernel ------------------------------------------------------------------ */
carl_status carl_route_topk_biased(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out,
                                   const float *bias, int nrows, const int32_t *bias_row) {
  carl_select_t sel = {.bias = bias, .nrows = nrows, .bias_row = bias_row};
  return carl_route_select(r, in, out, &sel);
}

carl_status carl_route_select(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out,
                              const carl_select_t *sp) {
  carl_route_common_t c;
  carl_route_common(r, &c);
  const int64_t T = in->T;
  const int E = in->E, k = c.k;
  const carl_select_t sl = *sp;
  if (!in->logits) return carl_fail(CARL_ERR_INVALID, "logits: NULL");
  if (k < 1 || k > E) return carl_fail(CARL_ERR_INVALID, "k: %d experts per token with E = %d experts", k, E);
  if (sl.bias && sl.nrows < 1) return carl_fail(CARL_ERR_INVALID, "selection bias: %d rows", sl.nrows);
  if (sl.bias && sl.bias_row)
    for (int64_t t = 0; t < T; t++)
      if (sl.bias_row[t] < 0 || sl.bias_row[t] >= sl.nrows)
        return carl_fail(CARL_ERR_INVALID, "bias row of token %lld: %d, outside 0..%d", (long long)t, sl.bias_row[t], sl.nrows - 1);
  const int grouped = sl.group && sl.ngroups > 1 && sl.M >= 1 && sl.M < sl.ngroups;
  const int G = grouped ? sl.ngroups : 0;
  int32_t *goff = NULL, *gmem = NULL;
  if (grouped) {
    if (sl.per_group < 1) return carl_fail(CARL_ERR_INVALID, "group-limited selection: per_group = %d", sl.per_group);
    if (sl.group_bonus && sl.bonus_row)
      for (int64_t t = 0; t < T; t++)
        if (sl.bonus_row[t] < 0 || sl.bonus_row[t] >= sl.nbrows)
          return carl_fail(CARL_ERR_INVALID, "group bonus row of token %lld: %d, outside 0..%d", (long long)t, sl.bonus_row[t], sl.nbrows - 1);
    goff = calloc((size_t)G + 1, sizeof *goff);
    gmem = malloc((size_t)E * sizeof *gmem);
    if (!goff || !gmem) {
      free(goff);
      free(gmem);
      return carl_fail(CARL_ERR_NOMEM, "router '%s': out of memory", r->impl->name);
    }
    for (int e = 0; e < E; e++) {
      if (sl.group[e] < 0 || sl.group[e] >= G) {
        free(goff);
        free(gmem);
        return carl_fail(CARL_ERR_INVALID, "group of expert %d: %d, outside 0..%d", e, sl.group[e], G - 1);
      }
      goff[sl.group[e] + 1]++;
    }
    for (int g = 0; g < G; g++) goff[g + 1] += goff[g];
    int32_t *fill = calloc((size_t)G, sizeof *fill);
    if (!fill) {
      free(goff);
      free(gmem);
      return carl_fail(CARL_ERR_NOMEM, "router '%s': out of memory", r->impl->name);
    }
    for (int e = 0; e < E; e++) gmem[goff[sl.group[e]] + fill[sl.group[e]]++] = e; /* ascending within a group */
    free(fill);
  }
  const int64_t C = carl_route_capacity(c.cf, T, k, E);
  const int need_sel = sl.bias || c.jitter > 0 || sl.on_logits;
  const int stats = r->psum && r->psum_cap >= E && (c.aux_coef > 0 || c.z_coef > 0);
  const int64_t nb = (T + CARL__BLK - 1) / CARL__BLK;
  float *part = stats ? calloc((size_t)nb * (size_t)E, sizeof *part) : NULL;
  double *zpart = stats ? calloc((size_t)nb, sizeof *zpart) : NULL;
  float *prio = C > 0 ? malloc((size_t)T * (size_t)k * sizeof *prio) : NULL;
  if ((stats && (!part || !zpart)) || (C > 0 && !prio)) {
    free(part);
    free(zpart);
    free(prio);
    free(goff);
    free(gmem);
    return carl_fail(CARL_ERR_NOMEM, "router '%s': out of memory", r->impl->name);
  }
  const float *logits = in->logits;
  int32_t *experts = out->experts;
  float *weights = out->weights;
  const uint64_t jbase = (uint64_t)in->step * (uint64_t)T;
  const int pg = sl.per_group;
  int64_t bad = INT64_MAX;
  int nomem = 0;
#pragma omp parallel if((int64_t)T * E >= CARL_PAR_MIN) reduction(min : bad) reduction(| : nomem)
  {
    float *s = malloc((size_t)E * sizeof *s);
    float *sel = need_sel ? malloc((size_t)E * sizeof *sel) : NULL;
    float *gs = grouped ? malloc((size_t)G * sizeof *gs) : NULL;
    int32_t *gidx = grouped ? malloc((size_t)G * sizeof *gidx) : NULL;
    float *gval = grouped ? malloc((size_t)(G > pg ? G : pg) * sizeof *gval) : NULL;
    int32_t *pidx = grouped ? malloc((size_t)pg * sizeof *pidx) : NULL;
    uint8_t *mask = grouped ? malloc((size_t)E) : NULL;
    float val[64], *valp = k <= 64 ? val : malloc((size_t)k * sizeof *valp);
    if (!s || (need_sel && !sel) || !valp || (grouped && (!gs || !gidx || !gval || !pidx || !mask))) nomem = 1;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
      if (nomem) continue;
      int64_t t1 = (b + 1) * CARL__BLK < T ? (b + 1) * CARL__BLK : T;
      for (int64_t t = b * CARL__BLK; t < t1; t++) {
        const float *z = logits + t * E;
        int32_t *ex = experts + t * k;
        float *w = weights + t * k;
        float lse = carl_route_score_row(z, E, c.score, s);
        if (isnan(lse)) {
          if (t < bad) bad = t;
          for (int j = 0; j < k; j++) {
            ex[j] = -1;
            w[j] = 0;
          }
          continue;
        }
        const float *v = s;
        if (need_sel) {
          const float *base = sl.on_logits ? z : s;
          const float *bb = sl.bias ? sl.bias + (size_t)(sl.bias_row ? sl.bias_row[t] : 0) * E : NULL;
          for (int e = 0; e < E; e++) sel[e] = base[e] + (bb ? bb[e] : 0.0f);
          if (c.jitter > 0)
            for (int e = 0; e < E; e++)
              sel[e] += (float)c.jitter * carl_rng_normal(in->seed, CARL_STREAM_JITTER, (jbase + (uint64_t)t) * (uint64_t)E + (uint64_t)e);
          v = sel;
        }
        if (grouped) {
          const float *gb = sl.group_bonus ? sl.group_bonus + (size_t)(sl.bonus_row ? sl.bonus_row[t] : 0) * G : NULL;
          for (int g = 0; g < G; g++) {
            int m = 0, n = goff[g + 1] - goff[g];
            int q = pg < n ? pg : n;
            float a = 0;
            if (q > 0) {
              for (int i = 0; i < n; i++) carl__topk_push(v[gmem[goff[g] + i]], i, q, &m, pidx, gval);
              for (int i = 0; i < q; i++) a += gval[i];
            } else {
              a = -INFINITY;
            }
            gs[g] = a + (gb ? gb[g] : 0.0f);
          }
          carl_topk_row(gs, G, sl.M, gidx, gval);
          memset(mask, 0, (size_t)E);
          for (int i = 0; i < sl.M; i++)
            if (gidx[i] >= 0)
              for (int j = goff[gidx[i]]; j < goff[gidx[i] + 1]; j++) mask[gmem[j]] = 1;
          carl_topk_row_masked(v, mask, E, k, ex, valp);
        } else {
          carl_topk_row(v, E, k, ex, valp);
        }
        float a = 0;
        for (int j = 0; j < k; j++) {
          w[j] = ex[j] >= 0 ? s[ex[j]] : 0.0f;
          a += w[j];
        }
        if (c.renorm && a > 0) {
          float inv = 1.0f / a;
          for (int j = 0; j < k; j++) w[j] *= inv;
        }
        if (prio)
          for (int j = 0; j < k; j++) prio[t * k + j] = valp[j];
        if (stats) carl__stats_row(s, E, c.score, lse, part + b * E, &zpart[b]);
      }
    }
    free(s);
    free(sel);
    free(gs);
    free(gidx);
    free(gval);
    free(pidx);
    free(mask);
    if (valp != val) free(valp);
  }
  carl_status st = CARL_OK;
  if (nomem) st = carl_fail(CARL_ERR_NOMEM, "router '%s': out of memory", r->impl->name);
  else if (bad != INT64_MAX) st = carl__bad_token(bad, logits, E);
  if (st == CARL_OK && C > 0) {
    out->capacity = C;
    st = carl_route_apply_capacity(T, k, E, C, experts, prio, weights, c.renorm, &out->dropped);
  }
  if (st == CARL_OK && stats) carl__stats_finish(r, part, zpart, nb, E);
  free(part);
  free(zpart);
  free(prio);
  free(goff);
  free(gmem);
  return st;
}

void carl_route_add_loss(carl_route_out_t *out, const char *name, double value) {
  if (out->nloss < CARL_MAX_LOSSES) {
    out->loss[out->nloss].name = name;
    out->loss[out->nloss].value = value;
    out->nloss++;
  }
  out->loss_total += value;
}

/* ---- topology helpers ------------------------------------------------------------------------ */
int carl_route_devices(const carl_route_in_t *in) {
  if (in->topo && in->topo->devices > 0) return in->topo->devices;
  if (in->place && in->place->D > 0) return in->place->D;
  return 1;
}

carl_status carl_route_expert_groups(const carl_route_in_t *in, int level, int32_t *group, int *ngroups) {
  const int E = in->E;
  const int D = carl_route_devices(in);
  const int P = in->topo && in->topo->devices_per_node > 0 ? in->topo->devices_per_node : D;
  if (in->place) {
    const carl_placement_t *p = in->place;
    if (p->E != E) return carl_fail(CARL_ERR_INVALID, "placement: %d experts but the logits have E = %d", p->E, E);
    if (p->D != D) return carl_fail(CARL_ERR_INVALID, "placement: %d devices but the topology has %d", p->D, D);
    for (int e = 0; e < E; e++) group[e] = -1;
    for (int d = 0; d < p->D; d++)
      for (int j = 0; j < p->slots; j++) {
        int32_t e = p->slot_expert[d * p->slots + j];
        if (e < -1 || e >= E) return carl_fail(CARL_ERR_INVALID, "placement: device %d slot %d holds expert %d, outside 0..%d", d, j, e, E - 1);
        if (e >= 0 && group[e] < 0) group[e] = d;
      }
    for (int e = 0; e < E; e++)
      if (group[e] < 0) return carl_fail(CARL_ERR_INVALID, "placement: expert %d is on no device", e);
  } else {
    for (int e = 0; e < E; e++) group[e] = (int32_t)((int64_t)e * D / E);
  }
  if (level == 1) {
    for (int e = 0; e < E; e++) group[e] /= P;
    *ngroups = (D + P - 1) / P;
  } else {
    *ngroups = D;
  }
  return CARL_OK;
}

/* ---- state files ----------------------------------------------------------------------------- */
#define CARL__STATE_HDR 56
static const char carl__magic[8] = {'C', 'A', 'R', 'L', 'R', 'S', 'T', '1'};

carl_status carl_route_state_save(const char *path, const char *router, int type, int64_t n, const void *data) {
  size_t es = type == CARL_STATE_F64 ? 8 : 4;
  size_t len = CARL__STATE_HDR + (size_t)n * es;
  unsigned char *buf = calloc(1, len);
  if (!buf) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", path);
  memcpy(buf, carl__magic, 8);
  strncpy((char *)buf + 8, router, 31);
  int32_t ty = type;
  memcpy(buf + 40, &ty, 4);
  memcpy(buf + 48, &n, 8);
  if (n > 0) memcpy(buf + CARL__STATE_HDR, data, (size_t)n * es);
  carl_status st = carl_write_file_atomic(path, buf, len);
  free(buf);
  return st;
}

carl_status carl_route_state_load(const char *path, const char *router, int type, int64_t n, void *data, void **alloc,
                                  int64_t *nout) {
  char *buf;
  size_t len;
  CARL_TRY(carl_read_file(path, &buf, &len));
  carl_status st = CARL_OK;
  int32_t ty;
  int64_t cnt;
  size_t es = type == CARL_STATE_F64 ? 8 : 4;
  char name[33] = {0};
  if (len < CARL__STATE_HDR || memcmp(buf, carl__magic, 8) != 0) {
    st = carl_fail(CARL_ERR_PARSE, "%s: not a router state file (bad header)", path);
    goto done;
  }
  memcpy(name, buf + 8, 32);
  memcpy(&ty, buf + 40, 4);
  memcpy(&cnt, buf + 48, 8);
  if (strcmp(name, router) != 0) {
    st = carl_fail(CARL_ERR_STATE, "%s: state of router '%s', expected '%s'", path, name, router);
    goto done;
  }
  if (ty != type) {
    st = carl_fail(CARL_ERR_STATE, "%s: element type %d, expected %d", path, ty, type);
    goto done;
  }
  if (cnt < 0 || (size_t)cnt > (len - CARL__STATE_HDR) / es || len != CARL__STATE_HDR + (size_t)cnt * es) {
    st = carl_fail(CARL_ERR_PARSE, "%s: truncated or corrupt (count %lld, %zu bytes)", path, (long long)cnt, len);
    goto done;
  }
  if (n >= 0 && cnt != n) {
    st = carl_fail(CARL_ERR_STATE, "%s: state has %lld values, this router needs %lld", path, (long long)cnt, (long long)n);
    goto done;
  }
  if (n >= 0) {
    if (cnt > 0) memcpy(data, buf + CARL__STATE_HDR, (size_t)cnt * es);
  } else {
    void *a = malloc((size_t)(cnt > 0 ? cnt : 1) * es);
    if (!a) {
      st = carl_fail(CARL_ERR_NOMEM, "%s: out of memory", path);
      goto done;
    }
    if (cnt > 0) memcpy(a, buf + CARL__STATE_HDR, (size_t)cnt * es);
    *alloc = a;
    *nout = cnt;
  }
done:
  free(buf);
  return st;
}
