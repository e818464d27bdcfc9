// Stand-in for <cuda_fp16.h> in the emu build: __half with IEEE binary16 storage and
// round-to-nearest-even conversions from float (subnormals, overflow to inf, NaN kept).
// Arithmetic is done in float and rounded back, as the hardware does for one operation.
#pragma once

#include <cstdint>
#include <cstring>

namespace emu {
inline uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                   // below 2^-14: subnormal half or zero
    const int e = int(ax >> 23);
    const int shift = 126 - e;  // value = m * 2^(e-150); half subnormal unit 2^-24
    if (shift > 24) return uint16_t(sign);
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t q = m >> shift;
    const uint32_t r = m & ((1u << shift) - 1u), h = 1u << (shift - 1);
    if (r > h || (r == h && (q & 1u))) ++q;
    return uint16_t(sign | q);
  }
  uint32_t h = (ax >> 13) - (112u << 10);
  const uint32_t r = ax & 0x1fffu;
  if (r > 0x1000u || (r == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
  if (e == 0x1f) {
    x = sign | 0x7f800000u | (m << 13);
  } else if (e == 0) {
    if (m == 0) {
      x = sign;
    } else {  // subnormal: normalise
      int s = 0;
      while (!(m & 0x400u)) { m <<= 1; ++s; }
      x = sign | (uint32_t(113 - s) << 23) | ((m & 0x3ffu) << 13);
    }
  } else {
    x = sign | ((e + 112u) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
}  // namespace emu

struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(emu::float_to_half_bits(f)) {}
  __half(double f) : __x(emu::float_to_half_bits(float(f))) {}
  __half(int i) : __x(emu::float_to_half_bits(float(i))) {}
  operator float() const { return emu::half_bits_to_float(__x); }
};
struct __half2 {
  __half x, y;
};

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __half __ushort_as_half(unsigned short b) { __half h; h.__x = b; return h; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline float2 __half22float2(__half2 h) { return float2{float(h.x), float(h.y)}; }
inline __half __hadd(__half a, __half b) { return __half(float(a) + float(b)); }
inline __half __hsub(__half a, __half b) { return __half(float(a) - float(b)); }
inline __half __hmul(__half a, __half b) { return __half(float(a) * float(b)); }
inline __half __hfma(__half a, __half b, __half c) { return __half(std::fma(float(a), float(b), float(c))); }
inline __half operator+(__half a, __half b) { return __hadd(a, b); }
inline __half operator-(__half a, __half b) { return __hsub(a, b); }
inline __half operator*(__half a, __half b) { return __hmul(a, b); }
inline __half operator/(__half a, __half b) { return __half(float(a) / float(b)); }
