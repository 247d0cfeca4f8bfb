/* AdamW with decoupled weight decay (Loshchilov & Hutter, ICLR 2019) and the LR schedule. */
#include <math.h>

#include "carl/nn.h"

carl_adamw_cfg_t carl_adamw_default(void) {
  carl_adamw_cfg_t c = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
  return c;
}

void carl_adamw_update(float *p, const float *g, float *m, float *v, int64_t n, const carl_adamw_cfg_t *c, float lr,
                       int64_t t, int decay) {
  const float b1 = c->beta1, b2 = c->beta2;
  const float bc1 = 1.0f - powf(b1, (float)t), bc2 = 1.0f - powf(b2, (float)t);
  const float wd = decay ? c->weight_decay : 0.0f;
#pragma omp parallel for schedule(static) if (n >= CARL_OMP_MIN_WORK)
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i];
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    float mh = m[i] / bc1, vh = v[i] / bc2;
    p[i] -= lr * (mh / (sqrtf(vh) + c->eps) + wd * p[i]);
  }
}

float carl_lr_cosine(int64_t step, int64_t warmup, int64_t total, float lr_max, float lr_min) {
  if (warmup > 0 && step < warmup) return lr_max * (float)(step + 1) / (float)warmup;
  if (step >= total) return lr_min;
  double span = (double)(total - warmup);
  double frac = span > 0 ? (double)(step - warmup) / span : 1.0;
  return lr_min + (float)(0.5 * (1.0 + cos(CARL_PI * frac))) * (lr_max - lr_min);
}
