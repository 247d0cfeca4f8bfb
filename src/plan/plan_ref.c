/* Reference dispatch plan and cost accounting: the definitions of docs/cost-model.md written as
 * plain loops, one token and one copy at a time. The fast path (plan.c) is tested against this. */
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"

/* Source device of token i. */
static int ref_src(const int32_t *src, int64_t i, int64_t T, int D) {
  if (src) return src[i];
  return (int)(i * D / T);
}

carl_status carl__plan_cost_ref(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                                const int32_t *src, int64_t T, int k, size_t token_bytes, carl_plan_mode mode,
                                carl_cost_t *c) {
  CARL_TRY(carl__plan_check_args(t, p, experts, T, k, token_bytes, mode, c));
  const int D = t->devices, P = t->devices_per_node;
  const double tb = (double)token_bytes;
  for (int64_t i = 0; i < T * k; i++)
    if (experts[i] < -1 || experts[i] >= p->E)
      return carl_fail(CARL_ERR_INVALID, "experts[%lld, %lld] = %d is not an expert id in [-1, %d)",
                       (long long)(i / k), (long long)(i % k), experts[i], p->E);
  if (src)
    for (int64_t i = 0; i < T; i++)
      if (src[i] < 0 || src[i] >= D)
        return carl_fail(CARL_ERR_INVALID, "src[%lld] = %d is not a device in [0, %d)", (long long)i, src[i], D);

  double *disp = calloc((size_t)D * D, sizeof *disp); /* [D, D] this call's dispatch bytes per hop */
  int *dest = malloc((size_t)k * sizeof *dest);
  if (!disp || !dest) {
    free(disp);
    free(dest);
    return carl_fail(CARL_ERR_NOMEM, "plan: out of memory for %d x %d devices", D, D);
  }
  int64_t copies = 0;
  for (int64_t i = 0; i < T; i++) {
    int a = ref_src(src, i, T, D);
    /* distinct destination devices of token i */
    int nd = 0;
    for (int j = 0; j < k; j++) {
      int e = experts[i * k + j];
      if (e < 0) continue;
      int b = carl_plan_replica(t, p, e, a, i);
      int seen = 0;
      for (int q = 0; q < nd; q++)
        if (dest[q] == b) seen = 1;
      if (!seen) dest[nd++] = b;
    }
    copies += nd;
    if (mode == CARL_PLAN_FLAT) {
      for (int q = 0; q < nd; q++) disp[(size_t)a * D + dest[q]] += tb;
    } else {
      int na = a / P, la = a % P;
      for (int n = 0; n < t->nodes; n++) {
        int any = 0;
        for (int q = 0; q < nd; q++)
          if (dest[q] / P == n) any = 1;
        if (!any) continue;
        if (n == na) { /* own node: direct copies (self or intra) */
          for (int q = 0; q < nd; q++)
            if (dest[q] / P == n) disp[(size_t)a * D + dest[q]] += tb;
        } else { /* one copy to the same local index on node n, then forwarded inside n */
          int f = n * P + la;
          disp[(size_t)a * D + f] += tb;
          for (int q = 0; q < nd; q++)
            if (dest[q] / P == n && dest[q] != f) disp[(size_t)f * D + dest[q]] += tb;
        }
      }
    }
  }
  free(dest);

  /* Per device and class: dispatch-phase bytes and messages. */
  double *ds = calloc((size_t)D * CARL_NLINK, sizeof *ds), *dr = calloc((size_t)D * CARL_NLINK, sizeof *dr);
  int64_t *ms = calloc((size_t)D * CARL_NLINK, sizeof *ms), *mr = calloc((size_t)D * CARL_NLINK, sizeof *mr);
  if (!ds || !dr || !ms || !mr) {
    free(disp);
    free(ds);
    free(dr);
    free(ms);
    free(mr);
    return carl_fail(CARL_ERR_NOMEM, "plan: out of memory");
  }
  for (int a = 0; a < D; a++)
    for (int b = 0; b < D; b++) {
      double x = disp[(size_t)a * D + b];
      if (x == 0) continue;
      int cls = carl_topo_link(t, a, b);
      ds[a * CARL_NLINK + cls] += x;
      dr[b * CARL_NLINK + cls] += x;
      if (cls != CARL_LINK_SELF) {
        ms[a * CARL_NLINK + cls] += 1;
        mr[b * CARL_NLINK + cls] += 1;
      }
    }
  /* Phase times: dispatch uses (ds, ms) to send and (dr, mr) to receive; combine the reverse. */
  double t_dispatch = 0, t_combine = 0;
  for (int a = 0; a < D; a++) {
    double send = 0, recv = 0;
    for (int cls = CARL_LINK_INTRA; cls < CARL_NLINK; cls++) {
      if (t->link[cls].GBps <= 0) continue; /* absent class: no traffic can use it */
      send += ds[a * CARL_NLINK + cls] / (t->link[cls].GBps * 1e9) + ms[a * CARL_NLINK + cls] * t->link[cls].latency_us * 1e-6;
      recv += dr[a * CARL_NLINK + cls] / (t->link[cls].GBps * 1e9) + mr[a * CARL_NLINK + cls] * t->link[cls].latency_us * 1e-6;
    }
    double dispatch_a = send > recv ? send : recv;
    double combine_a = recv > send ? recv : send; /* combine sends what dispatch received */
    if (dispatch_a > t_dispatch) t_dispatch = dispatch_a;
    if (combine_a > t_combine) t_combine = combine_a;
  }
  /* Accumulate dispatch + combine. */
  for (int a = 0; a < D; a++)
    for (int cls = 0; cls < CARL_NLINK; cls++) {
      int i = a * CARL_NLINK + cls;
      c->send_bytes[i] += ds[i] + dr[i];
      c->recv_bytes[i] += dr[i] + ds[i];
      c->send_msgs[i] += ms[i] + mr[i];
      c->recv_msgs[i] += mr[i] + ms[i];
      c->bytes[cls] += ds[i] + dr[i];
    }
  for (int a = 0; a < D; a++)
    for (int b = 0; b < D; b++) {
      c->dispatch[(size_t)a * D + b] = disp[(size_t)a * D + b];
      c->traffic[(size_t)a * D + b] += disp[(size_t)a * D + b] + disp[(size_t)b * D + a];
    }
  double moved = c->bytes[CARL_LINK_INTRA] + c->bytes[CARL_LINK_RACK] + c->bytes[CARL_LINK_INTER];
  c->inter_fraction = moved > 0 ? (c->bytes[CARL_LINK_RACK] + c->bytes[CARL_LINK_INTER]) / moved : 0.0;
  c->a2a_s += t_dispatch + t_combine;
  c->copies += copies;
  c->calls += 1;
  free(disp);
  free(ds);
  free(dr);
  free(ms);
  free(mr);
  return CARL_OK;
}
