// Storage types of activations and their gradients: what a kernel reads and writes in memory.
//
//   float     FP32 storage (every op at fp32 and tf32)
//   uint16_t  BF16 storage (precision bf16): the bit pattern of a bfloat16, the top 16 bits of
//             the FP32 pattern. The same form is a cupy uint16 array on cuda and the uint16 view
//             of an ml_dtypes.bfloat16 numpy array on emu.
//
// Kernels templated on the storage type T compute in FP32: `load` widens (exact for BF16) and
// `store` narrows once, to nearest even (__float2bfloat16_rn: NaN stays NaN, overflow goes to
// infinity), so a BF16 kernel equals round_bf16(its FP32 arithmetic on the widened inputs).
// (A NaN result: the emu build keeps its payload with the quiet bit set, as
// precision.bf16_bits does; the GPU's cvt may give the canonical NaN. Still a NaN.)
//
// Vectors of four elements (`Vec4<T>`, `load4`, `store4`): the vectorized versions of the
// memory-bound kernels move four consecutive elements per access, a float4 (16 bytes) for FP32
// and a uint2 (8 bytes: four BF16) for BF16, so one version's thread mapping, tail handling
// and Philox lanes (dropout) are the same for both storages. A pointer must be aligned to
// four elements (`aligned_vec4`: 16 bytes FP32, 8 bytes BF16). Lane k of a BF16 uint2 is the
// low (k even) or high (k odd) half of word k/2: little-endian, element order.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>

#include "common/launch.h"

namespace alexnet::storage {

__host__ __device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(uint16_t bits) { return __uint_as_float(uint32_t(bits) << 16); }

template <class T>
__device__ __forceinline__ T narrow(float v);
template <>
__device__ __forceinline__ float narrow<float>(float v) { return v; }
template <>
__device__ __forceinline__ uint16_t narrow<uint16_t>(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

template <class T>
__device__ __forceinline__ float load(const T* p, int64_t i) { return widen(p[i]); }
template <class T>
__device__ __forceinline__ void store(T* p, int64_t i, float v) { p[i] = narrow<T>(v); }

// ---- four elements per access ------------------------------------------------------------
template <class T>
struct Vec4;
template <>
struct Vec4<float> {
  using type = float4;
  static __device__ __forceinline__ void widen(const float4& v, float (&f)[4]) {
    f[0] = v.x;
    f[1] = v.y;
    f[2] = v.z;
    f[3] = v.w;
  }
  static __device__ __forceinline__ float4 narrow(const float (&f)[4]) { return make_float4(f[0], f[1], f[2], f[3]); }
};
template <>
struct Vec4<uint16_t> {
  using type = uint2;
  static __device__ __forceinline__ void widen(const uint2& v, float (&f)[4]) {
    f[0] = __uint_as_float(v.x << 16);
    f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16);
    f[3] = __uint_as_float(v.y & 0xffff0000u);
  }
  static __device__ __forceinline__ uint32_t pair(float lo, float hi) {
    return uint32_t(storage::narrow<uint16_t>(lo)) | uint32_t(storage::narrow<uint16_t>(hi)) << 16;
  }
  static __device__ __forceinline__ uint2 narrow(const float (&f)[4]) {
    return make_uint2(pair(f[0], f[1]), pair(f[2], f[3]));
  }
};

// f = the widened elements 4*i4 .. 4*i4+3 of p (p aligned to four elements).
template <class T>
__device__ __forceinline__ void load4(const T* p, int64_t i4, float (&f)[4]) {
  Vec4<T>::widen(reinterpret_cast<const typename Vec4<T>::type*>(p)[i4], f);
}
// Elements 4*i4 .. 4*i4+3 of p = f, each narrowed once; one vector store.
template <class T>
__device__ __forceinline__ void store4(T* p, int64_t i4, const float (&f)[4]) {
  reinterpret_cast<typename Vec4<T>::type*>(p)[i4] = Vec4<T>::narrow(f);
}

// Host: every pointer allows Vec4 accesses of its own storage (16 bytes FP32, 8 bytes BF16).
template <class... T>
inline bool aligned_vec4(const T*... p) {
  return (aligned(p, 4 * sizeof(T)) && ...);
}

// The name a binding or an error message uses for a storage type.
template <class T>
constexpr const char* name() { return sizeof(T) == 2 ? "bf16" : "float32"; }

}  // namespace alexnet::storage
