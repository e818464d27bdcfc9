// Prelude of the emu build: force-included (g++ -include) before every kernel source so
// that CUDA C++ compiles as plain C++ and runs on the CPU, one fiber per CUDA thread.
//
// Neither __CUDACC__ nor __CUDA_ARCH__ is defined here; ALEXNET_EMU is.
#pragma once

#define ALEXNET_EMU 1

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>

#include "emu_runtime.h"

// ---- qualifiers ---------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
#define __grid_constant__  // a kernel parameter read in place (its address may be taken)
// One copy per block: blocks run one at a time on each OS thread, so a thread-local
// static is the block's shared memory. emu/shared_begin.cpp explains the poisoning.
#define __shared__ static __thread

constexpr int warpSize = 32;

// ---- vector types -------------------------------------------------------------------
#define EMU_VEC2(T, N, A) struct alignas(A) N##2 { T x, y; }; \
  inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define EMU_VEC3(T, N) struct N##3 { T x, y, z; }; \
  inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define EMU_VEC4(T, N, A) struct alignas(A) N##4 { T x, y, z, w; }; \
  inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
EMU_VEC2(float, float, 8) EMU_VEC3(float, float) EMU_VEC4(float, float, 16)
EMU_VEC2(int, int, 8) EMU_VEC3(int, int) EMU_VEC4(int, int, 16)
EMU_VEC2(unsigned int, uint, 8) EMU_VEC4(unsigned int, uint, 16)
EMU_VEC2(double, double, 16)
#undef EMU_VEC2
#undef EMU_VEC3
#undef EMU_VEC4
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// ---- barriers -----------------------------------------------------------------------
// The call site (line and column) is recorded so that threads waiting at different barriers are reported.
inline void __syncthreads(std::source_location w = std::source_location::current()) {
  emu::syncthreads(emu::kBarPlain, 0, w.file_name(), int(w.line() * 1000 + w.column()));
}
inline int __syncthreads_count(int p, std::source_location w = std::source_location::current()) {
  return emu::syncthreads(emu::kBarCount, p, w.file_name(), int(w.line() * 1000 + w.column()));
}
inline int __syncthreads_and(int p, std::source_location w = std::source_location::current()) {
  return emu::syncthreads(emu::kBarAnd, p, w.file_name(), int(w.line() * 1000 + w.column()));
}
inline int __syncthreads_or(int p, std::source_location w = std::source_location::current()) {
  return emu::syncthreads(emu::kBarOr, p, w.file_name(), int(w.line() * 1000 + w.column()));
}

// ---- warp collectives ---------------------------------------------------------------
namespace emu {
template <class T>
inline T warp_exchange(int op, unsigned mask, T var, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_collective(op, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace emu

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return emu::warp_exchange(emu::kShfl, mask, var, src_lane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return emu::warp_exchange(emu::kShflUp, mask, var, int(delta), width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return emu::warp_exchange(emu::kShflDown, mask, var, int(delta), width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return emu::warp_exchange(emu::kShflXor, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int p) {
  return unsigned(emu::warp_collective(emu::kBallot, mask, p != 0, 0, warpSize));
}
inline int __any_sync(unsigned mask, int p) { return int(emu::warp_collective(emu::kAny, mask, p != 0, 0, warpSize)); }
inline int __all_sync(unsigned mask, int p) { return int(emu::warp_collective(emu::kAll, mask, p != 0, 0, warpSize)); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_collective(emu::kSyncWarp, mask, 0, 0, warpSize); }

// ---- atomics (correct across OS threads; fibers of one block never interleave) ---------
#define EMU_ATOMIC_INT(T)                                                                          \
  inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }             \
  inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }             \
  inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }           \
  inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }             \
  inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }               \
  inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }             \
  inline T atomicCAS(T* a, T cmp, T v) {                                                           \
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);            \
    return cmp;                                                                                    \
  }                                                                                                \
  inline T atomicMax(T* a, T v) {                                                                  \
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                                  \
    while (old < v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
    }                                                                                              \
    return old;                                                                                    \
  }                                                                                                \
  inline T atomicMin(T* a, T v) {                                                                  \
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                                  \
    while (old > v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
    }                                                                                              \
    return old;                                                                                    \
  }
EMU_ATOMIC_INT(int)
EMU_ATOMIC_INT(unsigned int)
EMU_ATOMIC_INT(unsigned long long)
EMU_ATOMIC_INT(long long)
#undef EMU_ATOMIC_INT

namespace emu {
// Floating-point atomics: compare-and-swap on the bit pattern.
template <class F, class U, class Op>
inline F atomic_float_rmw(F* a, Op op) {
  U* p = reinterpret_cast<U*>(a);
  U old = __atomic_load_n(p, __ATOMIC_RELAXED), next;
  do {
    F of, nf;
    std::memcpy(&of, &old, sizeof(F));
    nf = op(of);
    std::memcpy(&next, &nf, sizeof(F));
  } while (!__atomic_compare_exchange_n(p, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  F out;
  std::memcpy(&out, &old, sizeof(F));
  return out;
}
}  // namespace emu
inline float atomicAdd(float* a, float v) { return emu::atomic_float_rmw<float, uint32_t>(a, [v](float o) { return o + v; }); }
inline double atomicAdd(double* a, double v) { return emu::atomic_float_rmw<double, uint64_t>(a, [v](double o) { return o + v; }); }
inline float atomicExch(float* a, float v) { return emu::atomic_float_rmw<float, uint32_t>(a, [v](float) { return v; }); }
inline unsigned int atomicInc(unsigned int* a, unsigned int lim) {
  return emu::atomic_float_rmw<unsigned int, unsigned int>(a, [lim](unsigned int o) { return o >= lim ? 0u : o + 1; });
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- math and bit intrinsics --------------------------------------------------------
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : std::min(1.0f, std::max(0.0f, x)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float2int_rd(float x) { return int(std::floor(x)); }
inline int __float2int_ru(float x) { return int(std::ceil(x)); }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline int __mulhi(int a, int b) { return int((int64_t(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
template <class T>
inline T __ldg(const T* p) { return *p; }
[[noreturn]] inline void __trap() { emu::kernel_fail("__trap() called"); }

// CUDA's global min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ---- the CUDA runtime over host memory ----------------------------------------------
#include "cuda_runtime.h"
