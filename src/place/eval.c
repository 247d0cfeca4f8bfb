/* Placement quality under the statistics: device/node loads, expected bytes per link class,
 * inter-node copies, traffic cost, co-activation locality. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/place.h"

carl_status carl_place_evaluate(const carl_topo_t *t, const carl_place_input_t *in, const carl_placement_t *p,
                                double token_bytes, carl_place_eval_t *ev) {
  CARL_ASSERT(t != NULL && in != NULL && p != NULL && ev != NULL);
  memset(ev, 0, sizeof *ev);
  const int E = in->E, D = t->devices, P = t->devices_per_node, N = t->nodes;
  if (p->E != E) return carl_fail(CARL_ERR_SHAPE, "placement has %d experts but the statistics have %d", p->E, E);
  if (p->D != D) return carl_fail(CARL_ERR_SHAPE, "placement has %d devices but the topology has %d", p->D, D);
  if (in->traffic && in->N != N) return carl_fail(CARL_ERR_SHAPE, "stats: traffic has %d source nodes but the topology has %d", in->N, N);
  if (!(token_bytes >= 0) || !isfinite(token_bytes)) return carl_fail(CARL_ERR_INVALID, "token_bytes must be finite and >= 0, got %g", token_bytes);
  double *dl = calloc((size_t)D, sizeof *dl);
  unsigned char *has = calloc((size_t)D * E, 1); /* [D, E] */
  if (!dl || !has) {
    free(dl); free(has);
    return carl_fail(CARL_ERR_NOMEM, "evaluate: out of memory");
  }
  for (int e = 0; e < E; e++) {
    int c = p->rep_off[e + 1] - p->rep_off[e];
    for (int r = p->rep_off[e]; r < p->rep_off[e + 1]; r++) {
      dl[p->rep_dev[r]] += in->load[e] / c;
      has[(size_t)p->rep_dev[r] * E + e] = 1;
    }
  }
  double total = 0;
  for (int d = 0; d < D; d++) {
    total += dl[d];
    if (dl[d] > ev->dev_max) ev->dev_max = dl[d];
  }
  ev->dev_mean = total / D;
  for (int n = 0; n < N; n++) {
    double s = 0;
    for (int d = n * P; d < (n + 1) * P; d++) s += dl[d];
    if (s > ev->node_max) ev->node_max = s;
  }
  ev->node_mean = total / N;
  const double c_intra = P > 1 ? carl_topo_cost(t, 0, 1) : 0.0, tb2 = 2.0 * token_bytes;
  if (in->traffic)
    for (int n = 0; n < N; n++)
      for (int e = 0; e < E; e++) {
        double a = in->traffic[(size_t)n * E + e];
        if (a == 0) continue;
        int rn = 0, bcls = CARL_NLINK;
        double bcost = INFINITY;
        for (int r = p->rep_off[e]; r < p->rep_off[e + 1]; r++) {
          int d = p->rep_dev[r];
          if (d / P == n) rn++;
          int cls = carl_topo_link(t, n * P, d);
          if (cls < bcls) { bcls = cls; bcost = carl_topo_cost(t, n * P, d); }
        }
        if (rn > 0) {
          double self = (double)rn / P;
          ev->bytes[CARL_LINK_SELF] += a * self * tb2;
          ev->bytes[CARL_LINK_INTRA] += a * (1 - self) * tb2;
          ev->traffic_cost += a * (1 - self) * c_intra;
        } else {
          ev->bytes[bcls] += a * tb2;
          ev->inter_copies += a;
          ev->traffic_cost += a * bcost;
        }
      }
  if (in->coact) {
    double all = 0, local = 0;
    for (int i = 0; i < E; i++)
      for (int j = i + 1; j < E; j++) {
        double x = in->coact[(size_t)i * E + j] + in->coact[(size_t)j * E + i];
        if (x == 0) continue;
        all += x;
        int loc = 0;
        for (int r = p->rep_off[i]; r < p->rep_off[i + 1] && !loc; r++) loc = has[(size_t)p->rep_dev[r] * E + j];
        if (loc) local += x;
      }
    ev->coact_local = all > 0 ? local / all : 0.0;
  }
  free(dl);
  free(has);
  return CARL_OK;
}
