/* Softmax cross-entropy and embeddings. */
#include <math.h>
#include <string.h>

#include "carl/nn.h"

double carl_xent_fwd(float *lse, const float *logits, const int32_t *targets, int64_t N, int V, int64_t *ncount) {
  /* per-row losses are summed in row order after the parallel loop */
  double total = 0;
  int64_t n = 0;
#pragma omp parallel for schedule(static) if (N * V >= CARL_OMP_MIN_WORK)
  for (int64_t i = 0; i < N; i++) {
    const float *z = logits + i * V;
    float mx = -INFINITY;
    for (int j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
    double s = 0;
    for (int j = 0; j < V; j++) s += exp((double)z[j] - mx);
    lse[i] = (float)(mx + log(s));
  }
  for (int64_t i = 0; i < N; i++) {
    if (!targets || targets[i] < 0) continue;
    total += (double)lse[i] - logits[i * V + targets[i]];
    n++;
  }
  if (ncount) *ncount = n;
  return n ? total / n : 0.0;
}

void carl_xent_bwd(float *dlogits, const float *logits, const float *lse, const int32_t *targets, int64_t N, int V,
                   float scale) {
#pragma omp parallel for schedule(static) if (N * V >= CARL_OMP_MIN_WORK)
  for (int64_t i = 0; i < N; i++) {
    const float *z = logits + i * V;
    float *dz = dlogits + i * V;
    int32_t t = targets ? targets[i] : -1;
    if (t < 0) {
      memset(dz, 0, sizeof(float) * V);
      continue;
    }
    float l = lse[i];
    for (int j = 0; j < V; j++) dz[j] = scale * expf(z[j] - l);
    dz[t] -= scale;
  }
}

void carl_embed_fwd(float *x, const int32_t *tokens, const float *tok_emb, const float *pos_emb, int B, int S,
                    int d) {
#pragma omp parallel for schedule(static) if ((int64_t)B * S * d >= CARL_OMP_MIN_WORK)
  for (int64_t i = 0; i < (int64_t)B * S; i++) {
    const float *te = tok_emb + (int64_t)tokens[i] * d, *pe = pos_emb + (int64_t)(i % S) * d;
    float *xi = x + i * d;
    for (int j = 0; j < d; j++) xi[j] = te[j] + pe[j];
  }
}

void carl_embed_bwd(float *dtok_emb, float *dpos_emb, const float *dx, const int32_t *tokens, int B, int S, int d) {
  /* parallel over columns; tokens in order within each column block */
  const int CB = 16;
  int nb = (d + CB - 1) / CB;
#pragma omp parallel for schedule(static) if ((int64_t)B * S * d >= CARL_OMP_MIN_WORK)
  for (int b = 0; b < nb; b++) {
    int j0 = b * CB, j1 = j0 + CB < d ? j0 + CB : d;
    for (int64_t i = 0; i < (int64_t)B * S; i++) {
      const float *g = dx + i * d;
      if (dtok_emb) {
        float *te = dtok_emb + (int64_t)tokens[i] * d;
        for (int j = j0; j < j1; j++) te[j] += g[j];
      }
      if (dpos_emb) {
        float *pe = dpos_emb + (int64_t)(i % S) * d;
        for (int j = j0; j < j1; j++) pe[j] += g[j];
      }
    }
  }
}
