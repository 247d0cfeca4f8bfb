/* The simulated router: a linear gate z = x W per layer, trained by SGD on the task term
 * KL(teacher || softmax(z)) plus the router's balancing terms (their dlogits). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/sim.h"

carl_status carl_gate_init(carl_gate_t *g, int d, int E, uint64_t seed, int layer) {
  memset(g, 0, sizeof *g);
  if (d < 1 || E < 1) return carl_fail(CARL_ERR_INVALID, "gate: d (%d) and E (%d) must be >= 1", d, E);
  g->W = malloc((size_t)d * E * sizeof(float));
  if (!g->W) return carl_fail(CARL_ERR_NOMEM, "gate: out of memory");
  g->d = d;
  g->E = E;
  uint64_t base = (uint64_t)layer << 40;
  for (size_t i = 0; i < (size_t)d * E; i++) g->W[i] = 0.01f * carl_rng_normal(seed, CARL_STREAM_INIT, base + i);
  return CARL_OK;
}

void carl_gate_free(carl_gate_t *g) {
  free(g->W);
  memset(g, 0, sizeof *g);
}

void carl_gate_forward(const carl_gate_t *g, const float *x, int64_t T, float *z) {
  /* z[T, E] = x[T, d] W[d, E] */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, g->E, g->d, 1.0f, x, g->d, g->W, g->E, 0.0f, z,
              g->E);
}

void carl_gate_sgd(carl_gate_t *g, const float *x, int64_t T, const float *dz, float lr) {
  /* W[d, E] -= lr * x^T[d, T] dz[T, E] */
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, g->d, g->E, (int)T, -lr, x, g->d, dz, g->E, 1.0f, g->W, g->E);
}

double carl_sim_kl_grad(int64_t T, int E, const float *z, const int32_t *cluster, const float *probs, float *dz) {
  /* KL(p || s) = sum_e p_e log p_e - sum_e p_e (z_e - lse): the first term per token from its topic
   * (computed on first use), the second from the logits; exp in single precision. */
  double loss = 0;
  const float invT = 1.0f / (float)T;
  int32_t C = 0;
  for (int64_t t = 0; t < T; t++) C = cluster[t] + 1 > C ? cluster[t] + 1 : C;
  float *ex = malloc((size_t)E * sizeof(float));
  double *plogp = malloc((size_t)C * sizeof(double)); /* sum_e p log p of each topic */
  CARL_ASSERT(ex && plogp);
  for (int32_t c = 0; c < C; c++) {
    double a = 0;
    for (int e = 0; e < E; e++)
      if (probs[(size_t)c * E + e] > 0) a += (double)probs[(size_t)c * E + e] * log((double)probs[(size_t)c * E + e]);
    plogp[c] = a;
  }
  for (int64_t t = 0; t < T; t++) {
    const float *zt = z + (size_t)t * E;
    const float *p = probs + (size_t)cluster[t] * E;
    float *g = dz + (size_t)t * E;
    float mx = zt[0];
    for (int e = 1; e < E; e++) mx = zt[e] > mx ? zt[e] : mx;
    float sum = 0;
    for (int e = 0; e < E; e++) {
      ex[e] = expf(zt[e] - mx);
      sum += ex[e];
    }
    const float inv = 1.0f / sum;
    const double lse = (double)mx + log((double)sum);
    double pz = 0;
    for (int e = 0; e < E; e++) {
      pz += (double)p[e] * zt[e];
      g[e] += (ex[e] * inv - p[e]) * invT;
    }
    loss += plogp[cluster[t]] - pz + lse; /* sum_e p_e = 1 */
  }
  free(ex);
  free(plogp);
  return loss / (double)T;
}
