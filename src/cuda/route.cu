/* The routing driver of the GPU path (carl/cuda.h): a router's selection descriptor
 * (impl->describe) -> the fused kernel (route_select.cu) -> statistics -> the router's and the
 * registry's losses (carl__router_finish). Routers or options without a GPU kernel run on the CPU
 * through the registry, with a note. CPU reference: carl_router_route. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stdint.h>

#include "carl/balance.h"
#include "carl/place.h"
#include "cuda/route_internal.h"
extern "C" {
#include "route/router_impl.h"
}

extern "C" {

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

/* Copies per (source, destination) device of the flat plan of a host decision. */
static carl_status host_hop(const carl_route_in_t *in, const int32_t *experts, const int32_t *src, int k, int64_t *hop) {
  if (!in->topo) {
    int64_t n = 0;
    for (int64_t t = 0; t < in->T; t++) {
      int any = 0;
      for (int j = 0; j < k; j++) any |= experts[t * k + j] >= 0;
      n += any;
    }
    hop[0] = n;
    return CARL_OK;
  }
  carl_placement_t pl;
  memset(&pl, 0, sizeof pl);
  if (!in->place) CARL_TRY(carl_placement_contiguous(&pl, in->E, in->topo->devices));
  carl_plan_t plan;
  memset(&plan, 0, sizeof plan);
  carl_status st = carl_plan_build(in->topo, in->place ? in->place : &pl, experts, src, in->T, k, CARL_PLAN_FLAT, -1,
                                   CARL_PLAN_COUNTS, &plan);
  if (st == CARL_OK) memcpy(hop, plan.hop, sizeof(int64_t) * (size_t)plan.D * plan.D);
  carl_plan_free(&plan);
  if (!in->place) carl_placement_free(&pl);
  return st;
}

/* The router on the CPU through the registry: inputs down, outputs up. */
static carl_status route_on_cpu(carl_cuda_t *g, carl_router_t *r, const carl_route_in_t *in, carl_cuda_route_t *o) {
  const int64_t T = in->T;
  const int E = in->E, k = (int)r->opt[CARL_OPT_K];
  float *z = (float *)malloc(sizeof(float) * (size_t)T * E);
  int32_t *src = in->src ? (int32_t *)malloc(sizeof(int32_t) * (size_t)T) : NULL;
  int32_t *ex = (int32_t *)malloc(sizeof(int32_t) * (size_t)T * k);
  float *w = (float *)malloc(sizeof(float) * (size_t)T * k);
  float *dz = o->out.dlogits ? (float *)malloc(sizeof(float) * (size_t)T * E) : NULL;
  carl_status st = CARL_OK;
  if (!z || (in->src && !src) || !ex || !w || (o->out.dlogits && !dz))
    st = carl_fail(CARL_ERR_NOMEM, "CUDA routing on the CPU: out of host memory for T = %lld, E = %d", (long long)T, E);
  if (st == CARL_OK) st = carl_cuda_download(g, z, in->logits, sizeof(float) * (size_t)T * E);
  if (st == CARL_OK && src) st = carl_cuda_download(g, src, in->src, sizeof(int32_t) * (size_t)T);
  if (st == CARL_OK) {
    carl_route_in_t ih = *in;
    ih.logits = z;
    ih.src = src;
    carl_route_out_t oh = o->out;
    oh.experts = ex;
    oh.weights = w;
    oh.dlogits = dz;
    st = carl_router_route(r, &ih, &oh);
    if (st == CARL_OK) {
      oh.experts = o->out.experts;
      oh.weights = o->out.weights;
      oh.dlogits = o->out.dlogits;
      o->out = oh;
      st = carl_cuda_upload(g, o->out.experts, ex, sizeof(int32_t) * (size_t)T * k);
    }
    if (st == CARL_OK) st = carl_cuda_upload(g, o->out.weights, w, sizeof(float) * (size_t)T * k);
    if (st == CARL_OK && dz) st = carl_cuda_upload(g, o->out.dlogits, dz, sizeof(float) * (size_t)T * E);
    if (st == CARL_OK && o->load) carl_load_experts(ex, T, k, E, o->load);
    if (st == CARL_OK && o->hop) st = host_hop(in, ex, src, k, o->hop);
  }
  free(z);
  free(src);
  free(ex);
  free(w);
  free(dz);
  return st;
}

/* Why the GPU kernel cannot run this selection ("" when it can). */
static void gpu_fit(const carl_router_t *r, const carl_route_in_t *in, const carl_select_t *sl, char *why, size_t n) {
  const int E = in->E;
  why[0] = 0;
  if (sl->on_logits) {
    snprintf(why, n, "selection on the logits plus a bias has no GPU kernel");
    return;
  }
  if (sl->bias_row && !sl->by_src) {
    snprintf(why, n, "per-token bias rows other than the token's device have no GPU kernel");
    return;
  }
  if (sl->group_bonus && sl->bonus_row && !sl->by_src) {
    snprintf(why, n, "per-token group bonus rows other than the token's node have no GPU kernel");
    return;
  }
  const int grouped = sl->group && sl->ngroups > 1 && sl->M >= 1 && sl->M < sl->ngroups;
  if (!grouped) return;
  const int G = sl->ngroups, gs = E / G;
  int contig = E % G == 0;
  for (int e = 0; contig && e < E; e++) contig = sl->group[e] == e / gs;
  if (!contig) {
    snprintf(why, n, "groups that are not %d equal blocks of consecutive experts have no GPU kernel", G);
    return;
  }
  if (gs % 16 != 0 || ((gs / 16) & (gs / 16 - 1)) != 0 || G > 16) {
    snprintf(why, n, "groups of %d experts (%d groups): the GPU kernel takes at most 16 groups of 16 * 2^m experts", gs, G);
    return;
  }
  if (sl->per_group > 4 || sl->per_group > gs) {
    snprintf(why, n, "per-group sums of %d scores: the GPU kernel takes at most 4", sl->per_group);
    return;
  }
  (void)r;
}

static carl_status bad_token_error(carl_cuda_t *g, const carl_route_in_t *in, int64_t t) {
  float *row = (float *)malloc(sizeof(float) * (size_t)in->E);
  if (!row) return carl_fail(CARL_ERR_NOMEM, "logits: token %lld is not finite (out of host memory for the detail)", (long long)t);
  carl_status st = carl_cuda_download(g, row, in->logits + t * in->E, sizeof(float) * (size_t)in->E);
  if (st != CARL_OK) {
    free(row);
    return st;
  }
  int e = 0;
  while (e < in->E && isfinite(row[e])) e++;
  st = carl_fail(CARL_ERR_NUMERIC, "logits: token %lld, expert %d is %s (finite values required)", (long long)t,
                 e < in->E ? e : 0, e < in->E && isnan(row[e]) ? "NaN" : "infinite");
  free(row);
  return st;
}

carl_status carl_cuda_route(carl_cuda_t *g, carl_router_t *r, const carl_route_in_t *in, carl_cuda_route_t *o) {
  if (!g || !r || !in || !o) return carl_fail(CARL_ERR_INVALID, "carl_cuda_route: NULL argument");
  o->on_cpu = 0;
  o->note[0] = 0;
  if (in->T < 1) return carl_fail(CARL_ERR_INVALID, "T: %lld tokens, must be >= 1", (long long)in->T);
  if (in->E < 1) return carl_fail(CARL_ERR_INVALID, "E: %d experts, must be >= 1", in->E);
  const int k = (int)r->opt[CARL_OPT_K];
  if (k > in->E) return carl_fail(CARL_ERR_INVALID, "k: %d experts per token but only E = %d experts", k, in->E);
  if (!in->logits) return carl_fail(CARL_ERR_INVALID, "logits: NULL");
  if (!o->out.experts || !o->out.weights)
    return carl_fail(CARL_ERR_INVALID, "router '%s': output experts/weights buffers are NULL", r->impl->name);
  carl_route_common_t c;
  carl_route_common(r, &c);
  const int64_t T = in->T;
  const int E = in->E;
  /* what keeps this route on the CPU */
  if (!r->impl->describe) snprintf(o->note, sizeof o->note, "router '%s' has no GPU kernel", r->impl->name);
  else if (c.cf > 0) snprintf(o->note, sizeof o->note, "capacity_factor %g: capacity is applied on the CPU", c.cf);
  else if (c.jitter > 0) snprintf(o->note, sizeof o->note, "jitter: the selection noise is drawn on the CPU");
  else if (o->out.dlogits) snprintf(o->note, sizeof o->note, "dlogits: the router-loss gradients are computed on the CPU");
  else if (!carl__cuda_select_fits_E(E))
    snprintf(o->note, sizeof o->note, "E = %d: the GPU kernel takes E = 16, 32, 64, 128, 256 or 512", E);
  else if (k > 16) snprintf(o->note, sizeof o->note, "k = %d: the GPU kernel takes k <= 16", k);
  carl_select_t sl;
  memset(&sl, 0, sizeof sl);
  carl_route_in_t id = *in; /* what describe may read: no tokens */
  id.T = 1;
  id.logits = NULL;
  id.src = NULL;
  if (!o->note[0]) {
    CARL_TRY(carl__router_prepare(r, E, &o->out));
    carl_status ds = r->impl->describe(r, &id, &sl);
    if (ds == CARL_ERR_UNSUPPORTED) snprintf(o->note, sizeof o->note, "%s", carl_errmsg());
    else if (ds != CARL_OK) return ds;
    else gpu_fit(r, in, &sl, o->note, sizeof o->note);
  }
  if (o->note[0]) {
    o->on_cpu = 1;
    return route_on_cpu(g, r, in, o);
  }

  /* ---- the kernel's arguments ---------------------------------------------------------------- */
  const int D = carl_route_devices(in);
  carl__selargs_t a;
  memset(&a, 0, sizeof a);
  a.logits = in->logits;
  a.T = T;
  a.E = E;
  a.k = k;
  a.score = c.score;
  a.renorm = c.renorm;
  a.need_lse = c.z_coef > 0;
  const int stats = c.aux_coef > 0 || c.z_coef > 0 || sl.stats;
  a.want_p = stats && (c.aux_coef > 0 || sl.stats);
  a.want_z = stats;
  a.grouped = sl.group && sl.ngroups > 1 && sl.M >= 1 && sl.M < sl.ngroups;
  a.sel_mode = sl.bias ? 2 : (a.grouped ? 1 : 0);
  a.exact = a.sel_mode != 0;
  a.bias_by_src = sl.bias && sl.bias_row != NULL;
  a.src = in->src;
  a.D = D;
  if (a.grouped) {
    a.G = sl.ngroups;
    a.gsize = E / a.G;
    while ((16 << a.gshift) < a.gsize) a.gshift++;
    a.M = sl.M;
    a.pg = sl.per_group;
  }
  a.gate_order = sl.gate_order;
  /* expert -> device for the hop counts (home replica; replicas: counted on the CPU) */
  int32_t *edev = NULL, replicated = 0;
  if (o->hop) {
    edev = (int32_t *)carl_arena_alloc(&r->scratch, sizeof(int32_t) * (size_t)E);
    if (!edev) return carl_fail(CARL_ERR_NOMEM, "CUDA routing: out of host memory");
    CARL_TRY(carl_route_expert_groups(&id, 0, edev, &a.D));
    a.D = D;
    if (in->place) {
      int *cnt = (int *)carl_arena_alloc(&r->scratch, sizeof(int) * (size_t)E);
      if (!cnt) return carl_fail(CARL_ERR_NOMEM, "CUDA routing: out of host memory");
      const carl_placement_t *p = in->place;
      for (int i = 0; i < p->D * p->slots; i++)
        if (p->slot_expert[i] >= 0 && p->slot_expert[i] < E) replicated |= ++cnt[p->slot_expert[i]] > 1;
    }
  }
  const int want_hop = o->hop && !replicated;
  a.need_src = in->src != NULL || a.bias_by_src || (a.grouped && sl.group_bonus && sl.bonus_row) || want_hop;
  int blocks = 0;
  size_t smem = 0;
  a.exp_dev = want_hop ? (const int32_t *)1 : NULL; /* placeholder for the grid computation */
  CARL_TRY(carl__cuda_select_grid(g, &a, &blocks, &smem));
  /* one device scratch: results | block partials | tables */
  const int nrows = sl.bias ? (a.bias_by_src ? D : 1) : 0;
  const int gbrows = a.grouped && sl.group_bonus ? (sl.bonus_row ? sl.nbrows : 1) : 0;
  const size_t n_res = (size_t)E * 2 + 1 + (size_t)D * D + 2; /* psum, zsum, load, hop, bad (8 bytes each) */
  const size_t o_part = align8(n_res * 8), o_zpart = align8(o_part + sizeof(float) * (size_t)blocks * E);
  const size_t o_tab = align8(o_zpart + sizeof(double) * (size_t)blocks);
  const size_t tab_bytes = sizeof(float) * ((size_t)nrows * E + (size_t)gbrows * (a.grouped ? a.G : 0)) +
                           sizeof(int32_t) * ((size_t)D + (size_t)E) + 64;
  char *dev;
  CARL_TRY(carl__cuda_scratch(g, o_tab + tab_bytes, (void **)&dev));
  char *pin;
  CARL_TRY(carl__cuda_pinned(g, (tab_bytes > n_res * 8 ? tab_bytes : n_res * 8) + 64, (void **)&pin));
  double *d_psum = (double *)dev, *d_zsum = d_psum + E;
  unsigned long long *d_load = (unsigned long long *)(d_zsum + 1), *d_hop = d_load + E, *d_bad = d_hop + (size_t)D * D;
  /* tables, staged in pinned memory */
  size_t off = 0;
  float *t_bias = NULL, *t_bonus = NULL;
  int32_t *t_node = NULL, *t_edev = NULL;
  if (nrows) {
    memcpy(pin + off, sl.bias, sizeof(float) * (size_t)nrows * E);
    t_bias = (float *)(dev + o_tab + off);
    off += sizeof(float) * (size_t)nrows * E;
  }
  if (gbrows) {
    memcpy(pin + off, sl.group_bonus, sizeof(float) * (size_t)gbrows * a.G);
    t_bonus = (float *)(dev + o_tab + off);
    off += sizeof(float) * (size_t)gbrows * a.G;
  }
  off = align8(off);
  if (gbrows) {
    int32_t *nd = (int32_t *)(pin + off);
    for (int d = 0; d < D; d++) nd[d] = sl.bonus_row && sl.dev_node ? sl.dev_node[d] : 0;
    t_node = (int32_t *)(dev + o_tab + off);
    off += sizeof(int32_t) * (size_t)D;
  }
  if (want_hop) {
    memcpy(pin + off, edev, sizeof(int32_t) * (size_t)E);
    t_edev = (int32_t *)(dev + o_tab + off);
    off += sizeof(int32_t) * (size_t)E;
  }
  if (off) CARL_CUDA_TRY(cudaMemcpyAsync(dev + o_tab, pin, off, cudaMemcpyHostToDevice, g->stream));
  CARL_CUDA_TRY(cudaMemsetAsync(d_load, 0, sizeof(unsigned long long) * ((size_t)E + (size_t)D * D), g->stream));
  CARL_CUDA_TRY(cudaMemsetAsync(d_bad, 0xFF, 2 * sizeof(unsigned long long), g->stream));
  a.bias = t_bias;
  a.bonus = t_bonus;
  a.dev_node = t_node;
  a.exp_dev = t_edev;
  a.experts = o->out.experts;
  a.weights = o->out.weights;
  a.ppart = (float *)(dev + o_part);
  a.zpart = (double *)(dev + o_zpart);
  a.load = d_load;
  a.hop = d_hop;
  a.bad = d_bad;
  a.psum = d_psum;
  a.zsum = d_zsum;
  CARL_TRY(carl__cuda_select(g, &a, blocks, smem));
  CARL_CUDA_TRY(cudaMemcpyAsync(pin, dev, n_res * 8, cudaMemcpyDeviceToHost, g->stream));
  CARL_CUDA_TRY(cudaStreamSynchronize(g->stream));
  const double *h_psum = (const double *)pin, *h_zsum = h_psum + E;
  const unsigned long long *h_load = (const unsigned long long *)(h_zsum + 1), *h_hop = h_load + E,
                           *h_bad = h_hop + (size_t)D * D;
  if (h_bad[1] != ~0ull) {
    int32_t d = 0;
    const int64_t t = (int64_t)h_bad[1];
    CARL_TRY(carl_cuda_download(g, &d, in->src + t, sizeof d));
    return carl_fail(CARL_ERR_INVALID, "src: token %lld is on device %d, outside 0..%d", (long long)t, d, D - 1);
  }
  if (h_bad[0] != ~0ull) return bad_token_error(g, in, (int64_t)h_bad[0]);
  /* statistics for the losses, as the CPU kernel leaves them */
  for (int e = 0; e < E; e++) {
    r->psum[e] = h_psum[e];
    r->load[e] = (double)h_load[e];
  }
  r->have_psum = a.want_p;
  r->zsum = *h_zsum;
  r->have_zsum = stats;
  r->have_load = 1;
  o->out.capacity = 0;
  o->out.dropped = 0;
  if (o->load)
    for (int e = 0; e < E; e++) o->load[e] = (double)h_load[e];
  if (want_hop)
    for (size_t i = 0; i < (size_t)D * D; i++) o->hop[i] = (int64_t)h_hop[i];
  carl_status st = carl__router_finish(r, in, &o->out);
  if (st != CARL_OK || !o->hop || want_hop) return st;
  /* replicated placement: the nearest replica per token, by the plan on the CPU */
  int32_t *ex = (int32_t *)malloc(sizeof(int32_t) * (size_t)T * k);
  int32_t *src = in->src ? (int32_t *)malloc(sizeof(int32_t) * (size_t)T) : NULL;
  if (!ex || (in->src && !src)) st = carl_fail(CARL_ERR_NOMEM, "CUDA routing: out of host memory for the hop counts");
  if (st == CARL_OK) st = carl_cuda_download(g, ex, o->out.experts, sizeof(int32_t) * (size_t)T * k);
  if (st == CARL_OK && src) st = carl_cuda_download(g, src, in->src, sizeof(int32_t) * (size_t)T);
  if (st == CARL_OK) st = host_hop(in, ex, src, k, o->hop);
  free(ex);
  free(src);
  return st;
}

carl_status carl_cuda_route_update(carl_cuda_t *g, carl_router_t *r, const carl_route_in_t *in, carl_cuda_route_t *o) {
  if (!g || !r || !in || !o) return carl_fail(CARL_ERR_INVALID, "carl_cuda_route_update: NULL argument");
  if (!r->impl->update) return CARL_OK;
  const int64_t T = in->T;
  const int E = in->E, k = (int)r->opt[CARL_OPT_K];
  if (r->impl->describe && o->load) {
    /* the routers with a GPU kernel update from the global loads alone */
    carl_route_in_t ih = *in;
    ih.logits = NULL;
    ih.src = NULL;
    carl_route_out_t oh = o->out;
    oh.global_load = o->load;
    return carl_router_update(r, &ih, &oh);
  }
  float *z = (float *)malloc(sizeof(float) * (size_t)T * E);
  int32_t *src = in->src ? (int32_t *)malloc(sizeof(int32_t) * (size_t)T) : NULL;
  int32_t *ex = (int32_t *)malloc(sizeof(int32_t) * (size_t)T * k);
  float *w = (float *)malloc(sizeof(float) * (size_t)T * k);
  double *load = (double *)malloc(sizeof(double) * (size_t)E);
  carl_status st = CARL_OK;
  if (!z || (in->src && !src) || !ex || !w || !load)
    st = carl_fail(CARL_ERR_NOMEM, "CUDA router update: out of host memory for T = %lld, E = %d", (long long)T, E);
  if (st == CARL_OK) st = carl_cuda_download(g, z, in->logits, sizeof(float) * (size_t)T * E);
  if (st == CARL_OK && src) st = carl_cuda_download(g, src, in->src, sizeof(int32_t) * (size_t)T);
  if (st == CARL_OK) st = carl_cuda_download(g, ex, o->out.experts, sizeof(int32_t) * (size_t)T * k);
  if (st == CARL_OK) st = carl_cuda_download(g, w, o->out.weights, sizeof(float) * (size_t)T * k);
  if (st == CARL_OK) {
    carl_route_in_t ih = *in;
    ih.logits = z;
    ih.src = src;
    carl_route_out_t oh = o->out;
    oh.experts = ex;
    oh.weights = w;
    oh.dlogits = NULL;
    if (o->load) {
      oh.global_load = o->load;
    } else {
      carl_load_experts(ex, T, k, E, load);
      oh.global_load = load;
    }
    st = carl_router_update(r, &ih, &oh);
  }
  free(z);
  free(src);
  free(ex);
  free(w);
  free(load);
  return st;
}

} /* extern "C" */
