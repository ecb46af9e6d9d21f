// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a
// counter-based generator, so element k's random number is a pure function of (key, k) and the
// CPU and CUDA bodies draw the same numbers in any order. Host and device code.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTMTL_HD __host__ __device__ __forceinline__
#else
#define FASTMTL_HD inline
#endif

namespace fastmtl {

struct Philox4 {
  uint32_t v[4];
};

FASTMTL_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Ten rounds on counter c with key (k0, k1).
FASTMTL_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, c.v[0], hi0, lo0);
    philox_mulhilo(kM1, c.v[2], hi1, lo1);
    c = Philox4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

// Element k of stream `stream` draws lane k % 4 of the block counter (k / 4 as two words,
// stream, 0).
FASTMTL_HD Philox4 philox_block(uint64_t block, uint32_t stream, uint32_t k0, uint32_t k1) {
  return philox4x32_10(
      Philox4{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), stream, 0u}},
      k0, k1);
}

// A uniform number in the open interval (0, 1): the top 23 bits plus one half, times 2^-23,
// exact in float and double. Never 0 or 1, so P = 0 and P = 1 decide without ties.
FASTMTL_HD float philox_to_unit(uint32_t x) {
  return (static_cast<float>(x >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}

}  // namespace fastmtl
