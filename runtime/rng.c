/* rng.c: a counter-based generator. Every random number is a pure
 * function of (key, index): a parameter's element i gets the same initial
 * value whichever rank or shard computes it, and a training batch is a
 * function of (seed, step), so a resumed run draws what it would have. */
#include "lmrt.h"
#include <math.h>

static uint64_t mix(uint64_t z) {       /* splitmix64 finaliser */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t rng_hash(uint64_t a, uint64_t b, uint64_t c) {
  return mix(mix(mix(a + 0x9e3779b97f4a7c15ULL) ^ b) ^ (c * 0x9e3779b97f4a7c15ULL + 1));
}

double rng_uniform(uint64_t key, uint64_t i) {
  return ((rng_hash(key, i, 0) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

double rng_normal(uint64_t key, uint64_t i) {
  double u1 = ((rng_hash(key, i, 1) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  double u2 = ((rng_hash(key, i, 2) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t rng_key(const char *name, uint64_t seed) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
  return rng_hash(h, seed, 0x6c6d63);
}
