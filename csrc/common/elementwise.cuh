// The elementwise kernels of the activation families (relu.cu, tanh.cu): one template per
// numbered version, instantiated with the activation's math and the storage type T.
//
// An activation is a struct with two device functions:
//   static float forward(float x);             y = f(x)
//   static float backward(float dy, float y);  dx = dy * f'(x), written in terms of the output y
// Storage: T = float (FP32) or uint16_t (BF16 bits; common/storage.cuh). The math is FP32 on the
//          widened values either way, one rounding on store, so the BF16 kernel is
//          round_bf16(the FP32 kernel on the widened inputs); the float instantiation is the FP32
//          kernel as it was.
// Layout:  any shape, treated as n contiguous elements of T.
// Threads: a grid-stride loop, kThreads per block (grid: grid_stride_blocks, common/launch.h).
//
// version 1: one element per thread per iteration.
// version 2: four elements per thread per iteration as one vector access (storage::Vec4: float4,
//            16 bytes, for FP32; uint2, 8 bytes, for BF16); needs every pointer aligned to four
//            elements (the dispatcher picks version 1 otherwise); the n % 4 tail is done by the
//            first threads of the grid.
// Both are memory-bound for cheap math: 8 (forward) or 12 (backward) bytes per element in FP32,
// half that in BF16.
#pragma once
#include <stdexcept>
#include <string>

#include "common/launch.h"
#include "common/storage.cuh"

namespace alexnet::elementwise {

inline constexpr int kThreads = 256;
inline constexpr int kVersions = 2;

// ---- version 1 ------------------------------------------------------------------
template <class Act, class T>
__global__ void forward_v1(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    storage::store(y, i, Act::forward(storage::load(x, i)));
}

template <class Act, class T>
__global__ void backward_v1(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    storage::store(dx, i, Act::backward(storage::load(dy, i), storage::load(y, i)));
}

// ---- version 2 ------------------------------------------------------------------
// x, y: the whole arrays; elements [4*n4, 4*n4 + tail) are the scalar tail.
template <class Act, class T>
__global__ void forward_v2(const T* __restrict__ x, T* __restrict__ y, int64_t n4, int tail) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < n4; i += stride) {
    float v[4];
    storage::load4(x, i, v);
    for (int k = 0; k < 4; ++k) v[k] = Act::forward(v[k]);
    storage::store4(y, i, v);
  }
  if (first < tail) storage::store(y, n4 * 4 + first, Act::forward(storage::load(x, n4 * 4 + first)));
}

template <class Act, class T>
__global__ void backward_v2(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, int64_t n4,
                            int tail) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < n4; i += stride) {
    float g[4], v[4];
    storage::load4(dy, i, g);
    storage::load4(y, i, v);
    for (int k = 0; k < 4; ++k) g[k] = Act::backward(g[k], v[k]);
    storage::store4(dx, i, g);
  }
  if (first < tail) {
    const int64_t i = n4 * 4 + first;
    storage::store(dx, i, Act::backward(storage::load(dy, i), storage::load(y, i)));
  }
}

// ---- launchers --------------------------------------------------------------------
// The version to run (`version`, or 2 when every pointer is aligned to four elements, else 1);
// version 2 on unaligned pointers is std::invalid_argument.
template <class T>
int pick(const char* op, int version, bool aligned) {
  version = pick_version(op, version, kVersions, aligned ? 2 : 1);
  if (version == 2 && !aligned)
    throw std::invalid_argument(std::string(op) + ": version 2 needs " + std::to_string(4 * sizeof(T)) +
                                "-byte aligned arrays");
  return version;
}

// y = Act::forward(x) over n elements of storage T; `op` names the op in errors.
template <class Act, class T>
void forward(const char* op, const T* x, T* y, int64_t n, int version, cudaStream_t stream) {
  if (n == 0) return;
  if (pick<T>(op, version, storage::aligned_vec4(x, y)) == 1) {
    LAUNCH((forward_v1<Act, T>), dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, x, y, n);
    return;
  }
  const int64_t n4 = n / 4;
  LAUNCH((forward_v2<Act, T>), dim3(grid_stride_blocks(n4, kThreads)), dim3(kThreads), 0, stream, x, y, n4,
         int(n - n4 * 4));
}

// dx = Act::backward(dy, y) over n elements of storage T.
template <class Act, class T>
void backward(const char* op, const T* dy, const T* y, T* dx, int64_t n, int version, cudaStream_t stream) {
  if (n == 0) return;
  if (pick<T>(op, version, storage::aligned_vec4(dy, y, dx)) == 1) {
    LAUNCH((backward_v1<Act, T>), dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, dy, y, dx, n);
    return;
  }
  const int64_t n4 = n / 4;
  LAUNCH((backward_v2<Act, T>), dim3(grid_stride_blocks(n4, kThreads)), dim3(kThreads), 0, stream, dy, y, dx, n4,
         int(n - n4 * 4));
}

}  // namespace alexnet::elementwise
