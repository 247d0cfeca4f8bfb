/* The dispatch plan of one routing decision (carl/plan.h): hop counts from the fast kernels
 * (plan.c), and with CARL_PLAN_ROWS the copy and row lists an executor runs, built by plain loops
 * in two passes (count per pair / group, then fill in token order). */
#include <stdlib.h>
#include <string.h>

#include "plan/plan_internal.h"

void carl_plan_free(carl_plan_t *plan) {
  if (!plan) return;
  void *ps[] = {plan->hop,     plan->send_off, plan->send_tok, plan->fwd_off,      plan->fwd_parent, plan->tok_off,
                plan->tok_copy, plan->recv_off, plan->row_copy, plan->row_slot, plan->copy_row_off, plan->copy_row};
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
  memset(plan, 0, sizeof *plan);
}

/* Grow *p to hold n elements of size sz (capacity in *cap). */
static int plan_grow(void *pp, int64_t *cap, int64_t n, size_t sz) {
  void **p = pp;
  if (n <= *cap && *p) return 1;
  void *q = realloc(*p, (size_t)(n > 0 ? n : 1) * sz);
  if (!q) return 0;
  *p = q;
  *cap = n > 0 ? n : 1;
  return 1;
}

/* One token's copies: its distinct destination devices (ascending), and per destination the
 * first-hop pair and, when forwarded, the forwarding pair. */
typedef struct {
  int nd;
  int dest[1024]; /* destination devices, ascending */
  int hop1[1024]; /* first-hop destination of dest[q] (dest[q] itself, or the forwarder) */
} plan_token_t;

static void plan_token(const carl_topo_t *t, const carl_placement_t *p, const int32_t *ex, int k, int a, int64_t i,
                       carl_plan_mode mode, plan_token_t *tk) {
  const int P = t->devices_per_node;
  tk->nd = 0;
  for (int j = 0; j < k; j++) {
    if (ex[j] < 0) continue;
    int b = carl_plan_replica(t, p, ex[j], a, i), q = 0;
    while (q < tk->nd && tk->dest[q] < b) q++;
    if (q < tk->nd && tk->dest[q] == b) continue;
    memmove(tk->dest + q + 1, tk->dest + q, sizeof(int) * (size_t)(tk->nd - q));
    tk->dest[q] = b;
    tk->nd++;
  }
  for (int q = 0; q < tk->nd; q++) {
    int b = tk->dest[q];
    tk->hop1[q] = (mode == CARL_PLAN_FLAT || b / P == a / P) ? b : (b / P) * P + a % P;
  }
}

static carl_status plan_rows(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                             const int32_t *src, int64_t T, int k, carl_plan_mode mode, int device, carl_plan_t *pl) {
  const int D = t->devices, S = p->slots, E = p->E;
  const size_t DD = (size_t)D * D;
  carl_status st = CARL_OK;
  plan_token_t *tk = malloc(sizeof *tk);
  int32_t *slot_of = malloc(sizeof(int32_t) * (size_t)D * (size_t)E); /* [D, E] first local slot of e on b */
  int64_t *fill = calloc(2 * DD + 1, sizeof *fill);
  if (!tk || !slot_of || !fill) {
    st = carl_fail(CARL_ERR_NOMEM, "plan: out of memory for the row lists");
    goto out;
  }
  for (size_t i = 0; i < (size_t)D * E; i++) slot_of[i] = -1;
  for (int b = D - 1; b >= 0; b--)
    for (int j = S - 1; j >= 0; j--) {
      int e = p->slot_expert[b * S + j];
      if (e >= 0) slot_of[(size_t)b * E + e] = j;
    }
  int64_t *c1 = fill, *c2 = fill + DD; /* per pair: first-hop and forwarded copies */
#define KEEP(a, b) (device < 0 || (a) == device || (b) == device)
  /* pass 1: counts per pair, per group, per token */
  int64_t n_rows = 0;
  int64_t *grp = NULL, *tokn = NULL;
  grp = calloc((size_t)D * S + 1, sizeof *grp);
  tokn = calloc((size_t)T + 1, sizeof *tokn);
  if (!grp || !tokn) {
    st = carl_fail(CARL_ERR_NOMEM, "plan: out of memory for the row lists");
    goto out2;
  }
  for (int64_t i = 0; i < T; i++) {
    const int a = src ? src[i] : (int)(i * D / T);
    const int32_t *ex = experts + i * k;
    plan_token(t, p, ex, k, a, i, mode, tk);
    for (int q = 0; q < tk->nd; q++) {
      int b = tk->dest[q], f = tk->hop1[q], dup = 0;
      for (int r = 0; r < q; r++) dup |= tk->hop1[r] == f; /* one first-hop copy per distinct target */
      if (!dup && KEEP(a, f)) {
        c1[(size_t)a * D + f]++;
        tokn[i + 1] += device < 0 || a == device;
      }
      if (f != b && KEEP(f, b)) c2[(size_t)f * D + b]++;
    }
    for (int j = 0; j < k; j++) {
      int e = ex[j];
      if (e < 0) continue;
      int b = carl_plan_replica(t, p, e, a, i);
      if (device < 0 || b == device) grp[b * S + slot_of[(size_t)b * E + e] + 1]++, n_rows++;
    }
  }
  int64_t n_send = 0, n_fwd = 0;
  for (size_t x = 0; x < DD; x++) n_send += c1[x], n_fwd += c2[x];
  const int64_t nc = n_send + n_fwd;
  if (!plan_grow(&pl->send_off, &pl->cap_[0], (int64_t)DD + 1, sizeof(int64_t)) ||
      !plan_grow(&pl->send_tok, &pl->cap_[1], n_send, sizeof(int32_t)) ||
      !plan_grow(&pl->fwd_off, &pl->cap_[2], (int64_t)DD + 1, sizeof(int64_t)) ||
      !plan_grow(&pl->fwd_parent, &pl->cap_[3], n_fwd, sizeof(int64_t)) ||
      !plan_grow(&pl->tok_copy, &pl->cap_[4], n_send, sizeof(int64_t)) ||
      !plan_grow(&pl->row_copy, &pl->cap_[5], n_rows, sizeof(int64_t)) ||
      !plan_grow(&pl->row_slot, &pl->cap_[6], n_rows, sizeof(int32_t)) ||
      !plan_grow(&pl->copy_row, &pl->cap_[7], n_rows, sizeof(int64_t))) {
    st = carl_fail(CARL_ERR_NOMEM, "plan: out of memory for %lld copies and %lld rows", (long long)nc, (long long)n_rows);
    goto out2;
  }
  free(pl->tok_off);
  free(pl->recv_off);
  free(pl->copy_row_off);
  pl->tok_off = tokn;
  pl->recv_off = grp;
  tokn = grp = NULL;
  pl->copy_row_off = calloc((size_t)nc + 1, sizeof *pl->copy_row_off);
  if (!pl->copy_row_off) {
    st = carl_fail(CARL_ERR_NOMEM, "plan: out of memory for %lld copies", (long long)nc);
    goto out2;
  }
  pl->send_off[0] = pl->fwd_off[0] = 0;
  for (size_t x = 0; x < DD; x++) {
    pl->send_off[x + 1] = pl->send_off[x] + c1[x];
    pl->fwd_off[x + 1] = pl->fwd_off[x] + c2[x];
  }
  for (int64_t i = 0; i < T; i++) pl->tok_off[i + 1] += pl->tok_off[i];
  for (int g = 0; g < D * S; g++) pl->recv_off[g + 1] += pl->recv_off[g];
  /* pass 2: fill in token order (so pairs and groups keep token order) */
  for (size_t x = 0; x < DD; x++) c1[x] = pl->send_off[x], c2[x] = pl->fwd_off[x];
  int64_t *gfill = malloc(sizeof(int64_t) * ((size_t)D * S + 1));
  int64_t *cp = malloc(sizeof(int64_t) * 1024 * 2); /* per destination q: its first-hop copy, the copy its rows read */
  int64_t *by_slot = malloc(sizeof(int64_t) * ((size_t)T * k + 1)); /* row of routing slot t*k+s, -1 */
  int64_t *cf = malloc(sizeof(int64_t) * ((size_t)nc + 1));
  if (!gfill || !cp || !by_slot || !cf) {
    free(gfill);
    free(cp);
    free(by_slot);
    free(cf);
    st = carl_fail(CARL_ERR_NOMEM, "plan: out of memory");
    goto out2;
  }
  memcpy(gfill, pl->recv_off, sizeof(int64_t) * (size_t)D * S);
  for (int64_t x = 0; x < T * k; x++) by_slot[x] = -1;
  for (int64_t i = 0; i < T; i++) {
    const int a = src ? src[i] : (int)(i * D / T);
    const int32_t *ex = experts + i * k;
    plan_token(t, p, ex, k, a, i, mode, tk);
    int64_t tc = pl->tok_off[i];
    for (int q = 0; q < tk->nd; q++) {
      int b = tk->dest[q], f = tk->hop1[q];
      int r = 0;
      while (r < q && tk->hop1[r] != f) r++;
      int64_t first;
      if (r < q) {
        first = cp[2 * r]; /* the first-hop copy made for an earlier destination of the same node */
      } else if (KEEP(a, f)) {
        first = c1[(size_t)a * D + f]++;
        pl->send_tok[first] = (int32_t)i;
        if (a == device || device < 0) pl->tok_copy[tc++] = first;
      } else {
        first = -1;
      }
      cp[2 * q] = first;
      cp[2 * q + 1] = first; /* the copy rows on b read */
      if (f != b) {
        if (KEEP(f, b)) {
          int64_t w = c2[(size_t)f * D + b]++;
          pl->fwd_parent[w] = first;
          cp[2 * q + 1] = n_send + w;
        } else {
          cp[2 * q + 1] = -1;
        }
      }
    }
    for (int j = 0; j < k; j++) {
      int e = ex[j];
      if (e < 0) continue;
      int b = carl_plan_replica(t, p, e, a, i);
      if (device >= 0 && b != device) continue;
      int q = 0;
      while (tk->dest[q] != b) q++;
      int64_t r = gfill[b * S + slot_of[(size_t)b * E + e]]++;
      pl->row_copy[r] = cp[2 * q + 1];
      pl->row_slot[r] = (int32_t)(i * k + j);
      pl->copy_row_off[cp[2 * q + 1] + 1]++;
      by_slot[i * k + j] = r;
    }
  }
  /* copy -> its rows in ascending routing slot */
  for (int64_t c = 0; c < nc; c++) pl->copy_row_off[c + 1] += pl->copy_row_off[c];
  memcpy(cf, pl->copy_row_off, sizeof(int64_t) * (size_t)nc);
  for (int64_t x = 0; x < T * k; x++) {
    int64_t r = by_slot[x];
    if (r >= 0) pl->copy_row[cf[pl->row_copy[r]]++] = r;
  }
  free(gfill);
  free(cp);
  free(by_slot);
  free(cf);
  pl->n_send = n_send;
  pl->n_fwd = n_fwd;
  pl->n_rows = n_rows;
#undef KEEP
out2:
  free(grp);
  free(tokn);
out:
  free(tk);
  free(slot_of);
  free(fill);
  return st;
}

carl_status carl_plan_build(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                            const int32_t *src, int64_t T, int k, carl_plan_mode mode, int device,
                            carl_plan_detail detail, carl_plan_t *plan) {
  CARL_ASSERT(t && p && plan);
  if (device < -1 || device >= t->devices)
    return carl_fail(CARL_ERR_INVALID, "plan: device %d is outside -1..%d", device, t->devices - 1);
  if (detail != CARL_PLAN_COUNTS && detail != CARL_PLAN_ROWS)
    return carl_fail(CARL_ERR_INVALID, "plan: detail must be counts (0) or rows (1), got %d", (int)detail);
  const int D = t->devices;
  if (!plan->hop || plan->D != D) {
    free(plan->hop);
    plan->hop = malloc(sizeof(int64_t) * (size_t)D * D);
    if (!plan->hop) {
      carl_plan_free(plan);
      return carl_fail(CARL_ERR_NOMEM, "plan: out of memory for %d x %d devices", D, D);
    }
  }
  plan->D = D;
  plan->E = p->E;
  plan->k = k;
  plan->S = p->slots;
  plan->dpn = t->devices_per_node;
  plan->T = T;
  plan->mode = mode;
  plan->device = device;
  plan->has_rows = 0;
  plan->n_send = plan->n_fwd = plan->n_rows = 0;
  plan->copies = 0;
  carl_status st = carl__plan_count(t, p, experts, src, T, k, mode, plan->hop, &plan->copies);
  if (st == CARL_OK && detail == CARL_PLAN_ROWS) {
    if (k > 1024) st = carl_fail(CARL_ERR_INVALID, "plan rows: k = %d is above 1024", k);
    if (st == CARL_OK) st = plan_rows(t, p, experts, src, T, k, mode, device, plan);
    if (st == CARL_OK) plan->has_rows = 1;
  }
  if (st != CARL_OK) memset(plan->hop, 0, sizeof(int64_t) * (size_t)D * D), plan->copies = 0;
  return st;
}

carl_status carl_plan_cost_decision(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                                    const int32_t *src, int64_t T, int k, size_t token_bytes, carl_plan_mode mode,
                                    carl_cost_t *c) {
  carl_plan_t plan = {0};
  carl_status st = carl_plan_build(t, p, experts, src, T, k, mode, -1, CARL_PLAN_COUNTS, &plan);
  if (st == CARL_OK) st = carl_plan_cost(t, &plan, token_bytes, c);
  carl_plan_free(&plan);
  return st;
}
