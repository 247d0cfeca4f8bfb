/* Dispatch plan and the transparent communication model (ALGORITHMS.md section 1,
 * docs/cost-model.md): the fast path used by default. plan_ref.c is the plain reference.
 *
 * One call works in two steps:
 *   1. count: for every token, its distinct destination devices (nearest replicas), turned into
 *      per-hop copy counts cnt[a, b] (flat: a -> b; hierarchical: a -> forwarder -> b). Threads
 *      count into private [D, D] matrices that are summed afterwards (integers: the result does
 *      not depend on the thread count).
 *   2. finish: bytes, messages, phase times and the traffic matrix from cnt, O(D^2).
 */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "plan/plan_internal.h"

#define PLAN_MAX_K 1024

carl_status carl_cost_init(carl_cost_t *c, const carl_topo_t *t) {
  memset(c, 0, sizeof *c);
  if (t->devices < 1) return carl_fail(CARL_ERR_INVALID, "cost: topology has %d devices", t->devices);
  const size_t D = (size_t)t->devices;
  c->D = t->devices;
  c->send_bytes = calloc(D * CARL_NLINK, sizeof *c->send_bytes);
  c->recv_bytes = calloc(D * CARL_NLINK, sizeof *c->recv_bytes);
  c->send_msgs = calloc(D * CARL_NLINK, sizeof *c->send_msgs);
  c->recv_msgs = calloc(D * CARL_NLINK, sizeof *c->recv_msgs);
  c->traffic = calloc(D * D, sizeof *c->traffic);
  c->dispatch = calloc(D * D, sizeof *c->dispatch);
  if (!c->send_bytes || !c->recv_bytes || !c->send_msgs || !c->recv_msgs || !c->traffic || !c->dispatch) {
    carl_cost_free(c);
    return carl_fail(CARL_ERR_NOMEM, "cost: out of memory for %zu x %zu devices", D, D);
  }
  return CARL_OK;
}

void carl_cost_reset(carl_cost_t *c) {
  const size_t D = (size_t)c->D;
  memset(c->send_bytes, 0, D * CARL_NLINK * sizeof *c->send_bytes);
  memset(c->recv_bytes, 0, D * CARL_NLINK * sizeof *c->recv_bytes);
  memset(c->send_msgs, 0, D * CARL_NLINK * sizeof *c->send_msgs);
  memset(c->recv_msgs, 0, D * CARL_NLINK * sizeof *c->recv_msgs);
  memset(c->traffic, 0, D * D * sizeof *c->traffic);
  memset(c->dispatch, 0, D * D * sizeof *c->dispatch);
  memset(c->bytes, 0, sizeof c->bytes);
  c->inter_fraction = 0;
  c->a2a_s = 0;
  c->copies = 0;
  c->calls = 0;
}

void carl_cost_free(carl_cost_t *c) {
  if (!c) return;
  free(c->send_bytes);
  free(c->recv_bytes);
  free(c->send_msgs);
  free(c->recv_msgs);
  free(c->traffic);
  free(c->dispatch);
  memset(c, 0, sizeof *c);
}

carl_status carl__plan_check_args(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts, int64_t T,
                                  int k, size_t token_bytes, carl_plan_mode mode, const carl_cost_t *c) {
  CARL_ASSERT(t && p && c);
  if (p->D != t->devices)
    return carl_fail(CARL_ERR_INVALID, "placement has %d devices but the topology has %d", p->D, t->devices);
  if (c->D != t->devices)
    return carl_fail(CARL_ERR_INVALID, "cost accumulator is for %d devices but the topology has %d", c->D,
                     t->devices);
  if (!p->rep_off || !p->rep_dev) return carl_fail(CARL_ERR_STATE, "placement has no replica index");
  if (T < 0) return carl_fail(CARL_ERR_INVALID, "T must be >= 0, got %lld", (long long)T);
  if (k < 1 || k > PLAN_MAX_K) return carl_fail(CARL_ERR_INVALID, "k must be in [1, %d], got %d", PLAN_MAX_K, k);
  if (token_bytes == 0) return carl_fail(CARL_ERR_INVALID, "token_bytes must be > 0");
  if (mode != CARL_PLAN_FLAT && mode != CARL_PLAN_HIER)
    return carl_fail(CARL_ERR_INVALID, "plan mode must be flat (0) or hierarchical (1), got %d", (int)mode);
  if (T > 0 && !experts) return carl_fail(CARL_ERR_INVALID, "experts is NULL");
  return CARL_OK;
}

int carl_plan_replica(const carl_topo_t *t, const carl_placement_t *p, int e, int a, int64_t token) {
  CARL_ASSERT(e >= 0 && e < p->E);
  const int32_t *r = p->rep_dev + p->rep_off[e];
  const int n = p->rep_off[e + 1] - p->rep_off[e];
  if (n == 1) return r[0];
  int best = CARL_NLINK, nbest = 0;
  for (int i = 0; i < n; i++) {
    int cls = carl_topo_link(t, a, r[i]);
    if (cls < best) {
      best = cls;
      nbest = 1;
    } else if (cls == best) {
      nbest++;
    }
  }
  /* Tie rule: the (token mod nbest)-th of the equally near replicas, in ascending device order. */
  int pick = (int)((uint64_t)token % (uint64_t)nbest);
  for (int i = 0; i < n; i++)
    if (carl_topo_link(t, a, r[i]) == best && pick-- == 0) return r[i];
  CARL_ASSERT(0);
  return -1;
}

/* ---- step 1: count copies per hop -------------------------------------------------------------- */

typedef struct {
  const carl_topo_t *t;
  const carl_placement_t *p;
  const int32_t *experts; /* [T, k] */
  const int32_t *src;     /* [T] or NULL */
  const int32_t *single;  /* [E] the device of an expert with one replica, -1 with several */
  int64_t T;
  int k, D, P, E;
  carl_plan_mode mode;
} plan_ctx;

static inline int plan_dest(const plan_ctx *x, int e, int a, int64_t i) {
  int b = x->single[e];
  return b >= 0 ? b : carl_plan_replica(x->t, x->p, e, a, i);
}

/* Only validates the expert ids of token i (used when its source device is invalid). */
static void plan_check_row(const plan_ctx *x, int64_t i, int64_t *bad_e) {
  for (int j = 0; j < x->k; j++) {
    int e = x->experts[i * x->k + j];
    if ((e < -1 || e >= x->E) && i * x->k + j < *bad_e) *bad_e = i * x->k + j;
  }
}

/* Counts tokens [t0, t1) into cnt [D, D]. Returns copies; *bad_e / *bad_s get the smallest invalid
 * experts / src index seen (unchanged when none). */
static int64_t plan_count_small(const plan_ctx *x, int64_t t0, int64_t t1, int64_t *cnt, int64_t *bad_e,
                                int64_t *bad_s) {
  /* D <= 64: destination sets as bit masks. */
  const int D = x->D, P = x->P, k = x->k;
  const unsigned E = (unsigned)x->E;
  const int hier = x->mode == CARL_PLAN_HIER;
  uint64_t node_mask[64];
  for (int n = 0; n * P < D; n++) node_mask[n] = (P == 64 ? ~0ull : ((1ull << P) - 1)) << (n * P);
  int64_t copies = 0;
  for (int64_t i = t0; i < t1; i++) {
    int a = x->src ? x->src[i] : (int)(i * D / x->T);
    if ((unsigned)a >= (unsigned)D) {
      if (i < *bad_s) *bad_s = i;
      plan_check_row(x, i, bad_e);
      continue;
    }
    const int32_t *ex = x->experts + i * k;
    uint64_t m = 0;
    for (int j = 0; j < k; j++) {
      int e = ex[j];
      if ((unsigned)e >= E) {
        if (e != -1 && i * k + j < *bad_e) *bad_e = i * k + j;
        continue;
      }
      m |= 1ull << plan_dest(x, e, a, i);
    }
    copies += __builtin_popcountll(m);
    int64_t *row = cnt + (size_t)a * D;
    if (!hier) {
      while (m) {
        row[__builtin_ctzll(m)]++;
        m &= m - 1;
      }
      continue;
    }
    const int na = a / P, la = a % P;
    uint64_t own = m & node_mask[na], rest = m & ~node_mask[na];
    while (own) {
      row[__builtin_ctzll(own)]++;
      own &= own - 1;
    }
    while (rest) {
      int n = __builtin_ctzll(rest) / P;
      int f = n * P + la;
      row[f]++;
      uint64_t fw = rest & node_mask[n] & ~(1ull << f);
      int64_t *frow = cnt + (size_t)f * D;
      while (fw) {
        frow[__builtin_ctzll(fw)]++;
        fw &= fw - 1;
      }
      rest &= ~node_mask[n];
    }
  }
  return copies;
}

static int64_t plan_count_large(const plan_ctx *x, int64_t t0, int64_t t1, int64_t *cnt, int64_t *bad_e,
                                int64_t *bad_s) {
  /* Any D: destination and node lists (k is small, so linear dedup). */
  const int D = x->D, P = x->P, k = x->k;
  const unsigned E = (unsigned)x->E;
  const int hier = x->mode == CARL_PLAN_HIER;
  int dest[PLAN_MAX_K], nodes[PLAN_MAX_K];
  int64_t copies = 0;
  for (int64_t i = t0; i < t1; i++) {
    int a = x->src ? x->src[i] : (int)(i * D / x->T);
    if ((unsigned)a >= (unsigned)D) {
      if (i < *bad_s) *bad_s = i;
      plan_check_row(x, i, bad_e);
      continue;
    }
    const int32_t *ex = x->experts + i * k;
    int nd = 0;
    for (int j = 0; j < k; j++) {
      int e = ex[j];
      if ((unsigned)e >= E) {
        if (e != -1 && i * k + j < *bad_e) *bad_e = i * k + j;
        continue;
      }
      int b = plan_dest(x, e, a, i), q = 0;
      while (q < nd && dest[q] != b) q++;
      if (q == nd) dest[nd++] = b;
    }
    copies += nd;
    int64_t *row = cnt + (size_t)a * D;
    if (!hier) {
      for (int q = 0; q < nd; q++) row[dest[q]]++;
      continue;
    }
    const int na = a / P, la = a % P;
    int nn = 0;
    for (int q = 0; q < nd; q++) {
      int b = dest[q], n = b / P;
      if (n == na) {
        row[b]++;
        continue;
      }
      int f = n * P + la, r = 0;
      while (r < nn && nodes[r] != n) r++;
      if (r == nn) {
        nodes[nn++] = n;
        row[f]++;
      }
      if (b != f) cnt[(size_t)f * D + b]++;
    }
  }
  return copies;
}

/* ---- step 2: bytes, messages, times ------------------------------------------------------------ */

static void plan_finish(const carl_topo_t *t, const int64_t *cnt, size_t token_bytes, int64_t copies, carl_cost_t *c) {
  const int D = t->devices;
  const double tb = (double)token_bytes;
  double ds[CARL_NLINK], dr[CARL_NLINK];
  int64_t ms[CARL_NLINK], mr[CARL_NLINK];
  double t_dispatch = 0, t_combine = 0;
  for (int a = 0; a < D; a++) {
    memset(ds, 0, sizeof ds);
    memset(dr, 0, sizeof dr);
    memset(ms, 0, sizeof ms);
    memset(mr, 0, sizeof mr);
    for (int b = 0; b < D; b++) {
      int cls = carl_topo_link(t, a, b);
      int64_t out = cnt[(size_t)a * D + b], in = cnt[(size_t)b * D + a];
      ds[cls] += (double)out * tb;
      dr[cls] += (double)in * tb;
      if (cls != CARL_LINK_SELF) {
        ms[cls] += out > 0;
        mr[cls] += in > 0;
      }
      c->dispatch[(size_t)a * D + b] = (double)out * tb;
      c->traffic[(size_t)a * D + b] += (double)out * tb + (double)in * tb;
    }
    double send = 0, recv = 0;
    for (int cls = CARL_LINK_INTRA; cls < CARL_NLINK; cls++) {
      if (t->link[cls].GBps <= 0) continue;
      send += ds[cls] / (t->link[cls].GBps * 1e9) + ms[cls] * t->link[cls].latency_us * 1e-6;
      recv += dr[cls] / (t->link[cls].GBps * 1e9) + mr[cls] * t->link[cls].latency_us * 1e-6;
    }
    /* dispatch: send ds, receive dr; combine (the mirror): send dr, receive ds */
    double ph = send > recv ? send : recv;
    if (ph > t_dispatch) t_dispatch = ph;
    if (ph > t_combine) t_combine = ph;
    for (int cls = 0; cls < CARL_NLINK; cls++) {
      int i = a * CARL_NLINK + cls;
      c->send_bytes[i] += ds[cls] + dr[cls];
      c->recv_bytes[i] += dr[cls] + ds[cls];
      c->send_msgs[i] += ms[cls] + mr[cls];
      c->recv_msgs[i] += mr[cls] + ms[cls];
      c->bytes[cls] += ds[cls] + dr[cls];
    }
  }
  double moved = c->bytes[CARL_LINK_INTRA] + c->bytes[CARL_LINK_RACK] + c->bytes[CARL_LINK_INTER];
  c->inter_fraction = moved > 0 ? (c->bytes[CARL_LINK_RACK] + c->bytes[CARL_LINK_INTER]) / moved : 0.0;
  c->a2a_s += t_dispatch + t_combine;
  c->copies += copies;
  c->calls += 1;
}

carl_status carl_plan_cost(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                           const int32_t *src, int64_t T, int k, size_t token_bytes, carl_plan_mode mode,
                           carl_cost_t *c) {
  CARL_TRY(carl__plan_check_args(t, p, experts, T, k, token_bytes, mode, c));
  const int D = t->devices;
  const size_t DD = (size_t)D * D;
  int nth = 1;
#ifdef _OPENMP
  nth = omp_get_max_threads();
  if (T < 16384) nth = 1;
  while (nth > 1 && DD * (size_t)nth * sizeof(int64_t) > ((size_t)512 << 20)) nth--;
#endif
  int32_t *single = malloc((size_t)p->E * sizeof *single);
  int64_t *cnt = calloc(DD * (size_t)nth, sizeof *cnt);
  if (!single || !cnt) {
    free(single);
    free(cnt);
    return carl_fail(CARL_ERR_NOMEM, "plan: out of memory for %d x %d devices", D, D);
  }
  for (int e = 0; e < p->E; e++) single[e] = p->rep_off[e + 1] - p->rep_off[e] == 1 ? p->rep_dev[p->rep_off[e]] : -1;
  plan_ctx x = {t, p, experts, src, single, T, k, D, t->devices_per_node, p->E, mode};
  int64_t copies = 0, bad_e = INT64_MAX, bad_s = INT64_MAX;
#ifdef _OPENMP
#pragma omp parallel num_threads(nth) reduction(+ : copies) reduction(min : bad_e, bad_s)
#endif
  {
    int id = 0, n = 1;
#ifdef _OPENMP
    id = omp_get_thread_num();
    n = omp_get_num_threads();
#endif
    int64_t t0 = T * id / n, t1 = T * (id + 1) / n;
    int64_t *mine = cnt + DD * (size_t)id;
    if (D <= 64)
      copies += plan_count_small(&x, t0, t1, mine, &bad_e, &bad_s);
    else
      copies += plan_count_large(&x, t0, t1, mine, &bad_e, &bad_s);
  }
  free(single);
  carl_status st = CARL_OK;
  if (bad_e != INT64_MAX)
    st = carl_fail(CARL_ERR_INVALID, "experts[%lld, %lld] = %d is not an expert id in [-1, %d)",
                   (long long)(bad_e / k), (long long)(bad_e % k), experts[bad_e], p->E);
  else if (bad_s != INT64_MAX)
    st = carl_fail(CARL_ERR_INVALID, "src[%lld] = %d is not a device in [0, %d)", (long long)bad_s, src[bad_s], D);
  if (st == CARL_OK) {
    for (int th = 1; th < nth; th++) {
      const int64_t *o = cnt + DD * (size_t)th;
      for (size_t i = 0; i < DD; i++) cnt[i] += o[i];
    }
    plan_finish(t, cnt, token_bytes, copies, c);
  }
  free(cnt);
  return st;
}
