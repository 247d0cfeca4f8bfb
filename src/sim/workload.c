/* Synthetic workloads (ALGORITHMS.md section 5): topic clusters with Zipf popularity, a teacher
 * affinity per topic, sequences that keep their topic, and named skew scenarios.
 *
 * Random numbers: every draw is carl_rng_u32x4(seed, stream, index) with a stream per purpose
 * (and per layer for features/teachers), so a token's topic, its noise vector and the teacher
 * tables depend only on (seed, step, token index, layer), never on threads or on the router. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/sim.h"

/* streams: CARL_STREAM_WORKLOAD + (purpose << 8) + (layer << 16) */
enum { P_SEQ = 1, P_TOK = 2, P_FEAT = 3, P_CENTER = 4, P_TEACH0 = 5, P_TEACH1 = 6, P_POOL = 7, P_BURST = 8 };
#define NOISE_POOL 16384 /* noise vectors per layer; a token draws one by index */

static uint32_t stream_of(int purpose, int layer) {
  return (uint32_t)CARL_STREAM_WORKLOAD + ((uint32_t)purpose << 8) + ((uint32_t)layer << 16);
}

static const char *const scen_names[CARL_SCEN_COUNT] = {"balanced", "zipf",  "hot_expert", "hot_device",
                                                          "rotating", "burst", "drift"};

const char *carl_scenario_name(int s) { return (s >= 0 && s < CARL_SCEN_COUNT) ? scen_names[s] : "trace"; }

carl_status carl_scenario_parse(const char *name, int *out) {
  for (int s = 0; s < CARL_SCEN_COUNT; s++)
    if (name && !strcmp(name, scen_names[s])) {
      *out = s;
      return CARL_OK;
    }
  return carl_fail(CARL_ERR_NOT_FOUND,
                   "unknown scenario '%s' (valid: balanced, zipf, hot_expert, hot_device, rotating, burst, drift)",
                   name ? name : "(null)");
}

void carl_workload_defaults(carl_workload_cfg_t *c) {
  memset(c, 0, sizeof *c);
  c->scenario = CARL_SCEN_BALANCED;
  c->layers = 1;
  c->clusters = 32;
  c->zipf = 1.0;
  c->noise = 0.5;
  c->teacher_scale = 2.0;
  c->seq_len = 64;
  c->seq_coherence = 0.75;
  c->home_bias = 0.5;
  c->hot = 2.0;
  c->period = 50;
  c->burst_len = 10;
  c->burst_frac = 0.5;
  c->steps = 100;
  c->seed = 1;
}

/* four standard normals from one Philox block (two Box-Muller pairs) */
static void normal4(uint64_t seed, uint32_t stream, uint64_t index, float out[4]) {
  uint32_t w[4];
  carl_rng_u32x4(seed, stream, index, w);
  for (int p = 0; p < 2; p++) {
    double u1 = ((double)w[2 * p] + 1.0) / 4294967296.0; /* (0, 1] */
    double u2 = (double)w[2 * p + 1] / 4294967296.0;     /* [0, 1) */
    double r = sqrt(-2.0 * log(u1));
    out[2 * p] = (float)(r * cos(2 * CARL_PI * u2));
    out[2 * p + 1] = (float)(r * sin(2 * CARL_PI * u2));
  }
}

/* fill n normals keyed by (seed, stream, base + i/4) */
static void fill_normal(uint64_t seed, uint32_t stream, float *dst, int64_t n) {
  float v[4];
  for (int64_t i = 0; i < n; i += 4) {
    normal4(seed, stream, (uint64_t)(i / 4), v);
    for (int j = 0; j < 4 && i + j < n; j++) dst[i + j] = v[j];
  }
}

static float *noise_pool(const carl_workload_t *w, int layer) {
  /* pools live after the centres: see init */
  return w->centers + (size_t)w->cfg.layers * w->cfg.clusters * w->cfg.d +
         (size_t)layer * NOISE_POOL * w->cfg.d;
}

carl_status carl_workload_init(carl_workload_t *w, const carl_workload_cfg_t *cfg) {
  memset(w, 0, sizeof *w);
  const carl_workload_cfg_t *c = cfg;
  if (c->scenario < 0 || c->scenario >= CARL_SCEN_COUNT)
    return carl_fail(CARL_ERR_INVALID, "workload.scenario: %d is not a scenario", c->scenario);
  if (c->E < 1 || c->d < 1 || c->D < 1 || c->layers < 1 || c->clusters < 1 || c->seq_len < 1 || c->steps < 1 ||
      c->period < 1 || c->burst_len < 0)
    return carl_fail(CARL_ERR_INVALID,
                     "workload: E, d, D, layers, clusters, seq_len, steps, period must be >= 1 and burst_len >= 0");
  if (!(c->zipf >= 0) || !(c->noise >= 0) || !(c->teacher_scale >= 0) || !(c->seq_coherence >= 0) ||
      !(c->seq_coherence <= 1) || !(c->home_bias >= 0) || !(c->home_bias <= 1) || !(c->burst_frac >= 0) ||
      !(c->burst_frac <= 1) || !isfinite(c->hot))
    return carl_fail(CARL_ERR_INVALID,
                     "workload: zipf, noise, teacher_scale must be >= 0; seq_coherence, home_bias, burst_frac in [0, 1]");
  w->cfg = *c;
  const int L = c->layers, C = c->clusters, d = c->d, E = c->E;
  size_t ncent = (size_t)L * C * d + (size_t)L * NOISE_POOL * d;
  w->centers = malloc(ncent * sizeof(float));
  w->teach0 = malloc((size_t)L * C * E * sizeof(float));
  w->teach1 = malloc((size_t)L * C * E * sizeof(float));
  w->cdf = malloc((size_t)C * sizeof(double));
  if (!w->centers || !w->teach0 || !w->teach1 || !w->cdf) {
    carl_workload_free(w);
    return carl_fail(CARL_ERR_NOMEM, "workload: out of memory");
  }
  for (int l = 0; l < L; l++) {
    fill_normal(c->seed, stream_of(P_CENTER, l), w->centers + (size_t)l * C * d, (int64_t)C * d);
    fill_normal(c->seed, stream_of(P_POOL, l), noise_pool(w, l), (int64_t)NOISE_POOL * d);
    float *pool = noise_pool(w, l);
    for (size_t i = 0; i < (size_t)NOISE_POOL * d; i++) pool[i] *= (float)c->noise;
    fill_normal(c->seed, stream_of(P_TEACH0, l), w->teach0 + (size_t)l * C * E, (int64_t)C * E);
    fill_normal(c->seed, stream_of(P_TEACH1, l), w->teach1 + (size_t)l * C * E, (int64_t)C * E);
    for (size_t i = 0; i < (size_t)C * E; i++) {
      w->teach0[(size_t)l * C * E + i] *= (float)c->teacher_scale;
      w->teach1[(size_t)l * C * E + i] *= (float)c->teacher_scale;
    }
  }
  /* popularity: uniform for balanced, Zipf otherwise; cumulative in a fixed order */
  double s = c->scenario == CARL_SCEN_BALANCED ? 0.0 : c->zipf, tot = 0;
  for (int i = 0; i < C; i++) tot += pow((double)(i + 1), -s);
  double acc = 0;
  for (int i = 0; i < C; i++) {
    acc += pow((double)(i + 1), -s) / tot;
    w->cdf[i] = acc;
  }
  w->cdf[C - 1] = 1.0;
  return CARL_OK;
}

void carl_workload_free(carl_workload_t *w) {
  free(w->centers);
  free(w->teach0);
  free(w->teach1);
  free(w->cdf);
  memset(w, 0, sizeof *w);
}

/* topic from a uniform u in [0,1): first c with u < cdf[c] */
static int32_t draw_topic(const carl_workload_t *w, double u) {
  int lo = 0, hi = w->cfg.clusters - 1;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (u < w->cdf[mid])
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

static double u32_to_unit(uint32_t x) { return (double)x / 4294967296.0; }

static int burst_active(const carl_workload_cfg_t *c, int64_t step) {
  return c->scenario == CARL_SCEN_BURST && c->burst_len > 0 && (step % c->period) >= c->period - c->burst_len;
}

void carl_workload_tokens(const carl_workload_t *w, int64_t step, int64_t T, int32_t *cluster, int32_t *src,
                          int32_t *token_id) {
  const carl_workload_cfg_t *c = &w->cfg;
  const int C = c->clusters, D = c->D;
  int bursting = burst_active(c, step);
  int32_t burst_topic = 0;
  if (bursting) {
    uint32_t b[4];
    carl_rng_u32x4(c->seed, stream_of(P_BURST, 0), (uint64_t)(step / c->period), b);
    burst_topic = (int32_t)(b[0] % (uint32_t)C);
  }
  int64_t cur_seq = -1;
  int32_t seq_topic = 0;
  for (int64_t t = 0; t < T; t++) {
    int32_t dev = (int32_t)(t * D / T);
    if (src) src[t] = dev;
    /* sequences never straddle devices: sequence index within the device's shard */
    int64_t first = (dev * T + D - 1) / D; /* first token of this device */
    int64_t seq = ((int64_t)dev << 32) + (t - first) / c->seq_len;
    uint64_t base = ((uint64_t)step << 32);
    if (seq != cur_seq) {
      cur_seq = seq;
      uint32_t r[4];
      carl_rng_u32x4(c->seed, stream_of(P_SEQ, 0), base + (uint64_t)(t & 0xffffffff), r);
      if (u32_to_unit(r[0]) < c->home_bias) {
        /* home topics of device dev: {dev, dev + D, ...} below C; dev % C when there are fewer topics */
        if (C > D) {
          int nhome = (C - 1 - dev) / D + 1;
          seq_topic = (int32_t)(dev + (int)(r[1] % (uint32_t)nhome) * D);
        } else {
          seq_topic = (int32_t)(dev % C);
        }
      } else {
        seq_topic = draw_topic(w, u32_to_unit(r[2]));
      }
    }
    uint32_t r[4];
    carl_rng_u32x4(c->seed, stream_of(P_TOK, 0), base + (uint64_t)t, r);
    int32_t topic = u32_to_unit(r[0]) < c->seq_coherence ? seq_topic : draw_topic(w, u32_to_unit(r[1]));
    if (bursting && u32_to_unit(r[2]) < c->burst_frac) topic = burst_topic;
    if (cluster) cluster[t] = topic;
    if (token_id) token_id[t] = topic * 64 + (int32_t)(r[3] & 63);
  }
}

void carl_workload_features(const carl_workload_t *w, int64_t step, int layer, int64_t T, const int32_t *cluster,
                            float *x) {
  const carl_workload_cfg_t *c = &w->cfg;
  const int d = c->d;
  const float *cent = w->centers + (size_t)layer * c->clusters * d;
  const float *pool = noise_pool(w, layer);
  for (int64_t t = 0; t < T; t++) {
    uint32_t r[4];
    carl_rng_u32x4(c->seed, stream_of(P_FEAT, layer), ((uint64_t)step << 32) + (uint64_t)t, r);
    const float *nz = pool + (size_t)(r[0] % NOISE_POOL) * d;
    const float *mu = cent + (size_t)cluster[t] * d;
    float *xt = x + (size_t)t * d;
    for (int j = 0; j < d; j++) xt[j] = mu[j] + nz[j];
  }
}

void carl_workload_teacher(const carl_workload_t *w, int64_t step, int layer, float *probs) {
  const carl_workload_cfg_t *c = &w->cfg;
  const int C = c->clusters, E = c->E, D = c->D;
  const float *t0 = w->teach0 + (size_t)layer * C * E, *t1 = w->teach1 + (size_t)layer * C * E;
  double th = 0;
  if (c->scenario == CARL_SCEN_DRIFT && c->steps > 1) th = 1.5707963267948966 * (double)step / (double)(c->steps - 1);
  const double ct = cos(th), st = sin(th);
  /* hot experts: [lo, hi) get +hot */
  int lo = 0, hi = 0;
  int group = E >= D ? E / D : 1;
  switch (c->scenario) {
    case CARL_SCEN_HOT_EXPERT: lo = 0; hi = 1; break;
    case CARL_SCEN_HOT_DEVICE: lo = 0; hi = group; break;
    case CARL_SCEN_ROTATING: {
      int ngroups = E / group;
      lo = (int)((step / c->period) % ngroups) * group;
      hi = lo + group;
      break;
    }
    default: break;
  }
  for (int k = 0; k < C; k++) {
    float *p = probs + (size_t)k * E;
    double mx = -INFINITY;
    for (int e = 0; e < E; e++) {
      double v = th == 0 ? (double)t0[(size_t)k * E + e] : ct * t0[(size_t)k * E + e] + st * t1[(size_t)k * E + e];
      if (e >= lo && e < hi) v += c->hot;
      p[e] = (float)v;
      if (v > mx) mx = v;
    }
    double sum = 0;
    for (int e = 0; e < E; e++) {
      double v = exp((double)p[e] - mx);
      p[e] = (float)v;
      sum += v;
    }
    for (int e = 0; e < E; e++) p[e] = (float)(p[e] / sum);
  }
}
