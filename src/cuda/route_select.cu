/* The fused routing kernel on the GPU: one pass over the logits computes the scores (softmax or
 * sigmoid), the selection values (logits, scores, or scores + a per-source-device bias: lossfree's
 * b, carl's -lambda_c c^), the group-limited selection (group score = sum of the top per_group
 * selection values, + a bonus on the token's own node; the M best groups), the top-k with the
 * lower-index tie rule, the gate weights (renormalised; in gate order for carl), the per-expert
 * loads, the per-(source, destination) device copy counts of the flat plan and the statistics of
 * the z-loss and the auxiliary losses.
 * CPU reference: carl_route_select (src/route/common.c; the portable kernel carl_kern_select in
 * src/kern/select.c), which it matches
 * selection for selection: where the selection reads the scores, they are computed with the same
 * float operations in the same order as the CPU's portable code (the Cephes exp of carl_kern_expf
 * without fused multiply-adds, the 16-lane sum tree of carl__score_row), so the selection values
 * are the same floats and the same experts win.
 *
 * Layout: a half-warp (16 lanes) per token, lane j holding experts j, 16 + j, 32 + j, ... (E / 16
 * of them): lane j's running sum is the CPU's accumulator lane j of its 16-wide sum. Top-k: each
 * lane keeps its two best remaining (key, index) pairs; k rounds of a half-warp max and min
 * reduction (redux.sync) pick the best key, then the lowest expert among equal keys. Keys are the
 * float bits mapped to unsigned order (with -0 read as +0), 0 for experts outside the kept groups.
 * Persistent grid: each half-warp routes tokens t, t + H, t + 2H, ... (H half-warps in the grid),
 * so the per-block statistics and their sums over blocks have a fixed order. */
#include <float.h>

#include "cuda/route_internal.h"

/* carl_kern_expf (kern/kern.h) with every operation rounded on its own, as the CPU's vector code
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

/* The CPU's 16-lane sum: lane j holds accumulator j (its sa/sb lanes); sv = sa + sb, then
 * ((sv0 + sv1) + (sv2 + sv3)) + ((sv4 + sv5) + (sv6 + sv7)). Addition commutes exactly, so each
 * butterfly step gives every lane the same pair sum as the CPU's tree. */
__device__ __forceinline__ float sum16(float acc, unsigned hmask) {
  acc = __fadd_rn(acc, __shfl_xor_sync(hmask, acc, 8));
  acc = __fadd_rn(acc, __shfl_xor_sync(hmask, acc, 1));
  acc = __fadd_rn(acc, __shfl_xor_sync(hmask, acc, 2));
  acc = __fadd_rn(acc, __shfl_xor_sync(hmask, acc, 4));
  return acc;
}

template <int V>
__global__ void __launch_bounds__(256) select_kernel(const carl__selargs_t a) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 15, half = threadIdx.x >> 4, hb = threadIdx.x & 16;
  const unsigned hmask = 0xFFFFu << hb;
  const int E = a.E, k = a.k;
  float *work = smem;
  unsigned *sload = (unsigned *)(smem + a.work_floats);
  unsigned *shop = sload + E;
  double *zsh = (double *)(shop + (a.hop_shared ? a.D * a.D : 0) + 1) /* 8-byte aligned below */;
  zsh = (double *)(((uintptr_t)zsh + 7) & ~(uintptr_t)7);
  for (int i = threadIdx.x; i < E; i += blockDim.x) sload[i] = 0;
  if (a.hop_shared)
    for (int i = threadIdx.x; i < a.D * a.D; i += blockDim.x) shop[i] = 0;
  __syncthreads();

  float pacc[V];
#pragma unroll
  for (int i = 0; i < V; i++) pacc[i] = 0.0f;
  double zacc = 0.0;
  const int64_t H = (int64_t)gridDim.x * 16;
  for (int64_t t = (int64_t)blockIdx.x * 16 + half; t < a.T; t += H) {
    const float *zr = a.logits + t * E;
    float z[V];
#pragma unroll
    for (int i = 0; i < V; i++) z[i] = __ldcs(zr + 16 * i + lane);
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
    float chk = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) chk = fmaf(z[i], 0.0f, chk);
    if (__ballot_sync(hmask, chk != chk)) {
      if (lane < k) {
        a.experts[t * k + lane] = -1;
        a.weights[t * k + lane] = 0.0f;
      }
      if (lane == 0) atomicMin(a.bad, (unsigned long long)t);
      continue;
    }
    float mx = z[0];
#pragma unroll
    for (int i = 1; i < V; i++) mx = fmaxf(mx, z[i]);
    mx = fmaxf(mx, __shfl_xor_sync(hmask, mx, 8));
    mx = fmaxf(mx, __shfl_xor_sync(hmask, mx, 4));
    mx = fmaxf(mx, __shfl_xor_sync(hmask, mx, 2));
    mx = fmaxf(mx, __shfl_xor_sync(hmask, mx, 1));
    /* scores */
    float s[V], lse = 0.0f;
    if (a.score == 0 || a.need_lse) {
      float acc = 0.0f;
      if (a.exact && a.score == 0) {
#pragma unroll
        for (int i = 0; i < V; i++) {
          s[i] = exp_cpu(__fsub_rn(z[i], mx));
          acc = __fadd_rn(acc, s[i]);
        }
      } else {
#pragma unroll
        for (int i = 0; i < V; i++) {
          s[i] = __expf(z[i] - mx);
          acc += s[i];
        }
      }
      const float sum = sum16(acc, hmask);
      lse = mx + logf(sum);
      if (a.score == 0) {
        const float inv = __frcp_rn(sum);
#pragma unroll
        for (int i = 0; i < V; i++) s[i] = __fmul_rn(s[i], inv);
      }
    }
    if (a.score == 1) {
      if (a.exact) {
#pragma unroll
        for (int i = 0; i < V; i++) s[i] = __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_cpu(-z[i])));
      } else {
#pragma unroll
        for (int i = 0; i < V; i++) s[i] = 1.0f / (1.0f + __expf(-z[i]));
      }
    }
    /* selection values */
    float v[V];
    if (a.sel_mode == 2) {
      const float *br = a.bias + (a.bias_by_src ? (size_t)sdev * E : 0);
#pragma unroll
      for (int i = 0; i < V; i++) v[i] = __fadd_rn(s[i], __ldg(br + 16 * i + lane));
    } else if (a.sel_mode == 1) {
#pragma unroll
      for (int i = 0; i < V; i++) v[i] = s[i];
    } else {
#pragma unroll
      for (int i = 0; i < V; i++) v[i] = z[i];
    }
    /* group-limited: elements i of every lane in group i >> gshift */
    unsigned emask = 0xFFFFFFFFu;
    if (a.grouped) {
      float *row = work + half * (E + a.G);
#pragma unroll
      for (int i = 0; i < V; i++) row[16 * i + lane + (i >> a.gshift)] = v[i];
      __syncwarp(hmask);
      unsigned gk = 0;
      if (lane < a.G) {
        const float *gr = row + lane * (a.gsize + 1);
        float top[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        for (int m = 0; m < a.gsize; m++) {
          float y = gr[m];
#pragma unroll
          for (int j = 0; j < 4; j++)
            if (j < a.pg) {
              const float hi = fmaxf(top[j], y), lo = fminf(top[j], y);
              top[j] = hi;
              y = lo;
            }
        }
        float gs = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++)
          if (j < a.pg) gs = __fadd_rn(gs, top[j]);
        if (a.bonus) gs = __fadd_rn(gs, __ldg(a.bonus + (size_t)__ldg(a.dev_node + sdev) * a.G + lane));
        gk = fkey(gs);
      }
      __syncwarp(hmask);
      emask = 0;
      const unsigned gbits = (a.gsize >> 4) >= 32 ? 0xFFFFFFFFu : ((1u << (a.gsize >> 4)) - 1u);
      for (int r = 0; r < a.M; r++) {
        const unsigned best = __reduce_max_sync(hmask, gk);
        const unsigned bal = (__ballot_sync(hmask, lane < a.G && gk == best) >> hb) & 0xFFFFu;
        const int w = __ffs(bal) - 1;
        if (w >= 0) emask |= gbits << (w * (a.gsize >> 4));
        if (lane == w) gk = 0;
      }
    }
    /* each lane's two best remaining (key, element) pairs */
    unsigned key[V];
#pragma unroll
    for (int i = 0; i < V; i++) key[i] = ((emask >> i) & 1u) ? fkey(v[i]) : 0u;
    unsigned c1 = 0, c2 = 0, used = 0;
    int i1 = 0, i2 = 0;
    float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) {
      if (key[i] > c1) {
        c2 = c1, i2 = i1, s2 = s1;
        c1 = key[i], i1 = i, s1 = s[i];
      } else if (key[i] > c2) {
        c2 = key[i], i2 = i, s2 = s[i];
      }
    }
    int myE = -1;
    float myW = 0.0f, wsum = 0.0f;
    for (int r = 0; r < k; r++) {
      const unsigned best = __reduce_max_sync(hmask, c1);
      const unsigned mye = (unsigned)(16 * i1 + lane);
      const unsigned I = __reduce_min_sync(hmask, c1 == best && best != 0 ? mye : 0xFFFFFFFFu);
      if (I == 0xFFFFFFFFu) break; /* fewer than k candidates (excluded by the driver's checks) */
      const float w = __shfl_sync(hmask, s1, (int)(I & 15u) | hb);
      if (lane == r) myE = (int)I, myW = w;
      wsum = __fadd_rn(wsum, w);
      if (mye == I) {
        used |= 1u << i1;
        if (c2 != 0) {
          c1 = c2, i1 = i2, s1 = s2, c2 = 0;
        } else { /* rebuild the two best of the elements not yet taken */
          c1 = 0;
#pragma unroll
          for (int i = 0; i < V; i++) {
            const unsigned kk = ((used >> i) & 1u) ? 0u : key[i];
            if (kk > c1) {
              c2 = c1, i2 = i1, s2 = s1;
              c1 = kk, i1 = i, s1 = s[i];
            } else if (kk > c2) {
              c2 = kk, i2 = i, s2 = s[i];
            }
          }
        }
      }
    }
    if (a.renorm && wsum > 0.0f) myW = __fmul_rn(myW, __frcp_rn(wsum));
    int slot = lane;
    if (a.gate_order) {
      int rank = 0;
      for (int q = 0; q < k; q++) {
        const float wq = __shfl_sync(hmask, myW, q | hb);
        const int eq = __shfl_sync(hmask, myE, q | hb);
        rank += q != lane && (wq > myW || (wq == myW && eq < myE));
      }
      slot = rank;
    }
    if (lane < k) {
      a.experts[t * k + slot] = myE;
      a.weights[t * k + slot] = myW;
      if (myE >= 0) atomicAdd(sload + myE, 1u);
    }
    if (a.exp_dev) {
      const int dv = (lane < k && myE >= 0) ? __ldg(a.exp_dev + myE) : -1 - lane;
      const unsigned same = __match_any_sync(hmask, dv);
      if (dv >= 0 && (int)(threadIdx.x & 31) == __ffs(same) - 1) {
        if (a.hop_shared) atomicAdd(shop + sdev * a.D + dv, 1u);
        else atomicAdd(a.hop + (size_t)sdev * a.D + dv, 1ull);
      }
    }
    if (a.want_p) {
      if (a.score == 0) {
#pragma unroll
        for (int i = 0; i < V; i++) pacc[i] += s[i];
      } else {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < V; i++) acc += s[i];
        const float inv = 1.0f / sum16(acc, hmask);
#pragma unroll
        for (int i = 0; i < V; i++) pacc[i] += s[i] * inv;
      }
    }
    if (a.want_z && lane == 0) zacc += (double)lse * (double)lse;
  }
  __syncthreads();
  /* block statistics in a fixed order: half-warps 0..15 */
  if (a.want_p) {
#pragma unroll
    for (int i = 0; i < V; i++) work[half * E + 16 * i + lane] = pacc[i];
  }
  if (lane == 0) zsh[half] = zacc;
  __syncthreads();
  if (a.want_p)
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      float acc = 0.0f;
      for (int h = 0; h < 16; h++) acc += work[h * E + e];
      a.ppart[(size_t)blockIdx.x * E + e] = acc;
    }
  if (threadIdx.x == 0 && a.want_z) {
    double acc = 0;
    for (int h = 0; h < 16; h++) acc += zsh[h];
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

static carl__selfn select_fn(int E) {
  switch (E) {
    case 16: return select_kernel<1>;
    case 32: return select_kernel<2>;
    case 64: return select_kernel<4>;
    case 128: return select_kernel<8>;
    case 256: return select_kernel<16>;
    case 512: return select_kernel<32>;
  }
  return NULL;
}

extern "C" int carl__cuda_select_fits_E(int E) { return select_fn(E) != NULL; }

static size_t select_smem(const carl__selargs_t *a) {
  return (size_t)a->work_floats * 4 + (size_t)a->E * 4 + (a->hop_shared ? (size_t)a->D * a->D * 4 : 0) + 8 + 16 * 8;
}

extern "C" carl_status carl__cuda_select_grid(carl_cuda_t *g, carl__selargs_t *a, int *blocks, size_t *smem) {
  carl__selfn fn = select_fn(a->E);
  if (!fn) return carl_fail(CARL_ERR_UNSUPPORTED, "CUDA routing: no kernel for E = %d experts", a->E);
  int wf = 0;
  if (a->grouped) wf = 16 * (a->E + a->G);
  if (a->want_p && 16 * a->E > wf) wf = 16 * a->E;
  a->work_floats = wf;
  a->hop_shared = a->exp_dev && (size_t)a->D * a->D * 4 <= 32768;
  *smem = select_smem(a);
  CARL_CUDA_TRY(cudaFuncSetAttribute((const void *)fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)*smem));
  int per_sm = 0;
  CARL_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, 256, *smem));
  if (per_sm < 1) per_sm = 1;
  int64_t want = (a->T + 15) / 16, cap = (int64_t)per_sm * g->sms;
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
