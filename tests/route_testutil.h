/* Helpers shared by the router tests (header only, static). */
#ifndef CARL_ROUTE_TESTUTIL_H
#define CARL_ROUTE_TESTUTIL_H
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "carl/balance.h"
#include "carl/route.h"
#include "route/router_impl.h"

typedef struct {
  int64_t T;
  int E, k;
  int32_t *experts; /* [T, k] */
  float *weights;   /* [T, k] */
  float *dlogits;   /* [T, E] */
  carl_route_out_t out;
} tu_out_t;

static inline void tu_out_init(tu_out_t *o, int64_t T, int E, int k, int with_grad) {
  memset(o, 0, sizeof *o);
  o->T = T;
  o->E = E;
  o->k = k;
  o->experts = calloc((size_t)(T * k), sizeof(int32_t));
  o->weights = calloc((size_t)(T * k), sizeof(float));
  o->dlogits = with_grad ? calloc((size_t)(T * E), sizeof(float)) : NULL;
  o->out.experts = o->experts;
  o->out.weights = o->weights;
  o->out.dlogits = o->dlogits;
}
static inline void tu_out_free(tu_out_t *o) {
  free(o->experts);
  free(o->weights);
  free(o->dlogits);
}

/* Router with options given as "key=value" pairs in one string, e.g. "k=2 capacity_factor=1". */
static inline carl_status tu_create(const char *name, const char *opts, carl_router_t **r) {
  const char *keys[32];
  double vals[32];
  char buf[512], names[32][64];
  int n = 0;
  strncpy(buf, opts ? opts : "", sizeof buf - 1);
  buf[sizeof buf - 1] = 0;
  for (char *tok = strtok(buf, " "); tok && n < 32; tok = strtok(NULL, " ")) {
    char *eq = strchr(tok, '=');
    if (!eq) continue;
    *eq = 0;
    strncpy(names[n], tok, 63);
    names[n][63] = 0;
    keys[n] = names[n];
    vals[n] = atof(eq + 1);
    n++;
  }
  return carl_router_create(name, n, keys, vals, r);
}

/* Reference softmax / sigmoid in double. */
static inline void tu_scores(const float *z, int E, int score, double *s) {
  if (score == 1) {
    for (int e = 0; e < E; e++) s[e] = 1.0 / (1.0 + exp(-(double)z[e]));
    return;
  }
  double m = z[0], a = 0;
  for (int e = 1; e < E; e++) m = z[e] > m ? z[e] : m;
  for (int e = 0; e < E; e++) a += exp(z[e] - m);
  for (int e = 0; e < E; e++) s[e] = exp(z[e] - m) / a;
}

/* Reference top-k by full selection sort (lower index first among equals). */
static inline void tu_topk(const double *v, int E, int k, int32_t *idx) {
  char used[4096] = {0};
  for (int j = 0; j < k; j++) {
    int best = -1;
    for (int e = 0; e < E; e++)
      if (!used[e] && (best < 0 || v[e] > v[best])) best = e;
    used[best] = 1;
    idx[j] = best;
  }
}

/* Gaussian logits with a per-expert offset: z[t,e] = off[e] + sigma * N(0,1). */
static inline void tu_logits(float *z, int64_t T, int E, const double *off, double sigma, uint64_t seed) {
  for (int64_t t = 0; t < T; t++)
    for (int e = 0; e < E; e++)
      z[t * E + e] = (float)((off ? off[e] : 0.0) + sigma * carl_rng_normal(seed, CARL_STREAM_DATA, (uint64_t)(t * E + e)));
}

static inline double tu_maxvio(const int32_t *experts, int64_t T, int k, int E) {
  double *l = calloc((size_t)E, sizeof *l);
  carl_load_experts(experts, T, k, E, l);
  carl_skew_t sk;
  carl_skew(l, E, &sk);
  free(l);
  return sk.maxvio;
}
#endif
