/* The fused routing kernel on the GPU: one pass over the logits computes the scores (softmax or
 * sigmoid), the selection values (logits, scores, or scores + a per-source-device bias: lossfree's
 * b, carl's -lambda_c c^), the group-limited selection (group score = sum of the top per_group
 * selection values, + a bonus on the token's own node; the M best groups), the top-k with the
 * lower-index tie rule, the gate weights (renormalised; in gate order for carl), the per-expert
 * loads, the per-(source, destination) device copy counts of the flat plan and the statistics of
 * the z-loss and the auxiliary losses.
 * CPU reference: carl_route_select (src/route/common.c, its portable executor); the selections are
 * the same. Where the selection reads the scores (a bias, or groups), each token is first routed
 * with fast float32 scores (expf, error <= 2 ulp), and the result is kept only when it is
 * certified: every gap that decides it (between consecutive selection values of the k + 1 best,
 * between the M-th and (M+1)-th group score, between the gates in gate order) exceeds the sum of
 * the two values' error bounds against the CPU's scores (a relative bound eps_s = (32 + E/8) ulp
 * on the scores, covering both exp implementations, the two summation orders and the roundings).
 * Otherwise the token is routed again with the CPU's own operations in the CPU's order (the Cephes
 * exp of carl_expf without fused multiply-adds, the 16-lane sum tree of carl__score_row), whose
 * selection values are the CPU's floats. Selection on the logits (plain topk) needs neither.
 *
 * Layout: a warp per token; lane l holds experts c * 32W + l W + j (chunks c < C of W = 1, 2 or 4
 * consecutive experts: 16-byte loads for E >= 128). Top-k: each lane caches its three best
 * remaining (value, expert) pairs; k rounds of warp max and min reductions (redux.sync) of
 * order-preserving keys pick the best value, then the lowest expert among equal values. Groups of
 * 2^m >= W consecutive experts lie in aligned lane segments of a chunk: butterfly merges of
 * per-lane top-per_group lists give every group's score in its lanes.
 * Persistent grid: warp w routes tokens w, w + H, w + 2H, ... (H warps in the grid), loading the
 * next token's logits before routing the current one; per-block statistics are summed in a fixed
 * order, then over blocks in order. */
#include <float.h>
#include <stdlib.h>

#include "cuda/route_internal.h"

#define FULL 0xFFFFFFFFu

/* carl_expf (carl/route_util.h) with every operation rounded on its own, as the CPU's vector code
 * computes it (no contraction into fused multiply-adds). */
__device__ __forceinline__ float exp_cpu(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float magic = 12582912.0f;
  float n = __fsub_rn(__fadd_rn(__fmul_rn(x, 1.44269504088896341f), magic), magic);
  float r = __fsub_rn(x, __fmul_rn(n, 0.693359375f));
  r = __fsub_rn(r, __fmul_rn(n, -2.12194440e-4f));
  float p = 1.9875691500e-4f;
  p = __fadd_rn(__fmul_rn(p, r), 1.3981999507e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 8.3334519073e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 4.1665795894e-2f);
  p = __fadd_rn(__fmul_rn(p, r), 1.6666665459e-1f);
  p = __fadd_rn(__fmul_rn(p, r), 5.0000001201e-1f);
  p = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(p, r), r), r), 1.0f);
  return __fmul_rn(p, __int_as_float(((int)n + 127) << 23));
}

/* Unsigned key with the order of the floats; -0 and +0 get one key (they compare equal). */
__device__ __forceinline__ unsigned fkey(float x) {
  unsigned u = __float_as_uint(__fadd_rn(x, 0.0f));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float fdec(unsigned k) { return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(FULL, x, o);
  return x;
}

/* The CPU's 16-lane sum: lane j (and j + 16) holds accumulator j (its sa/sb lanes); sv = sa + sb,
 * then ((sv0 + sv1) + (sv2 + sv3)) + ((sv4 + sv5) + (sv6 + sv7)). Addition commutes exactly, so each
 * butterfly step gives every lane the same pair sum as the CPU's tree. */
__device__ __forceinline__ float sum16_cpu(float acc) {
  acc = __fadd_rn(acc, __shfl_xor_sync(FULL, acc, 8));
  acc = __fadd_rn(acc, __shfl_xor_sync(FULL, acc, 1));
  acc = __fadd_rn(acc, __shfl_xor_sync(FULL, acc, 2));
  acc = __fadd_rn(acc, __shfl_xor_sync(FULL, acc, 4));
  return acc;
}

template <int W>
__device__ __forceinline__ void load_chunk(const float *p, float *o, bool stream) {
  if (W == 4) {
    const float4 v = stream ? __ldcs((const float4 *)p) : __ldg((const float4 *)p);
    o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
  } else if (W == 2) {
    const float2 v = stream ? __ldcs((const float2 *)p) : __ldg((const float2 *)p);
    o[0] = v.x, o[1] = v.y;
  } else {
    o[0] = stream ? __ldcs(p) : __ldg(p);
  }
}

/* plain loads (shared memory: __ldg is for global memory only) */
template <int W>
__device__ __forceinline__ void load_plain(const float *p, float *o) {
  if (W == 4) {
    const float4 v = *(const float4 *)p;
    o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
  } else if (W == 2) {
    const float2 v = *(const float2 *)p;
    o[0] = v.x, o[1] = v.y;
  } else {
    o[0] = p[0];
  }
}

template <int W>
__device__ __forceinline__ void store_chunk(float *p, const float *v) {
  if (W == 4) *(float4 *)p = make_float4(v[0], v[1], v[2], v[3]);
  else if (W == 2) *(float2 *)p = make_float2(v[0], v[1]);
  else p[0] = v[0];
}

/* insert x into the descending list top[0..pg) */
__device__ __forceinline__ void list_insert(float *top, float x, int pg) {
#pragma unroll
  for (int j = 0; j < 4; j++)
    if (j < pg) {
      const float hi = fmaxf(top[j], x), lo = fminf(top[j], x);
      top[j] = hi;
      x = lo;
    }
}

/* insert (key x, element i) into the two-entry cache of keys, strictly greater first (earlier
 * elements win ties), by selects */
__device__ __forceinline__ void cache_insert(unsigned x, int i, unsigned &a1, int &i1, unsigned &a2, int &i2) {
  const bool p1 = x > a1, p2 = x > a2;
  a2 = p1 ? a1 : (p2 ? x : a2);
  i2 = p1 ? i1 : (p2 ? i : i2);
  a1 = p1 ? x : a1;
  i1 = p1 ? i : i1;
}

/* fast exp for the selection on the logits (no certification): ex2.approx with flush to zero */
__device__ __forceinline__ float exp_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.44269504088896341f));
  return y;
}

template <int C, int W, int MINB>
__global__ void __launch_bounds__(256, MINB) select_kernel(const carl__selargs_t a) {
  constexpr int V = C * W, CH = 32 * W;
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int E = a.E, k = a.k;
  float *srow = smem + warp * E;            /* this warp's scores of its current token */
  float *prow = smem + (8 + warp) * E;      /* this warp's sums of P_e */
  float *slot_v = smem + 16 * E + warp * 64; /* the rounds' winners: selection value, */
  int *slot_e = (int *)(slot_v + 20);        /* expert, */
  float *slot_w = slot_v + 40;               /* gate */
  unsigned *sload = (unsigned *)(smem + 16 * E + 8 * 64);
  unsigned *shop = sload + E;
  double *zsh = (double *)(((uintptr_t)(shop + (a.hop_shared ? a.D * a.D : 0)) + 15) & ~(uintptr_t)7);
  for (int i = threadIdx.x; i < E; i += blockDim.x) sload[i] = 0;
  for (int i = threadIdx.x; i < 8 * E; i += blockDim.x) smem[8 * E + i] = 0.0f;
  if (a.hop_shared)
    for (int i = threadIdx.x; i < a.D * a.D; i += blockDim.x) shop[i] = 0;
  __syncthreads();
  const float eps_s = (32.0f + E / 8.0f) * FLT_EPSILON;
  const int gshift = a.grouped ? __ffs(a.gsize) - 1 : 0;
  const int seg = a.grouped ? a.gsize / W : 1; /* lanes per group inside a chunk */

  double zacc = 0.0;
  const int64_t H = (int64_t)gridDim.x * 8;
  int64_t t = (int64_t)blockIdx.x * 8 + warp;
  float zn[V];
  if (t < a.T)
#pragma unroll
    for (int c = 0; c < C; c++) load_chunk<W>(a.logits + t * E + c * CH + lane * W, zn + c * W, true);
  for (; t < a.T; t += H) {
    float z[V];
#pragma unroll
    for (int i = 0; i < V; i++) z[i] = zn[i];
    if (t + H < a.T)
#pragma unroll
      for (int c = 0; c < C; c++) load_chunk<W>(a.logits + (t + H) * E + c * CH + lane * W, zn + c * W, true);
    int sdev = 0;
    if (a.need_src) {
      sdev = a.src ? __ldg(a.src + t) : (int)(t * a.D / a.T);
      if (sdev < 0 || sdev >= a.D) {
        if (lane < k) {
          a.experts[t * k + lane] = -1;
          a.weights[t * k + lane] = 0.0f;
        }
        if (lane == 0) atomicMin(a.bad + 1, (unsigned long long)t);
        continue;
      }
    }
    /* x * 0 is NaN exactly when x is NaN or infinite */
    float chk = 0.0f, mx = z[0];
#pragma unroll
    for (int i = 0; i < V; i++) chk = fmaf(z[i], 0.0f, chk), mx = fmaxf(mx, z[i]);
    if (__any_sync(FULL, chk != chk)) {
      if (lane < k) {
        a.experts[t * k + lane] = -1;
        a.weights[t * k + lane] = 0.0f;
      }
      if (lane == 0) atomicMin(a.bad, (unsigned long long)t);
      continue;
    }
    mx = fdec(__reduce_max_sync(FULL, fkey(mx)));
    const float *br = a.sel_mode == 2 ? a.bias + (a.bias_by_src ? (size_t)sdev * E : 0) : NULL;
    float lse = 0.0f, w = 0.0f;
    int myE = -1, slot = lane, nsel = 0;
    float v[V];
    for (int pass = 0; pass < 2; pass++) {
      const bool exact = pass == 1, certify = a.exact && !exact;
      /* ---- scores, into srow */
      float s[V];
      if (a.score == 0) {
        float sum;
        if (!exact) {
          float acc = 0.0f;
          if (a.exact) {
#pragma unroll
            for (int i = 0; i < V; i++) acc += (s[i] = expf(z[i] - mx));
          } else {
#pragma unroll
            for (int i = 0; i < V; i++) acc += (s[i] = exp_fast(z[i] - mx));
          }
          sum = warp_sum(acc);
        } else {
          /* the CPU's accumulators: lanes j and j + 16 both sum experts j, j + 16, j + 32, ... */
          const float *zr = a.logits + t * E;
          float acc = 0.0f;
          for (int e = lane & 15; e < E; e += 16) acc = __fadd_rn(acc, exp_cpu(__fsub_rn(zr[e], mx)));
          sum = sum16_cpu(acc);
#pragma unroll
          for (int i = 0; i < V; i++) s[i] = exp_cpu(__fsub_rn(z[i], mx));
        }
        lse = mx + logf(sum);
        const float inv = __frcp_rn(sum);
#pragma unroll
        for (int i = 0; i < V; i++) s[i] = __fmul_rn(s[i], inv);
      } else {
        if (a.need_lse && !exact) {
          float acc = 0.0f;
#pragma unroll
          for (int i = 0; i < V; i++) acc += exp_fast(z[i] - mx);
          lse = mx + logf(warp_sum(acc));
        }
        if (exact) {
#pragma unroll
          for (int i = 0; i < V; i++) s[i] = __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_cpu(-z[i])));
        } else if (a.exact) {
#pragma unroll
          for (int i = 0; i < V; i++) s[i] = __frcp_rn(1.0f + expf(-z[i]));
        } else {
#pragma unroll
          for (int i = 0; i < V; i++) s[i] = __fdividef(1.0f, 1.0f + exp_fast(-z[i]));
        }
      }
      __syncwarp();
#pragma unroll
      for (int c = 0; c < C; c++) store_chunk<W>(srow + c * CH + lane * W, s + c * W);
      /* ---- selection values */
      if (a.sel_mode == 2) {
#pragma unroll
        for (int c = 0; c < C; c++) load_chunk<W>(br + c * CH + lane * W, v + c * W, false);
#pragma unroll
        for (int i = 0; i < V; i++) v[i] = __fadd_rn(s[i], v[i]);
      } else {
#pragma unroll
        for (int i = 0; i < V; i++) v[i] = a.sel_mode == 1 ? s[i] : z[i];
      }
      bool ok = true;
      unsigned cmask = (1u << C) - 1u; /* chunks whose group is kept */
      if (a.grouped) {
        unsigned gk[C];
        int gid[C];
#pragma unroll
        for (int c = 0; c < C; c++) {
          float top[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
          for (int j = 0; j < W; j++) list_insert(top, v[c * W + j], a.pg);
          for (int off = seg >> 1; off > 0; off >>= 1) {
            float py[4];
#pragma unroll
            for (int q = 0; q < 4; q++) py[q] = __shfl_xor_sync(FULL, top[q], off);
#pragma unroll
            for (int q = 0; q < 4; q++)
              if (q < a.pg) list_insert(top, py[q], a.pg);
          }
          float gs = 0.0f;
#pragma unroll
          for (int q = 0; q < 4; q++)
            if (q < a.pg) gs = __fadd_rn(gs, top[q]);
          gid[c] = (c * CH + lane * W) >> gshift;
          if (a.bonus) gs = __fadd_rn(gs, __ldg(a.bonus + (size_t)(a.dev_node ? __ldg(a.dev_node + sdev) : 0) * a.G + gid[c]));
          gk[c] = (lane & (seg - 1)) == 0 ? fkey(gs) : 0u; /* one lane speaks for each group */
        }
        unsigned kept = 0, last = 0;
        /* a group score's error: pg terms of at most eps_s (s <= 1) + their roundings */
        const float gerr_abs = a.pg * (eps_s + FLT_EPSILON * (1.0f + a.bias_abs)), gerr_rel = (a.pg + 2) * FLT_EPSILON;
        for (int r = 0; r < a.M + (certify ? 1 : 0); r++) {
          unsigned best = 0;
          int bg = 0x7fffffff;
#pragma unroll
          for (int c = 0; c < C; c++)
            if (gk[c] > best) best = gk[c], bg = gid[c];
          const unsigned Mx = __reduce_max_sync(FULL, best);
          if (Mx == 0) break;
          const unsigned g = __reduce_min_sync(FULL, best == Mx ? (unsigned)bg : 0xFFFFFFFFu);
          if (r < a.M) {
            kept |= 1u << g;
#pragma unroll
            for (int c = 0; c < C; c++)
              if (gid[c] == (int)g) gk[c] = 0;
          } else {
            const float gM = fdec(last), g1 = fdec(Mx);
            if (!(gM - g1 > 2.0f * gerr_abs + gerr_rel * (fabsf(gM) + fabsf(g1)))) ok = false;
          }
          last = Mx;
        }
#pragma unroll
        for (int c = 0; c < C; c++)
          if (!((kept >> gid[c]) & 1u)) cmask &= ~(1u << c);
      }
      /* ---- top-k: each lane's two best remaining keys (0: none), k (+ 1 to certify) rounds; the
       * winners go to slot_e / slot_v */
      unsigned key[V];
#pragma unroll
      for (int i = 0; i < V; i++) key[i] = ((cmask >> (i / W)) & 1u) ? fkey(v[i]) : 0u;
      unsigned a1 = 0, a2 = 0, used = 0;
      int i1 = 0, i2 = 0;
#pragma unroll
      for (int i = 0; i < V; i++) cache_insert(key[i], i, a1, i1, a2, i2);
      const int R = k + (certify && a.sel_mode != 0 ? 1 : 0);
      nsel = 0;
      for (int r = 0; r < R; r++) {
        const unsigned Mx = __reduce_max_sync(FULL, a1);
        if (Mx == 0) break; /* fewer than R candidates */
        bool win = a1 == Mx;
        const unsigned bal = __ballot_sync(FULL, win);
        if (bal & (bal - 1)) { /* equal values in several lanes: the lowest expert */
          const unsigned e1 = (unsigned)((i1 / W) * CH + lane * W + (i1 % W));
          win = win && __reduce_min_sync(FULL, win ? e1 : 0xFFFFFFFFu) == e1;
        }
        nsel++;
        if (win) {
          slot_e[r] = (i1 / W) * CH + lane * W + (i1 % W);
          slot_v[r] = fdec(Mx);
          used |= 1u << i1;
          a1 = a2, i1 = i2, a2 = 0;
          if (a1 == 0) { /* rebuild the two best of the elements not yet taken */
#pragma unroll
            for (int i = 0; i < V; i++) cache_insert(((used >> i) & 1u) ? 0u : key[i], i, a1, i1, a2, i2);
          }
        }
      }
      __syncwarp();
      const int nk = nsel < k ? nsel : k;
      myE = lane < nk ? slot_e[lane] : -1;
      w = myE >= 0 ? srow[myE] : 0.0f;
      if (certify && a.sel_mode != 0 && lane + 1 < nsel) {
        /* the gap to the next winner against both values' error bounds */
        const int en = slot_e[lane + 1];
        const float v0 = slot_v[lane], v1 = slot_v[lane + 1];
        const float e0 = eps_s * srow[slot_e[lane]] + FLT_EPSILON * fabsf(v0), e1 = eps_s * srow[en] + FLT_EPSILON * fabsf(v1);
        if (!(v0 - v1 > e0 + e1 + 1e-37f)) ok = false;
      }
      const float wsum = warp_sum(w);
      if (a.renorm && wsum > 0.0f) w = __fmul_rn(w, __frcp_rn(wsum));
      slot = lane;
      if (a.gate_order) {
        if (lane < k) slot_w[lane] = w;
        __syncwarp();
      }
      if (a.gate_order && lane < k) {
        int rank = 0;
        bool close = false;
        for (int q = 0; q < k; q++) {
          const float wq = slot_w[q];
          const int eq = q < nk ? slot_e[q] : -1;
          if (q != lane) {
            rank += eq >= 0 && (myE < 0 || wq > w || (wq == w && eq < myE));
            close |= fabsf(wq - w) <= 2.0f * (eps_s + k * FLT_EPSILON) * fmaxf(wq, w);
          }
        }
        if (certify && close) ok = false;
        slot = rank;
      }
      if (!certify || __all_sync(FULL, ok)) break;
      if (lane == 0) atomicAdd(a.bad + 2, 1ull); /* routed again by the exact pass */
    }
    if (lane < k) {
      a.experts[t * k + slot] = myE;
      a.weights[t * k + slot] = w;
      if (myE >= 0) atomicAdd(sload + myE, 1u);
    }
    if (a.exp_dev) {
      const int dv = (lane < k && myE >= 0) ? __ldg(a.exp_dev + myE) : -1 - lane;
      const unsigned same = __match_any_sync(FULL, dv);
      if (dv >= 0 && lane == __ffs(same) - 1) {
        if (a.hop_shared) atomicAdd(shop + sdev * a.D + dv, 1u);
        else atomicAdd(a.hop + (size_t)sdev * a.D + dv, 1ull);
      }
    }
    if (a.want_p) { /* P_e: s, or s / sum(s) for sigmoid, added to the warp's sums */
      float inv = 1.0f;
      float sv[V];
#pragma unroll
      for (int c = 0; c < C; c++) load_plain<W>(srow + c * CH + lane * W, sv + c * W);
      if (a.score == 1) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < V; i++) acc += sv[i];
        inv = 1.0f / warp_sum(acc);
      }
      float pv[V];
#pragma unroll
      for (int c = 0; c < C; c++) load_plain<W>(prow + c * CH + lane * W, pv + c * W);
#pragma unroll
      for (int i = 0; i < V; i++) pv[i] += sv[i] * inv;
#pragma unroll
      for (int c = 0; c < C; c++) store_chunk<W>(prow + c * CH + lane * W, pv + c * W);
    }
    if (a.want_z && lane == 0) zacc += (double)lse * (double)lse;
  }
  if (lane == 0) zsh[warp] = zacc;
  __syncthreads();
  /* block statistics in a fixed order: warps 0..7 */
  if (a.want_p)
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      float acc = 0.0f;
      for (int h = 0; h < 8; h++) acc += smem[(8 + h) * E + e];
      a.ppart[(size_t)blockIdx.x * E + e] = acc;
    }
  if (threadIdx.x == 0 && a.want_z) {
    double acc = 0;
    for (int h = 0; h < 8; h++) acc += zsh[h];
    a.zpart[blockIdx.x] = acc;
  }
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    if (sload[e]) atomicAdd(a.load + e, (unsigned long long)sload[e]);
  if (a.hop_shared)
    for (int i = threadIdx.x; i < a.D * a.D; i += blockDim.x)
      if (shop[i]) atomicAdd(a.hop + i, (unsigned long long)shop[i]);
}

/* psum[e] = sum over blocks of ppart[b, e] (double, block order); zsum likewise. */
__global__ void select_finish_kernel(const carl__selargs_t a, int blocks) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < a.E; e += gridDim.x * blockDim.x) {
    double acc = 0;
    if (a.want_p)
      for (int b = 0; b < blocks; b++) acc += (double)a.ppart[(size_t)b * a.E + e];
    a.psum[e] = acc;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double acc = 0;
    if (a.want_z)
      for (int b = 0; b < blocks; b++) acc += a.zpart[b];
    a.zsum[0] = acc;
  }
}

typedef void (*carl__selfn)(const carl__selargs_t);

/* Blocks of 256 threads per SM the compiler is asked to fit (__launch_bounds__): 1 (registers
 * as it likes: 87 at E = 256, two blocks), 3 (at most 80, no spills at E <= 256) or 4 (at most
 * 64, a few spills). CARL_CUDA_ROUTE_MINB=1|3|4 in the environment picks one (a tuning knob of
 * bench/gpu/route); the default is 3. */
#define SELFN(Cc, Ww) (minb == 1 ? select_kernel<Cc, Ww, 1> : (minb == 4 ? select_kernel<Cc, Ww, 4> : select_kernel<Cc, Ww, 3>))
static carl__selfn select_fn(int E) {
  static int minb = -1;
  if (minb < 0) {
    const char *v = getenv("CARL_CUDA_ROUTE_MINB");
    minb = v && (v[0] == '1' || v[0] == '4') ? v[0] - '0' : 3;
  }
  switch (E) {
    case 32: return SELFN(1, 1);
    case 64: return SELFN(1, 2);
    case 128: return SELFN(1, 4);
    case 256: return SELFN(2, 4);
    case 512: return SELFN(4, 4);
  }
  return NULL;
}
#undef SELFN

/* experts per lane chunk: the smallest group the kernel takes */
extern "C" int carl__cuda_select_fits_E(int E) { return select_fn(E) != NULL; }

static size_t select_smem(const carl__selargs_t *a) {
  return (size_t)a->work_floats * 4 + (size_t)a->E * 4 + (a->hop_shared ? (size_t)a->D * a->D * 4 : 0) + 16 + 8 * 8;
}
/* shared memory: scores and P_e sums per warp (16 E floats), the winners' slots (8 x 64 words),
 * loads [E], hop counts [D, D] when they fit, the block's logsumexp^2 sums */

extern "C" carl_status carl__cuda_select_grid(carl_cuda_t *g, carl__selargs_t *a, int *blocks, size_t *smem) {
  carl__selfn fn = select_fn(a->E);
  if (!fn) return carl_fail(CARL_ERR_UNSUPPORTED, "CUDA routing: no kernel for E = %d experts", a->E);
  a->work_floats = 16 * a->E + 8 * 64;
  a->hop_shared = a->exp_dev && (size_t)a->D * a->D * 4 <= 32768;
  *smem = select_smem(a);
  CARL_CUDA_TRY(cudaFuncSetAttribute((const void *)fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)*smem));
  int per_sm = 0;
  CARL_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, 256, *smem));
  if (per_sm < 1) per_sm = 1;
  int64_t want = (a->T + 7) / 8, cap = (int64_t)per_sm * g->sms;
  *blocks = (int)(want < cap ? want : cap);
  return CARL_OK;
}

extern "C" carl_status carl__cuda_select(carl_cuda_t *g, const carl__selargs_t *a, int blocks, size_t smem) {
  carl__selfn fn = select_fn(a->E);
  if (!fn) return carl_fail(CARL_ERR_UNSUPPORTED, "CUDA routing: no kernel for E = %d experts", a->E);
  fn<<<blocks, 256, smem, g->stream>>>(*a);
  CARL_CUDA_LAUNCHED();
  select_finish_kernel<<<(a->E + 255) / 256, 256, 0, g->stream>>>(*a, blocks);
  CARL_CUDA_LAUNCHED();
  return CARL_OK;
}
