/* Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC'11).
 * Constants and round structure as in Random123's philox.h. */
#include "carl/core.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void carl_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
    uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void carl_rng_u32x4(uint64_t seed, uint32_t stream, uint64_t index, uint32_t out[4]) {
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  const uint32_t ctr[4] = {(uint32_t)index, (uint32_t)(index >> 32), stream, 0u};
  carl_philox4x32_10(ctr, key, out);
}

float carl_rng_uniform(uint64_t seed, uint32_t stream, uint64_t index) {
  uint32_t w[4];
  carl_rng_u32x4(seed, stream, index, w);
  return (float)(w[0] >> 8) * (1.0f / 16777216.0f);
}

double carl_rng_uniform64(uint64_t seed, uint32_t stream, uint64_t index) {
  uint32_t w[4];
  carl_rng_u32x4(seed, stream, index, w);
  uint64_t x = ((uint64_t)w[0] << 21) ^ (uint64_t)(w[1] >> 11);
  return (double)(x & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

float carl_rng_normal(uint64_t seed, uint32_t stream, uint64_t index) {
  uint32_t w[4];
  carl_rng_u32x4(seed, stream, index, w);
  /* u1 in (0, 1], u2 in [0, 1) */
  double u1 = ((double)w[0] + 1.0) / 4294967296.0;
  double u2 = (double)w[1] / 4294967296.0;
  return (float)(sqrt(-2.0 * log(u1)) * cos(2 * CARL_PI * u2));
}
