// Global-to-shared copies that bypass registers: DEVICE code, included only by .cu files.
//
//   async_copy_f32(dst, src, valid)  *dst = valid ? *src : 0.0f
//   async_copy_f32x4(dst, src, n)    dst[0..3] = src[0..n-1], then zeros (16 bytes, aligned)
//   async_commit()                   closes the group of copies issued since the last commit
//   async_wait_all()                 waits for every committed group of this thread
//
// On sm_80 and newer these are cp.async (4 or 16 bytes, zero-filled where not valid: src is then not
// read) and its commit/wait; the copy lands in shared memory some time before
// async_wait_all() returns, and other threads see it after the __syncthreads() that
// follows that wait. Elsewhere (older GPUs, and the emulator, where neither __CUDACC__ nor
// __CUDA_ARCH__ is defined) the copy is a plain load and store, done at once, and commit
// and wait do nothing: the same code with the same barriers is correct on both paths.
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

// dst[0..3] = src[0..valid-1], zero past them (valid in 0..4; src and dst 16-byte aligned; src
// is not read when valid is 0). cp.async.cg (16 bytes, through L2 only) with src-size 4*valid.
__device__ __forceinline__ void async_copy_f32x4(float* dst, const float* src, int valid) {
#if defined(ALEXNET_CP_ASYNC)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(4 * valid));
#else
  for (int i = 0; i < 4; ++i) dst[i] = i < valid ? __ldg(src + i) : 0.0f;
#endif
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

}  // namespace alexnet::kernels
