// Philox-4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
// 1, 2, 3", SC 2011) and the dropout keep rule, usable from kernels (nvcc and the emu
// build) and from plain host C++ (the bindings). Mirrors alexnet_cuda.reference
// (philox4x32_10, dropout_mask) bit for bit:
//
//   one round:  (hi0, lo0) = mulhilo32(0xD2511F53, c0)
//               (hi1, lo1) = mulhilo32(0xCD9E8D57, c2)
//               (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
//   ten rounds; between rounds k0 += 0x9E3779B9, k1 += 0xBB67AE85 (mod 2^32).
//
//   dropout element i (flat C-order index of the tensor): group = i / 4, lane = i % 4,
//     counter = (group lo, group hi, offset lo, offset hi), key = (seed lo, seed hi),
//     r = philox(counter, key)[lane],  keep iff (r >> 8) >= t,
//     t = min(2^24, ceil(p * 2^24)) with p a double (dropout_threshold below).
//
// Known-answer vectors of Random123 (tests/test_kernels_layers.py checks them):
//   counter 0, key 0                    -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8
//   counter ffffffff x4, key ffffffff x2 -> 408f276d 41c83b0e a20bc7c6 6d5451fd
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(ALEXNET_EMU)
#define ALEXNET_HD __host__ __device__ __forceinline__
#else
#define ALEXNET_HD inline
#endif

namespace alexnet {

struct Philox4 {
  uint32_t v[4];
};

ALEXNET_HD void philox_mulhilo32(uint32_t m, uint32_t a, uint32_t& hi, uint32_t& lo) {
  const uint64_t prod = uint64_t(m) * uint64_t(a);  // nvcc: one mul.wide.u32
  hi = uint32_t(prod >> 32);
  lo = uint32_t(prod);
}

ALEXNET_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo32(0xD2511F53u, c0, hi0, lo0);
    philox_mulhilo32(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four random words of dropout group `group` (elements 4*group .. 4*group+3).
ALEXNET_HD Philox4 dropout_philox(uint64_t group, uint64_t seed, uint64_t offset) {
  return philox4x32_10(uint32_t(group), uint32_t(group >> 32), uint32_t(offset), uint32_t(offset >> 32),
                       uint32_t(seed), uint32_t(seed >> 32));
}

// t = min(2^24, ceil(p * 2^24)), p in [0, 1) as a double (host side; kernels get t).
inline uint32_t dropout_threshold(double p) {
  const double t = std::ceil(p * double(1u << 24));
  return t >= double(1u << 24) ? (1u << 24) : uint32_t(t);
}

// keep iff (r >> 8) >= t.
ALEXNET_HD bool dropout_keep(uint32_t r, uint32_t threshold) { return (r >> 8) >= threshold; }

}  // namespace alexnet
