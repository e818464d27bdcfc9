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
#pragma once
#include <cstdint>

#include <cuda_bf16.h>

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

// The name a binding or an error message uses for a storage type.
template <class T>
constexpr const char* name() { return sizeof(T) == 2 ? "bf16" : "float32"; }

}  // namespace alexnet::storage
