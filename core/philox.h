// Philox4x32-10 counter-based RNG (Salmon et al., SC'11), shared by host and device code so that
// the CPU and CUDA backends draw identical numbers: draw i of a stream is a pure function of
// (seed, offset, i). Counter = (i lo, i hi, offset lo, offset hi), key = (seed lo, seed hi).
#pragma once
#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace seqtrain::philox {

struct U32x4 {
  uint32_t v[4];
};

SEQTRAIN_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

SEQTRAIN_HD U32x4 philox4x32_10(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  uint32_t c0 = uint32_t(counter_lo), c1 = uint32_t(counter_lo >> 32);
  uint32_t c2 = uint32_t(counter_hi), c3 = uint32_t(counter_hi >> 32);
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return U32x4{{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 53 random bits, from two 32-bit words.
SEQTRAIN_HD double to_unit_double(uint32_t a, uint32_t b) {
  uint64_t bits = (uint64_t(a) << 21) ^ uint64_t(b >> 11);  // 53 bits
  return double(bits & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// Element i of a uniform [lo, hi) stream. Computed in double on both backends so the values agree
// bit for bit after rounding to the tensor's dtype.
SEQTRAIN_HD double uniform(uint64_t seed, uint64_t offset, uint64_t i, double lo, double hi) {
  U32x4 r = philox4x32_10(i, offset, seed);
  return lo + (hi - lo) * to_unit_double(r.v[0], r.v[1]);
}

// Element i of a normal(mean, std) stream: Box-Muller on two uniforms of one Philox block.
SEQTRAIN_HD double normal(uint64_t seed, uint64_t offset, uint64_t i, double mean, double std) {
  U32x4 r = philox4x32_10(i, offset, seed);
  double u1 = 1.0 - to_unit_double(r.v[0], r.v[1]);  // (0, 1]
  double u2 = to_unit_double(r.v[2], r.v[3]);
  double radius = sqrt(-2.0 * log(u1));
  return mean + std * radius * cos(6.283185307179586 * u2);
}

}  // namespace seqtrain::philox
