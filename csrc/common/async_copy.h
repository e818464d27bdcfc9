// Global-to-shared copies that bypass registers: DEVICE code, included only by .cu files.
//
//   async_copy_f32(dst, src, valid)  *dst = valid ? *src : 0.0f
//   async_copy_16(dst, src, bytes)   16 bytes to dst: the first `bytes` (0..16) from src, then zeros
//   async_copy_f32x4(dst, src, n)    async_copy_16 of n floats (n in 0..4), then zeros
//   async_commit()                   closes the group of copies issued since the last commit
//   async_wait_all()                 waits for every committed group of this thread
//   async_wait_pending<N>()          waits until at most the N newest committed groups are pending
//
// On sm_80 and newer these are cp.async (4 bytes, zero-filled when !valid: src is then not
// read; or 16 bytes through L2 only (.cg) with src-size = `bytes`: the rest zero-filled, src
// not read when 0; dst and src 16-byte aligned) and cp.async.commit_group / wait_all /
// wait_group N; a copy lands in shared memory some time before the wait that covers its
// group returns, and other threads see it after the __syncthreads() that follows that wait.
// Elsewhere (older GPUs, and the emulator, where neither __CUDACC__ nor __CUDA_ARCH__ is
// defined) the copy is a plain load and store, done at once, and commit and wait do nothing:
// the same code with the same barriers is correct on both paths. (So the emulator cannot
// show a wait that covers too few groups; it does check async_copy_16's alignment.)
#pragma once

#include "common/cuda_common.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define ALEXNET_CP_ASYNC 1
#endif

namespace alexnet::kernels {

__device__ __forceinline__ void async_copy_f32(float* dst, const float* src, bool valid) {
#if defined(ALEXNET_CP_ASYNC)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 4 : 0));
#else
  *dst = valid ? __ldg(src) : 0.0f;
#endif
}

__device__ __forceinline__ void async_copy_16(void* dst, const void* src, int bytes) {
#if defined(ALEXNET_CP_ASYNC)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes));
#else
#if defined(ALEXNET_EMU)
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & 15u)
    emu::kernel_fail("async_copy_16: dst and src must be 16-byte aligned");
#endif
  unsigned char* d = static_cast<unsigned char*>(dst);
  const unsigned char* p = static_cast<const unsigned char*>(src);
  for (int i = 0; i < 16; ++i) d[i] = i < bytes ? p[i] : 0;
#endif
}

// dst[0..3] = src[0..valid-1], zero past them (valid in 0..4; src and dst 16-byte aligned; src
// is not read when valid is 0).
__device__ __forceinline__ void async_copy_f32x4(float* dst, const float* src, int valid) {
  async_copy_16(dst, src, 4 * valid);
}

__device__ __forceinline__ void async_commit() {
#if defined(ALEXNET_CP_ASYNC)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

__device__ __forceinline__ void async_wait_all() {
#if defined(ALEXNET_CP_ASYNC)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void async_wait_pending() {
#if defined(ALEXNET_CP_ASYNC)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace alexnet::kernels
