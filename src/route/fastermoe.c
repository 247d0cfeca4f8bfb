/* fastermoe: the FasterMoE topology-aware gate, a baseline (ALGORITHMS.md 2.10; research/carl.md 6a;
 * laekov/fastmoe fmoe/gates/faster_gate.py).
 *
 * Per source device a (the reference runs one gate per worker) with T_a tokens and the quota
 * Q_a = floor(phi * T_a); "remote" = an expert with no replica on the token's node:
 *   strict = 0 (the reference rule, k = 2 generalised to k):
 *     R = tokens whose top-1 expert is remote. If |R| < Q_a: plain top-k for every token.
 *     Otherwise the Q_a tokens of R with the highest top-1 score keep their remote top-1 in the
 *     last slot; every token's other slots are its best node-local experts.
 *   strict = 1 (default; ALGORITHMS.md: at most phi of the tokens leave the node):
 *     L = tokens whose plain top-k holds any remote expert. If |L| <= Q_a: plain top-k.
 *     Otherwise the Q_a tokens of L with the highest score on their best chosen remote expert keep
 *     that expert in the last slot; the other slots, and every other token, take node-local experts.
 * Weights: s at the chosen experts, renormalised (renorm = 1: the reference's softmax over the
 * chosen logits), listed in descending order. Selection ties go to the lower index (experts) and
 * the lower token index (quota).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "route/router_impl.h"
#include "route/seed_internal.h"

typedef struct {
  double phi;
  int strict;
} fastermoe_state;

static const carl_opt_t fastermoe_opts[] = {
    {"phi", 0.14, "fraction of a device's tokens that may send to another node, in [0, 1]"},
    {"strict", 1, "1: at most phi of the tokens leave the node; 0: the reference gate's rule"},
};

static carl_status fastermoe_init(carl_router_t *r) {
  fastermoe_state *st = calloc(1, sizeof *st);
  if (!st) return carl_fail(CARL_ERR_NOMEM, "fastermoe: state");
  r->state = st;
  CARL_TRY(carl_router_opt_real(r, "phi", 0, 1, &st->phi));
  CARL_TRY(carl_router_opt_int(r, "strict", 0, 1, &st->strict));
  return CARL_OK;
}

static void fastermoe_free(carl_router_t *r) {
  free(r->state);
  r->state = NULL;
}

/* Candidate order: higher key first, then the lower token index. */
typedef struct {
  float key;
  int64_t t;
} cand_t;
static int cand_cmp(const void *a, const void *b) {
  const cand_t *x = a, *y = b;
  if (x->key != y->key) return x->key > y->key ? -1 : 1;
  return x->t < y->t ? -1 : (x->t > y->t);
}

static carl_status fastermoe_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  fastermoe_state *st = r->state;
  carl_route_common_t c;
  carl_route_common(r, &c);
  if (!in->logits) return carl_fail(CARL_ERR_INVALID, "logits: NULL");
  const int64_t T = in->T;
  const int E = in->E, k = c.k;
  carl__seed_topo_t tp;
  CARL_TRY(carl__seed_topo(&r->scratch, in, 0, 0, &tp));
  carl_status rc = CARL_OK;
  for (int n = 0; n < tp.N && rc == CARL_OK; n++)
    if (tp.nlocal[n] < k)
      rc = carl_fail(CARL_ERR_INVALID, "fastermoe: node %d holds %d experts, fewer than k=%d", n, tp.nlocal[n], k);
  float *s = NULL, *prio = NULL, *val = NULL;
  int32_t *plain = NULL;
  uint8_t *leave = NULL;
  cand_t *cand = NULL;
  float *key = NULL;
  int32_t *rem = NULL;
  if (rc == CARL_OK) {
    s = malloc((size_t)T * E * sizeof *s);
    prio = malloc((size_t)T * k * sizeof *prio);
    val = malloc((size_t)k * sizeof *val);
    plain = malloc((size_t)T * k * sizeof *plain);
    leave = calloc((size_t)T, 1);
    cand = malloc((size_t)T * sizeof *cand);
    key = malloc((size_t)T * sizeof *key);
    rem = malloc((size_t)T * sizeof *rem);
    if (!s || !prio || !val || !plain || !leave || !cand || !key || !rem)
      rc = carl_fail(CARL_ERR_NOMEM, "fastermoe: T=%lld E=%d", (long long)T, E);
  }
  if (rc == CARL_OK) rc = carl_route_scores(r, in->logits, T, E, c.score, s);
  if (rc == CARL_OK) {
    /* plain top-k and each token's candidate remote expert (rem, -1: none) with its score (key) */
    for (int64_t t = 0; t < T; t++) {
      int32_t *p = plain + t * k;
      const uint8_t *loc = tp.local + (size_t)tp.node[t] * E;
      carl_kern_topk_row(s + t * E, E, k, p, val);
      rem[t] = -1;
      if (st->strict) {
        for (int j = 0; j < k && rem[t] < 0; j++)
          if (!loc[p[j]]) rem[t] = p[j]; /* descending: the first remote is the best */
      } else if (!loc[p[0]]) {
        rem[t] = p[0];
      }
      key[t] = rem[t] >= 0 ? s[t * E + rem[t]] : 0;
    }
    /* per source device: the quota */
    for (int a = 0; a < tp.D; a++) {
      int64_t Ta = 0, nc = 0;
      for (int64_t t = 0; t < T; t++) {
        if (tp.src[t] != a) continue;
        Ta++;
        if (rem[t] >= 0) cand[nc++] = (cand_t){key[t], t};
      }
      int64_t Q = (int64_t)floor(st->phi * (double)Ta);
      int use_plain = st->strict ? nc <= Q : nc < Q;
      if (use_plain) {
        for (int64_t t = 0; t < T; t++)
          if (tp.src[t] == a) leave[t] = 2; /* 2: plain top-k */
        continue;
      }
      qsort(cand, (size_t)nc, sizeof *cand, cand_cmp);
      for (int64_t i = 0; i < Q && i < nc; i++) leave[cand[i].t] = 1; /* 1: keeps its remote expert */
    }
    for (int64_t t = 0; t < T; t++) {
      int32_t *ex = out->experts + t * k;
      const float *st_ = s + t * E;
      if (leave[t] == 2) {
        memcpy(ex, plain + t * k, (size_t)k * sizeof *ex);
      } else {
        const uint8_t *loc = tp.local + (size_t)tp.node[t] * E;
        carl_kern_topk_row_masked(st_, loc, E, k, ex, val);
        if (leave[t] == 1) ex[k - 1] = rem[t];
        carl__sort_by_score(ex, k, st_); /* descending gate order, ties to the lower index */
      }
      for (int j = 0; j < k; j++) {
        out->weights[t * k + j] = st_[ex[j]];
        prio[t * k + j] = st_[ex[j]];
      }
    }
    rc = carl__seed_finish(T, k, E, carl_kern_capacity(c.cf, T, k, E), c.renorm, out->experts, out->weights, prio, out);
  }
  free(s); free(prio); free(val); free(plain); free(leave); free(cand); free(key); free(rem);
  return rc;
}

const carl_router_impl_t carl__router_fastermoe = {
    .name = "fastermoe",
    .help = "FasterMoE topology gate: at most phi of each device's tokens leave the node, the rest stay local",
    .opts = fastermoe_opts,
    .nopts = sizeof fastermoe_opts / sizeof fastermoe_opts[0],
    .init = fastermoe_init,
    .route = fastermoe_route,
    .update = NULL,
    .save = NULL,
    .load = NULL,
    .free = fastermoe_free,
};
