/* Common routing machinery of the routers (route/router_impl.h): scores that leave the loss
 * statistics in the router, gate backward, the fused selection over the router's options, expert
 * groups and state files. The kernels themselves are in src/kern. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route/router_impl.h"

/* ---- scores ----------------------------------------------------------------------------------- */
carl_status carl_route_scores(carl_router_t *r, const float *logits, int64_t T, int E, int score, float *s) {
  const int stats = r && r->psum && r->psum_cap >= E;
  CARL_TRY(carl_kern_scores(logits, T, E, score, s, stats ? r->psum : NULL, stats ? &r->zsum : NULL));
  if (stats) r->have_psum = r->have_zsum = 1;
  return CARL_OK;
}

/* ---- gate backward --------------------------------------------------------------------------- */
carl_status carl_route_gate_backward(const float *logits, int64_t T, int E, int k, int score, int renorm,
                                     const int32_t *experts, const float *dweights, float *dlogits) {
  if (!logits || !experts || !dweights || !dlogits)
    return carl_fail(CARL_ERR_INVALID, "gate backward: NULL argument");
  int64_t bad = INT64_MAX;
  int nomem = 0;
#pragma omp parallel if((int64_t)T * E >= CARL_OMP_MIN_WORK) reduction(min : bad) reduction(| : nomem)
  {
    float *s = malloc((size_t)E * sizeof *s);
    double *ds = malloc((size_t)E * sizeof *ds);
    if (!s || !ds) nomem = 1;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
      if (!s || !ds) continue;
      const float *z = logits + t * E;
      if (isnan(carl_kern_score_row(z, E, score, s))) {
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
  if (bad != INT64_MAX) return carl_kern_bad_token(logits, E, bad);
  return CARL_OK;
}

/* ---- the fused selection --------------------------------------------------------------------- */
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
    goff = carl_arena_alloc(&r->scratch, ((size_t)G + 1) * sizeof *goff);
    gmem = carl_arena_alloc(&r->scratch, (size_t)E * sizeof *gmem);
    int32_t *fill = carl_arena_alloc(&r->scratch, (size_t)G * sizeof *fill);
    if (!goff || !gmem || !fill) return carl_fail(CARL_ERR_NOMEM, "router '%s': out of memory", r->impl->name);
    for (int e = 0; e < E; e++) {
      if (sl.group[e] < 0 || sl.group[e] >= G)
        return carl_fail(CARL_ERR_INVALID, "group of expert %d: %d, outside 0..%d", e, sl.group[e], G - 1);
      goff[sl.group[e] + 1]++;
    }
    for (int g = 0; g < G; g++) goff[g + 1] += goff[g];
    for (int e = 0; e < E; e++) gmem[goff[sl.group[e]] + fill[sl.group[e]]++] = e; /* ascending within a group */
  }
  const int64_t C = carl_kern_capacity(c.cf, T, k, E);
  const int stats = r->psum && r->psum_cap >= E && (c.aux_coef > 0 || c.z_coef > 0 || sl.stats);
  const int need_p = stats && (c.aux_coef > 0 || sl.stats); /* P_e; the z-loss needs logsumexp only */
  const carl_kern_select_t ks = {.T = T, .E = E, .k = k, .logits = in->logits, .experts = out->experts,
                                 .weights = out->weights, .score = c.score, .renorm = c.renorm,
                                 .on_logits = sl.on_logits, .bias = sl.bias, .bias_row = sl.bias_row,
                                 .jitter = c.jitter, .seed = in->seed, .step = in->step, .G = G, .M = sl.M,
                                 .per_group = sl.per_group, .goff = goff, .gmem = gmem,
                                 .group_bonus = sl.group_bonus, .bonus_row = sl.bonus_row,
                                 .gate_order = sl.gate_order, .C = C, .dropped = &out->dropped,
                                 .zsum = stats ? &r->zsum : NULL, .need_lse = c.z_coef > 0,
                                 .psum = need_p ? r->psum : NULL, .load = r->load};
  carl_status st = carl_kern_select(&ks, &r->scratch);
  if (st == CARL_ERR_NOMEM) return carl_errctx(st, "router '%s'", r->impl->name);
  CARL_TRY(st);
  if (C > 0) out->capacity = C;
  if (stats) {
    r->have_psum = need_p;
    r->have_zsum = 1;
  }
  if (need_p && C == 0 && r->load) r->have_load = 1;
  return CARL_OK;
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
/* Header: magic [8], router name [CARL_ROUTER_NAME_MAX] at 8, type (int32) at 40, count (int64) at 48. */
#define CARL__STATE_HDR 56
_Static_assert(8 + CARL_ROUTER_NAME_MAX == 40, "router state files hold a name of 32 bytes");
static const char carl__magic[8] = {'C', 'A', 'R', 'L', 'R', 'S', 'T', '1'};

carl_status carl_route_state_save(const char *path, const char *router, int type, int64_t n, const void *data) {
  size_t es = type == CARL_STATE_F64 ? 8 : 4;
  size_t len = CARL__STATE_HDR + (size_t)n * es;
  unsigned char *buf = calloc(1, len);
  if (!buf) return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", path);
  memcpy(buf, carl__magic, 8);
  strncpy((char *)buf + 8, router, CARL_ROUTER_NAME_MAX - 1);
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
  char name[CARL_ROUTER_NAME_MAX + 1] = {0};
  if (len < CARL__STATE_HDR || memcmp(buf, carl__magic, 8) != 0) {
    st = carl_fail(CARL_ERR_PARSE, "%s: not a router state file (bad header)", path);
    goto done;
  }
  memcpy(name, buf + 8, CARL_ROUTER_NAME_MAX);
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
  if (type == CARL_STATE_F64)
    for (int64_t i = 0; i < cnt; i++) {
      double v;
      memcpy(&v, buf + CARL__STATE_HDR + (size_t)i * es, 8);
      if (!isfinite(v)) {
        st = carl_fail(CARL_ERR_NUMERIC, "%s: value %lld of %lld is %s (a router state must be finite)", path,
                       (long long)i, (long long)cnt, isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");
        goto done;
      }
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
