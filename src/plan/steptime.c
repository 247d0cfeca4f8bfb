/* Step time of a MoE layer: dispatch + expert compute + combine, the slowest device, overlap
 * (carl/steptime.h; definitions in docs/cost-model.md, "Step time"). Plain loops: the work is
 * O(T k) for the loads and O(D^2) for the phase times, small beside routing. */
#include "carl/steptime.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>


#define STEPTIME_MAX_CHUNKS 4096

void carl_steptime_opts_default(carl_steptime_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->backward = 1;
  o->overlap = CARL_OVERLAP_NONE;
  o->chunks = 2;
}

carl_status carl_steptime_load(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                               const int32_t *src, int64_t T, int k, int64_t *rows, int64_t *tokens) {
  CARL_ASSERT(t && p && rows);
  const int D = t->devices;
  if (p->D != D) return carl_fail(CARL_ERR_INVALID, "step time: placement has %d devices but the topology has %d", p->D, D);
  if (!p->rep_off || !p->rep_dev) return carl_fail(CARL_ERR_STATE, "step time: placement has no replica index");
  if (k < 1) return carl_fail(CARL_ERR_INVALID, "step time: k must be >= 1, got %d", k);
  if (T < 0) return carl_fail(CARL_ERR_INVALID, "step time: T must be >= 0, got %lld", (long long)T);
  if (T > 0 && !experts) return carl_fail(CARL_ERR_INVALID, "step time: experts is NULL");
  for (int64_t i = 0; i < T; i++) {
    int a = src ? src[i] : (int)(i * D / T);
    if (a < 0 || a >= D)
      return carl_fail(CARL_ERR_INVALID, "step time: src[%lld] = %d is outside [0, %d)", (long long)i, a, D);
    for (int j = 0; j < k; j++) {
      int e = experts[i * k + j];
      if (e < -1 || e >= p->E)
        return carl_fail(CARL_ERR_INVALID, "step time: experts[%lld] = %d is outside [-1, %d)", (long long)(i * k + j), e,
                         p->E);
    }
  }
  memset(rows, 0, sizeof *rows * (size_t)D);
  if (tokens) memset(tokens, 0, sizeof *tokens * (size_t)D);
  for (int64_t i = 0; i < T; i++) {
    int a = src ? src[i] : (int)(i * D / T);
    if (tokens) tokens[a]++;
    for (int j = 0; j < k; j++) {
      int e = experts[i * k + j];
      if (e >= 0) rows[carl_plan_replica(t, p, e, a, i)]++;
    }
  }
  return CARL_OK;
}

double carl_steptime_phase(const carl_topo_t *t, const double *bytes, double scale) {
  const int D = t->devices;
  double worst = 0;
  for (int a = 0; a < D; a++) {
    /* send side: row a; receive side: column a */
    double send = 0, recv = 0;
    for (int b = 0; b < D; b++) {
      if (b == a) continue;
      const carl_link_t *l = &t->link[carl_topo_link(t, a, b)];
      double vs = bytes[(size_t)a * D + b] * scale, vr = bytes[(size_t)b * D + a] * scale;
      if (vs > 0) send += vs / (l->GBps * 1e9) + l->latency_us * 1e-6;
      if (vr > 0) recv += vr / (l->GBps * 1e9) + l->latency_us * 1e-6;
    }
    double m = send > recv ? send : recv;
    if (m > worst) worst = m;
  }
  return worst;
}

/* One pass: T = A + C + B without overlap; pipelined over n chunks,
 * T = (a + c + b) + (n - 1) max(a + b, c) with a, b the phase times of 1/n of the bytes, c = C/n. */
static double pass_time(double a, double b, double c, int n) {
  double comm = a + b;
  return (a + c + b) + (double)(n - 1) * (comm > c ? comm : c);
}

carl_status carl_steptime_layer(const carl_topo_t *t, const double *dispatch, const int64_t *rows, const int64_t *tokens,
                                const carl_steptime_opts_t *o, carl_steptime_t *out) {
  CARL_ASSERT(t && dispatch && rows && o && out);
  const int D = t->devices;
  if (o->d < 1) return carl_fail(CARL_ERR_INVALID, "step time: d (model width) must be >= 1, got %lld", (long long)o->d);
  if (o->f < 1) return carl_fail(CARL_ERR_INVALID, "step time: f (expert FFN width) must be >= 1, got %lld", (long long)o->f);
  if (o->f_shared < 0)
    return carl_fail(CARL_ERR_INVALID, "step time: f_shared must be >= 0, got %lld", (long long)o->f_shared);
  if (o->f_shared > 0 && !tokens)
    return carl_fail(CARL_ERR_INVALID, "step time: f_shared = %lld needs the tokens per device", (long long)o->f_shared);
  if (o->overlap != CARL_OVERLAP_NONE && o->overlap != CARL_OVERLAP_PIPELINE)
    return carl_fail(CARL_ERR_INVALID, "step time: overlap must be none (0) or pipelined (1), got %d", (int)o->overlap);
  if (o->chunks < 1 || o->chunks > STEPTIME_MAX_CHUNKS)
    return carl_fail(CARL_ERR_INVALID, "step time: chunks must be in [1, %d], got %d", STEPTIME_MAX_CHUNKS, o->chunks);
  for (int b = 0; b < D; b++) {
    double r = o->flops ? o->flops[b] : t->flops;
    if (!(r > 0) || !isfinite(r)) {
      if (!o->flops)
        return carl_fail(CARL_ERR_INVALID,
                         "step time: topology '%s' has no device rate (add \"flops\": {\"peak_TFLOPS\": .., "
                         "\"efficiency\": ..} to its file)",
                         t->name);
      return carl_fail(CARL_ERR_INVALID, "step time: flops[%d] must be > 0, got %g", b, r);
    }
    if (rows[b] < 0 || (tokens && tokens[b] < 0))
      return carl_fail(CARL_ERR_INVALID, "step time: device %d has a negative row or token count", b);
  }
  for (size_t i = 0; i < (size_t)D * D; i++)
    if (!(dispatch[i] >= 0) || !isfinite(dispatch[i]))
      return carl_fail(CARL_ERR_INVALID, "step time: dispatch bytes [%zu, %zu] = %g must be finite and >= 0", i / D,
                       i % D, dispatch[i]);

  memset(out, 0, sizeof *out);
  /* forward FLOPs: 6 d f per routed row (three d x f GEMMs, 2 FLOPs per multiply-add), 6 d f_shared
   * per token for the shared experts */
  const double f_row = 6.0 * (double)o->d * (double)o->f, f_tok = 6.0 * (double)o->d * (double)o->f_shared;
  double cmax = -1, csum = 0;
  for (int b = 0; b < D; b++) {
    double r = o->flops ? o->flops[b] : t->flops;
    double c = ((double)rows[b] * f_row + (tokens ? (double)tokens[b] * f_tok : 0.0)) / r;
    csum += c;
    if (c > cmax) cmax = c, out->straggler = b;
    if (rows[b] > out->rows_max) out->rows_max = rows[b];
  }
  const double cmean = csum / D;
  const int n = o->chunks;
  /* the combine phase is the transpose of dispatch: every device's send and receive swap, so its
   * phase time (max of the two per device) is the same */
  out->dispatch_s = carl_steptime_phase(t, dispatch, 1.0);
  out->combine_s = out->dispatch_s;
  const double an = n == 1 ? out->dispatch_s : carl_steptime_phase(t, dispatch, 1.0 / n), bn = an;
  const int passes = o->backward ? 2 : 1;
  const double factor = o->backward ? 3.0 : 1.0; /* forward 1x, backward 2x the forward FLOPs */
  out->comm_s = passes * (out->dispatch_s + out->combine_s);
  out->compute_s = factor * cmax;
  out->compute_mean_s = factor * cmean;
  out->serial_s = out->comm_s + out->compute_s;
  out->pipelined_s = pass_time(an, bn, cmax / n, n);
  if (o->backward) out->pipelined_s += pass_time(an, bn, 2.0 * cmax / n, n);
  out->layer_s = o->overlap == CARL_OVERLAP_PIPELINE ? out->pipelined_s : out->serial_s;
  return CARL_OK;
}

carl_status carl_steptime_decision(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                                   const int32_t *src, int64_t T, int k, const carl_cost_t *c,
                                   const carl_steptime_opts_t *o, carl_steptime_t *out) {
  CARL_ASSERT(t && c);
  const int D = t->devices;
  if (c->D != D || !c->dispatch)
    return carl_fail(CARL_ERR_INVALID, "step time: cost accumulator is for %d devices but the topology has %d", c->D, D);
  int64_t *rows = malloc(sizeof(int64_t) * 2 * (size_t)D);
  if (!rows) return carl_fail(CARL_ERR_NOMEM, "step time: out of memory for %d devices", D);
  carl_status st = carl_steptime_load(t, p, experts, src, T, k, rows, rows + D);
  if (st == CARL_OK) st = carl_steptime_layer(t, c->dispatch, rows, rows + D, o, out);
  free(rows);
  return st;
}
