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
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PLAN_HAVE_AVX512 1
#endif

#include "plan/plan_internal.h"

#define PLAN_MAX_K 1024
#define PLAN_BLOCK 256 /* tokens validated at a time by the mask kernels */

int carl__plan_simd = -1;

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

carl_status carl__plan_check_build(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts, int64_t T,
                                   int k, carl_plan_mode mode) {
  CARL_ASSERT(t && p);
  if (p->D != t->devices)
    return carl_fail(CARL_ERR_INVALID, "placement has %d devices but the topology has %d", p->D, t->devices);
  if (!p->rep_off || !p->rep_dev) return carl_fail(CARL_ERR_STATE, "placement has no replica index");
  if (T < 0) return carl_fail(CARL_ERR_INVALID, "T must be >= 0, got %lld", (long long)T);
  if (k < 1 || k > PLAN_MAX_K) return carl_fail(CARL_ERR_INVALID, "k must be in [1, %d], got %d", PLAN_MAX_K, k);
  if (mode != CARL_PLAN_FLAT && mode != CARL_PLAN_HIER)
    return carl_fail(CARL_ERR_INVALID, "plan mode must be flat (0) or hierarchical (1), got %d", (int)mode);
  if (T > 0 && !experts) return carl_fail(CARL_ERR_INVALID, "experts is NULL");
  return CARL_OK;
}

carl_status carl__plan_check_args(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts, int64_t T,
                                  int k, size_t token_bytes, carl_plan_mode mode, const carl_cost_t *c) {
  CARL_ASSERT(c);
  CARL_TRY(carl__plan_check_build(t, p, experts, T, k, mode));
  if (c->D != t->devices)
    return carl_fail(CARL_ERR_INVALID, "cost accumulator is for %d devices but the topology has %d", c->D,
                     t->devices);
  if (token_bytes == 0) return carl_fail(CARL_ERR_INVALID, "token_bytes must be > 0");
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
 * experts / src index seen (unchanged when none).
 * D <= 64: destination sets are bit masks and the per-expert work is branch-free: a copy is counted
 * when its device (or, for the inter-node hop, its node) is not yet in the token's mask. */
static int64_t plan_count_small(const plan_ctx *x, int64_t t0, int64_t t1, int64_t *cnt, int64_t *bad_e,
                                int64_t *bad_s) {
  const int D = x->D, P = x->P, k = x->k;
  const unsigned E = (unsigned)x->E;
  const int hier = x->mode == CARL_PLAN_HIER;
  const int32_t *single = x->single;
  int node_of[64], base_of[64]; /* node of device b, first device of that node */
  for (int b = 0; b < D; b++) {
    node_of[b] = b / P;
    base_of[b] = b - b % P;
  }
  int64_t copies = 0;
  unsigned bad = 0;
  for (int64_t i = t0; i < t1; i++) {
    int a = x->src ? x->src[i] : (int)(i * D / x->T);
    if ((unsigned)a >= (unsigned)D) {
      if (i < *bad_s) *bad_s = i;
      plan_check_row(x, i, bad_e);
      continue;
    }
    const int32_t *ex = x->experts + i * k;
    int64_t *row = cnt + (size_t)a * D;
    uint64_t m = 0;
    if (!hier) {
      for (int j = 0; j < k; j++) {
        int e = ex[j];
        unsigned valid = (unsigned)e < E;
        bad |= (unsigned)(e + 1) > E; /* neither an expert nor -1 */
        int ec = valid ? e : 0, b = single[ec];
        if (b < 0) b = carl_plan_replica(x->t, x->p, ec, a, i);
        uint64_t bit = (uint64_t)valid << b;
        row[b] += (int64_t)(((m & bit) == 0) & valid);
        m |= bit;
      }
    } else {
      const int na = node_of[a], la = a - base_of[a];
      uint64_t nm = 0;
      for (int j = 0; j < k; j++) {
        int e = ex[j];
        unsigned valid = (unsigned)e < E;
        bad |= (unsigned)(e + 1) > E;
        int ec = valid ? e : 0, b = single[ec];
        if (b < 0) b = carl_plan_replica(x->t, x->p, ec, a, i);
        int n = node_of[b], f = base_of[b] + la; /* forwarder: same local index on node n */
        unsigned own = n == na, remote = valid & !own;
        uint64_t bit = (uint64_t)valid << b, nbit = (uint64_t)remote << n;
        unsigned newdev = ((m & bit) == 0) & valid, newnode = ((nm & nbit) == 0) & remote;
        m |= bit;
        nm |= nbit;
        row[b] += (int64_t)(newdev & own);                              /* own node: direct */
        row[f] += (int64_t)newnode;                                     /* one inter copy per node */
        cnt[(size_t)f * D + b] += (int64_t)(newdev & remote & (b != f)); /* forwarded inside node n */
      }
    }
    copies += __builtin_popcountll(m);
  }
  if (bad)
    for (int64_t i = t0; i < t1; i++) plan_check_row(x, i, bad_e);
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

/* ---- D <= 64 and one replica per expert: destination masks by table lookup --------------------
 * Per token: m = OR of the device bits of its experts (its distinct destination devices) and
 * nm = OR of their node bits. The kernels count, per source device a,
 *   flat[a, b] = tokens on a with a copy for device b        (+1 at every bit of m)
 *   any[a, n]  = tokens on a with a copy for some device of node n  (+1 at every bit of nm)
 * The flat plan is flat[]. The hierarchical one follows from both (plan_fold_hier): own-node
 * copies a -> b are flat[a, b]; the inter copy a -> n*P + la (la = local index of a) happens
 * any[a, n] times; the forwarded copies n*P + la -> b are the flat copies into b from all
 * sources a of local index la on other nodes, except those into the forwarder itself.
 * Adding a mask to a row is a loop over its bits, or with AVX-512 one byte-lane subtract of the
 * mask expanded to 64 bytes (flushed every 255). */
typedef struct {
  const uint64_t *devbit1;  /* [E + 1] indexed by expert + 1: 1 << device, 0 for a dropped choice */
  const uint64_t *nodebit1; /* [E + 1] 1 << node */
  uint64_t nodemask[64];    /* devices of node n */
  int shift;                /* device(e) = e >> shift for every expert (contiguous placement, 2^shift
                               experts per device), or -1 */
} plan_masks;

static void plan_masks_init(plan_masks *mk, const carl_topo_t *t, uint64_t *devbit1, uint64_t *nodebit1,
                            const carl_placement_t *p) {
  const int P = t->devices_per_node, N = t->nodes;
  devbit1[0] = nodebit1[0] = 0;
  for (int e = 0; e < p->E; e++) {
    int b = p->home[e];
    devbit1[e + 1] = 1ull << b;
    nodebit1[e + 1] = 1ull << (b / P);
  }
  mk->devbit1 = devbit1 + 1;
  mk->nodebit1 = nodebit1 + 1;
  mk->shift = -1;
  for (int sh = 0; sh <= 25 && (p->E >> sh) >= t->devices; sh++) { /* 25: see plan_or8x2_shift512 */
    int e = 0;
    while (e < p->E && p->home[e] == e >> sh) e++;
    if (e == p->E) {
      mk->shift = sh;
      break;
    }
  }
  memset(mk->nodemask, 0, sizeof mk->nodemask);
  for (int n = 0; n < N; n++) mk->nodemask[n] = (P == 64 ? ~0ull : ((1ull << P) - 1)) << (n * P);
}

/* Nonzero when tokens [b0, b1) hold an invalid expert id or source device. */
static inline int plan_block_bad(const plan_ctx *x, int64_t b0, int64_t b1) {
  unsigned bad = 0;
  const int32_t *ex = x->experts + b0 * x->k;
  const int64_t n = (b1 - b0) * x->k;
  for (int64_t i = 0; i < n; i++) bad |= (unsigned)ex[i] + 1u > (unsigned)x->E;
  if (x->src)
    for (int64_t i = b0; i < b1; i++) bad |= (unsigned)x->src[i] >= (unsigned)x->D;
  return bad != 0;
}

static inline uint64_t plan_or(const uint64_t *tab, const int32_t *ex, int k) {
  uint64_t m = 0;
  for (int j = 0; j < k; j++) m |= tab[ex[j]];
  return m;
}

static inline int plan_src(const plan_ctx *x, int64_t i) {
  return x->src ? x->src[i] : (int)(i * x->D / x->T);
}

/* flat [D, D] and (hierarchical) any [D, N] from tokens [t0, t1). Returns nonzero (and stops) at
 * the first block with invalid input. */
static int plan_mask_scalar(const plan_ctx *x, const plan_masks *mk, int64_t t0, int64_t t1, int64_t *flat,
                            int64_t *any) {
  const int D = x->D, N = x->t->nodes, hier = x->mode == CARL_PLAN_HIER;
  for (int64_t b0 = t0; b0 < t1; b0 += PLAN_BLOCK) {
    int64_t b1 = b0 + PLAN_BLOCK < t1 ? b0 + PLAN_BLOCK : t1;
    if (plan_block_bad(x, b0, b1)) return 1;
    for (int64_t i = b0; i < b1; i++) {
      const int a = plan_src(x, i);
      const int32_t *ex = x->experts + i * x->k;
      uint64_t m = plan_or(mk->devbit1, ex, x->k);
      for (int64_t *r = flat + (size_t)a * D; m; m &= m - 1) r[__builtin_ctzll(m)]++;
      if (hier) {
        uint64_t nm = plan_or(mk->nodebit1, ex, x->k);
        for (int64_t *r = any + (size_t)a * N; nm; nm &= nm - 1) r[__builtin_ctzll(nm)]++;
      }
    }
  }
  return 0;
}

#ifdef PLAN_HAVE_AVX512
#define PLAN_AVX512 __attribute__((target("avx512f,avx512bw")))

/* Byte counters: acc[r] holds 64 lane counts for row r (rows 0..D-1: flat, D..2D-1: any). The
 * rows in use stay in registers while consecutive tokens share a source device (sorted sources),
 * so that a token does not wait for the previous token's store of the same row. */
typedef struct {
  __m512i *acc; /* [2 D] */
  int *fill;    /* [2 D] masks added since the row's last flush (< 255) */
  int64_t *flat, *any;
  int D, N, P;
  int a, n;       /* source device whose two rows are held in vf, va; masks added since loading */
  __m512i vf, va;
} plan_acc512;

PLAN_AVX512 static void plan_flush512(plan_acc512 *s, int r) {
  uint8_t lanes[64];
  _mm512_storeu_si512((void *)lanes, s->acc[r]);
  if (r < s->D)
    for (int b = 0; b < s->D; b++) s->flat[(size_t)r * s->D + b] += lanes[b];
  else
    for (int n = 0; n < s->N; n++) s->any[(size_t)(r - s->D) * s->N + n] += lanes[n];
  s->acc[r] = _mm512_setzero_si512();
  s->fill[r] = 0;
}

PLAN_AVX512 static void plan_switch512(plan_acc512 *s, int a) {
  s->acc[s->a] = s->vf;
  s->acc[s->D + s->a] = s->va;
  s->fill[s->a] = s->n;
  s->a = a;
  s->vf = s->acc[a];
  s->va = s->acc[s->D + a];
  s->n = s->fill[a];
}

PLAN_AVX512 static void plan_flush_held512(plan_acc512 *s) {
  s->acc[s->a] = s->vf;
  s->acc[s->D + s->a] = s->va;
  plan_flush512(s, s->a);
  plan_flush512(s, s->D + s->a);
  s->vf = s->va = _mm512_setzero_si512();
  s->n = 0;
}

/* Device masks of two tokens' 8 expert ids each (16 ids at ex) when device(e) = e >> sh, without
 * table loads: per 64-bit lane 1 << (id >> sh), OR-reduced for both tokens at once. A dropped choice
 * (-1) becomes 0xFFFFFFFF >> sh >= 127 after the logical shift (sh <= 25), and a variable shift by
 * 64 or more gives 0, as the table's 0 does. */
PLAN_AVX512 static inline __attribute__((always_inline)) __m128i plan_or8x2_shift512(const int32_t *ex,
                                                                                         __m128i sh) {
  const __m512i id = _mm512_srl_epi32(_mm512_loadu_si512((const void *)ex), sh);
  const __m512i one = _mm512_set1_epi64(1);
  const __m512i u = _mm512_sllv_epi64(one, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(id)));
  const __m512i v = _mm512_sllv_epi64(one, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(id, 1)));
  __m512i w = _mm512_or_si512(_mm512_unpacklo_epi64(u, v), _mm512_unpackhi_epi64(u, v)); /* [u, v] x 4 */
  __m256i y = _mm256_or_si256(_mm512_castsi512_si256(w), _mm512_extracti64x4_epi64(w, 1));
  return _mm_or_si128(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1)); /* [m(u), m(v)] */
}

/* Adds device mask m of one token from source device a. movm gives 0xFF (= -1) in each selected
 * byte: subtracting it adds 1. Node bits: lane n of the 8 node masks tested against m. */
PLAN_AVX512 static inline __attribute__((always_inline)) void plan_add512(plan_acc512 *s, const plan_masks *mk,
                                                                              int a, uint64_t m, int hier,
                                                                              __m512i nodes, int wide) {
  if (a != s->a) plan_switch512(s, a);
  const __m512i f = _mm512_movm_epi8(m);
  s->vf = _mm512_sub_epi8(s->vf, f);
  if (hier && s->P == 8) { /* node n = byte lanes 8n..8n+7 of f: its 64-bit lane n */
    s->va = _mm512_sub_epi8(s->va, _mm512_movm_epi8(_mm512_test_epi64_mask(f, f)));
  } else if (hier) {
    const __m512i mm = _mm512_set1_epi64((long long)m);
    uint64_t nm = _mm512_test_epi64_mask(mm, nodes);
    if (wide) /* more than 8 nodes: 8 more node masks at a time */
      for (int g = 8; g < s->N; g += 8)
        nm |= (uint64_t)_mm512_test_epi64_mask(mm, _mm512_loadu_si512((const void *)(mk->nodemask + g))) << g;
    s->va = _mm512_sub_epi8(s->va, _mm512_movm_epi8(nm));
  }
  if (++s->n == 255) plan_flush_held512(s);
}

/* Tokens [b0, b1), instantiated with constant k, mode and mask source (contig: k = 8 and
 * mk->shift >= 0, two tokens at a time). */
PLAN_AVX512 static inline __attribute__((always_inline)) void plan_tokens512(const plan_ctx *x,
                                                                                 const plan_masks *mk, int64_t b0,
                                                                                 int64_t b1, plan_acc512 *s, int k,
                                                                                 int hier, int contig) {
  const __m512i nodes = _mm512_loadu_si512((const void *)mk->nodemask); /* nodes 0..7 */
  const int wide = s->N > 8;
  int64_t i = b0;
  if (contig) {
    const __m128i sh = _mm_cvtsi32_si128(mk->shift);
    for (; i + 2 <= b1; i += 2) {
      const __m128i m2 = plan_or8x2_shift512(x->experts + i * 8, sh);
      plan_add512(s, mk, plan_src(x, i), (uint64_t)_mm_cvtsi128_si64(m2), hier, nodes, wide);
      plan_add512(s, mk, plan_src(x, i + 1), (uint64_t)_mm_extract_epi64(m2, 1), hier, nodes, wide);
    }
  }
  for (; i < b1; i++)
    plan_add512(s, mk, plan_src(x, i), plan_or(mk->devbit1, x->experts + i * k, k), hier, nodes, wide);
}

PLAN_AVX512 static int plan_mask_avx512(const plan_ctx *x, const plan_masks *mk, int64_t t0, int64_t t1,
                                        int64_t *flat, int64_t *any) {
  const int D = x->D, R = 2 * D;
  plan_acc512 s = {.flat = flat, .any = any, .D = D, .N = x->t->nodes, .P = x->P, .a = 0};
  s.acc = aligned_alloc(64, (size_t)R * sizeof *s.acc);
  s.fill = calloc((size_t)R, sizeof *s.fill);
  if (!s.acc || !s.fill) {
    free(s.acc);
    free(s.fill);
    return plan_mask_scalar(x, mk, t0, t1, flat, any);
  }
  for (int r = 0; r < R; r++) s.acc[r] = _mm512_setzero_si512();
  s.vf = s.va = _mm512_setzero_si512();
  int bad = 0;
  const int hier = x->mode == CARL_PLAN_HIER;
  for (int64_t b0 = t0; b0 < t1; b0 += PLAN_BLOCK) {
    int64_t b1 = b0 + PLAN_BLOCK < t1 ? b0 + PLAN_BLOCK : t1;
    if (plan_block_bad(x, b0, b1)) {
      bad = 1;
      break;
    }
    if (x->k == 8 && mk->shift >= 0 && hier)
      plan_tokens512(x, mk, b0, b1, &s, 8, 1, 1);
    else if (x->k == 8 && mk->shift >= 0)
      plan_tokens512(x, mk, b0, b1, &s, 8, 0, 1);
    else if (x->k == 8 && hier)
      plan_tokens512(x, mk, b0, b1, &s, 8, 1, 0);
    else if (x->k == 8)
      plan_tokens512(x, mk, b0, b1, &s, 8, 0, 0);
    else
      plan_tokens512(x, mk, b0, b1, &s, x->k, hier, 0);
  }
  s.acc[s.a] = s.vf;
  s.acc[D + s.a] = s.va;
  for (int r = 0; r < R; r++) plan_flush512(&s, r);
  free(s.acc);
  free(s.fill);
  return bad;
}
#endif

/* Per-hop hierarchical copies cnt [D, D] (added to) from flat [D, D] and any [D, N]. */
static void plan_fold_hier(const carl_topo_t *t, const int64_t *flat, const int64_t *any, int64_t *cnt) {
  const int D = t->devices, P = t->devices_per_node, N = t->nodes;
  for (int a = 0; a < D; a++) {
    const int na = a / P, la = a % P;
    for (int b = 0; b < D; b++) {
      const int64_t x = flat[(size_t)a * D + b];
      const int nb = b / P, f = nb * P + la;
      if (nb == na)
        cnt[(size_t)a * D + b] += x; /* own node: direct */
      else if (b != f)
        cnt[(size_t)f * D + b] += x; /* forwarded by the same local index on node nb */
    }
    for (int n = 0; n < N; n++)
      if (n != na) cnt[(size_t)a * D + n * P + la] += any[(size_t)a * N + n]; /* one inter copy per node */
  }
}

/* The first invalid input in the reference's order (experts, then src), as an error. */
static carl_status plan_first_error(const plan_ctx *x) {
  for (int64_t i = 0; i < x->T * x->k; i++)
    if (x->experts[i] < -1 || x->experts[i] >= x->E)
      return carl_fail(CARL_ERR_INVALID, "experts[%lld, %lld] = %d is not an expert id in [-1, %d)",
                       (long long)(i / x->k), (long long)(i % x->k), x->experts[i], x->E);
  if (x->src)
    for (int64_t i = 0; i < x->T; i++)
      if (x->src[i] < 0 || x->src[i] >= x->D)
        return carl_fail(CARL_ERR_INVALID, "src[%lld] = %d is not a device in [0, %d)", (long long)i, x->src[i],
                         x->D);
  return carl_fail(CARL_ERR_INVALID, "plan: invalid input");
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

/* Hop counts cnt [D, D] (overwritten) and copies of a decision: the fast kernels. */
carl_status carl__plan_count(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                             const int32_t *src, int64_t T, int k, carl_plan_mode mode, int64_t *hop,
                             int64_t *copies_out) {
  CARL_TRY(carl__plan_check_build(t, p, experts, T, k, mode));
  const int D = t->devices, P = t->devices_per_node;
  const size_t DD = (size_t)D * D;
  int replicas = p->rep_off[p->E] != p->E;
  /* kernel: masks (D <= 64, no replicas), per-expert masks (D <= 64), lists (any D) */
  int use_masks = D <= 64 && !replicas, use_avx512 = 0;
#ifdef PLAN_HAVE_AVX512
  use_avx512 = use_masks && carl__plan_simd != 0 && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw");
#endif
  /* per thread: hop counts [D, D]; the mask kernels add flat [D, D] and any [D, N] */
  const size_t per_thread = DD + (use_masks ? DD + (size_t)D * t->nodes : 0);
  int nth = 1;
#ifdef _OPENMP
  nth = omp_get_max_threads();
  if (T < 16384) nth = 1;
  while (nth > 1 && per_thread * (size_t)nth * sizeof(int64_t) > ((size_t)512 << 20)) nth--;
#endif
  int32_t *single = malloc((size_t)p->E * sizeof *single);
  uint64_t *bits = use_masks ? malloc(2 * ((size_t)p->E + 1) * sizeof *bits) : NULL;
  plan_masks *mk = use_masks ? malloc(sizeof *mk) : NULL;
  int64_t *cnt = calloc(per_thread * (size_t)nth, sizeof *cnt);
  if (!single || !cnt || (use_masks && (!bits || !mk))) {
    free(single);
    free(bits);
    free(mk);
    free(cnt);
    return carl_fail(CARL_ERR_NOMEM, "plan: out of memory for %d x %d devices", D, D);
  }
  for (int e = 0; e < p->E; e++) single[e] = p->rep_off[e + 1] - p->rep_off[e] == 1 ? p->rep_dev[p->rep_off[e]] : -1;
  if (use_masks) plan_masks_init(mk, t, bits, bits + p->E + 1, p);
  plan_ctx x = {t, p, experts, src, single, T, k, D, P, p->E, mode};
  int64_t copies = 0, bad_e = INT64_MAX, bad_s = INT64_MAX;
  int bad = 0;
  int64_t nchunk = nth == 1 ? 1 : T / 8192;
  if (nchunk > 32 * (int64_t)nth) nchunk = 32 * (int64_t)nth;
  if (nchunk < 1) nchunk = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nth) reduction(+ : copies) reduction(min : bad_e, bad_s) reduction(| : bad)
#endif
  {
    int id = 0;
#ifdef _OPENMP
    id = omp_get_thread_num();
#endif
    int64_t *mine = cnt + per_thread * (size_t)id;
    int64_t *flat = use_masks ? mine + DD : NULL, *any = use_masks ? mine + 2 * DD : NULL;
    /* chunks handed out as threads free up: on a shared machine a descheduled thread then delays
     * the step by one chunk, not by half of it */
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t ch = 0; ch < nchunk; ch++) {
      const int64_t t0 = T * ch / nchunk, t1 = T * (ch + 1) / nchunk;
      if (use_masks) {
#ifdef PLAN_HAVE_AVX512
        if (use_avx512)
          bad |= plan_mask_avx512(&x, mk, t0, t1, flat, any);
        else
#endif
          bad |= plan_mask_scalar(&x, mk, t0, t1, flat, any);
      } else if (D <= 64) {
        copies += plan_count_small(&x, t0, t1, mine, &bad_e, &bad_s);
      } else {
        copies += plan_count_large(&x, t0, t1, mine, &bad_e, &bad_s);
      }
    }
    if (use_masks) {
      for (size_t i = 0; i < DD; i++) copies += flat[i]; /* (token, device) pairs */
      if (mode == CARL_PLAN_HIER)
        plan_fold_hier(t, flat, any, mine);
      else
        for (size_t i = 0; i < DD; i++) mine[i] += flat[i];
    }
  }
  free(single);
  free(bits);
  free(mk);
  carl_status st = CARL_OK;
  if (bad || bad_e != INT64_MAX || bad_s != INT64_MAX) st = plan_first_error(&x);
  if (st == CARL_OK) {
    for (int th = 1; th < nth; th++) {
      const int64_t *o = cnt + per_thread * (size_t)th;
      for (size_t i = 0; i < DD; i++) cnt[i] += o[i];
    }
    memcpy(hop, cnt, DD * sizeof *hop);
    *copies_out = copies;
  }
  free(cnt);
  return st;
}

carl_status carl_plan_cost(const carl_topo_t *t, const carl_plan_t *plan, size_t token_bytes, carl_cost_t *c) {
  CARL_ASSERT(t && plan && c);
  if (!plan->hop) return carl_fail(CARL_ERR_STATE, "plan: not built");
  if (plan->D != t->devices)
    return carl_fail(CARL_ERR_INVALID, "plan is for %d devices but the topology has %d", plan->D, t->devices);
  if (c->D != t->devices)
    return carl_fail(CARL_ERR_INVALID, "cost accumulator is for %d devices but the topology has %d", c->D,
                     t->devices);
  if (token_bytes == 0) return carl_fail(CARL_ERR_INVALID, "token_bytes must be > 0");
  plan_finish(t, plan->hop, token_bytes, plan->copies, c);
  return CARL_OK;
}

/* ---- the mpi executor's time (carl/plan.h, docs/cost-model.md) ---------------------------------- */

/* Max over devices of max(send, recv) of the hops a -> b with `take(a, b)`: bytes / GBps + one
 * latency per peer with copies per class, self copies at self_GBps. */
static double plan_exchange_s(const carl_topo_t *t, const int64_t *cnt, double tb, double self_GBps, int hier, int inter) {
  const int D = t->devices;
  double worst = 0;
  for (int a = 0; a < D; a++) {
    double send = 0, recv = 0;
    for (int b = 0; b < D; b++) {
      const int cls = carl_topo_link(t, a, b);
      if (hier && (inter != (cls == CARL_LINK_INTER || cls == CARL_LINK_RACK))) continue;
      const int64_t out = cnt[(size_t)a * D + b], in = cnt[(size_t)b * D + a];
      if (cls == CARL_LINK_SELF) {
        if (self_GBps > 0) send += (double)out * tb / (self_GBps * 1e9), recv += (double)in * tb / (self_GBps * 1e9);
        continue;
      }
      const double B = t->link[cls].GBps * 1e9, al = t->link[cls].latency_us * 1e-6;
      if (B <= 0) continue;
      send += (double)out * tb / B + (out > 0 ? al : 0);
      recv += (double)in * tb / B + (in > 0 ? al : 0);
    }
    const double ph = send > recv ? send : recv;
    if (ph > worst) worst = ph;
  }
  return worst;
}

carl_status carl_plan_time_mpi(const carl_topo_t *t, const carl_plan_t *plan, size_t token_bytes,
                               const carl_mpi_cost_opts_t *o, carl_mpi_time_t *out) {
  CARL_ASSERT(t && plan && o && out);
  if (!plan->hop) return carl_fail(CARL_ERR_STATE, "plan: not built");
  if (plan->D != t->devices)
    return carl_fail(CARL_ERR_INVALID, "plan is for %d devices but the topology has %d", plan->D, t->devices);
  if (token_bytes == 0) return carl_fail(CARL_ERR_INVALID, "token_bytes must be > 0");
  for (int c = 0; c < CARL_NLINK; c++)
    if (!(o->ctl_latency_us[c] >= 0 && isfinite(o->ctl_latency_us[c])))
      return carl_fail(CARL_ERR_INVALID, "mpi time: small-message latency of class %d is %g us, must be >= 0", c,
                       o->ctl_latency_us[c]);
  if (!(o->self_GBps >= 0 && isfinite(o->self_GBps)))
    return carl_fail(CARL_ERR_INVALID, "mpi time: self copy rate %g GB/s, must be >= 0", o->self_GBps);
  const int D = t->devices, P = t->devices_per_node;
  const int hier = plan->mode == CARL_PLAN_HIER;
  /* count exchanges of one phase: max over devices of the latencies of its communicators' peers */
  double counts = 0;
  for (int a = 0; a < D; a++) {
    double s = 0;
    for (int b = 0; b < D; b++) {
      if (b == a) continue;
      const int cls = carl_topo_link(t, a, b);
      if (!hier)
        s += o->ctl_latency_us[cls];
      else if (cls == CARL_LINK_INTRA)
        s += 2 * o->ctl_latency_us[cls]; /* the node communicator, twice */
      else if (b % P == a % P)
        s += o->ctl_latency_us[cls]; /* the inter-node communicator: same local index */
    }
    if (s * 1e-6 > counts) counts = s * 1e-6;
  }
  const double tb = (double)token_bytes;
  double data = hier ? plan_exchange_s(t, plan->hop, tb, o->self_GBps, 1, 1) + plan_exchange_s(t, plan->hop, tb, o->self_GBps, 1, 0)
                     : plan_exchange_s(t, plan->hop, tb, o->self_GBps, 0, 0);
  out->counts_s = 2 * counts;
  out->data_s = 2 * data;
  out->total_s = out->counts_s + out->data_s;
  return CARL_OK;
}
