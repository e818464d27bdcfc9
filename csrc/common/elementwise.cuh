// The elementwise kernels of the activation families (relu.cu, tanh.cu): one template per
// numbered version, instantiated with the activation's math.
//
// An activation is a struct with two device functions:
//   static float forward(float x);             y = f(x)
//   static float backward(float dy, float y);  dx = dy * f'(x), written in terms of the output y
// Layout:  any shape, treated as n contiguous float32 elements.
// Threads: a grid-stride loop, kThreads per block (grid: grid_stride_blocks, common/launch.h).
//
// version 1: one element per thread per iteration.
// version 2: float4 loads and stores (four elements per thread per iteration); needs all
//            pointers 16-byte aligned (the dispatcher picks version 1 otherwise); the
//            n % 4 tail is done by the first threads of the grid.
// Both are memory-bound for cheap math: 8 (forward) or 12 (backward) bytes per element.
#pragma once
#include <stdexcept>
#include <string>

#include "common/launch.h"

namespace alexnet::elementwise {

inline constexpr int kThreads = 256;
inline constexpr int kVersions = 2;

// ---- version 1 ------------------------------------------------------------------
template <class Act>
__global__ void forward_v1(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = Act::forward(x[i]);
}

template <class Act>
__global__ void backward_v1(const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ dx,
                            int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = Act::backward(dy[i], y[i]);
}

// ---- version 2 ------------------------------------------------------------------
template <class Act>
__global__ void forward_v2(const float4* __restrict__ x, float4* __restrict__ y, int64_t n4,
                           const float* __restrict__ xt, float* __restrict__ yt, int tail) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < n4; i += stride) {
    const float4 v = x[i];
    y[i] = make_float4(Act::forward(v.x), Act::forward(v.y), Act::forward(v.z), Act::forward(v.w));
  }
  if (first < tail) yt[first] = Act::forward(xt[first]);
}

template <class Act>
__global__ void backward_v2(const float4* __restrict__ dy, const float4* __restrict__ y, float4* __restrict__ dx,
                            int64_t n4, const float* __restrict__ dyt, const float* __restrict__ ytail,
                            float* __restrict__ dxt, int tail) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < n4; i += stride) {
    const float4 g = dy[i], v = y[i];
    dx[i] = make_float4(Act::backward(g.x, v.x), Act::backward(g.y, v.y), Act::backward(g.z, v.z),
                        Act::backward(g.w, v.w));
  }
  if (first < tail) dxt[first] = Act::backward(dyt[first], ytail[first]);
}

// ---- launchers --------------------------------------------------------------------
// The version to run (`version`, or 2 when every pointer is 16-byte aligned, else 1); version 2 on
// unaligned pointers is std::invalid_argument.
inline int pick(const char* op, int version, bool aligned) {
  version = pick_version(op, version, kVersions, aligned ? 2 : 1);
  if (version == 2 && !aligned) throw std::invalid_argument(std::string(op) + ": version 2 needs 16-byte aligned arrays");
  return version;
}

// y = Act::forward(x) over n elements; `op` names the op in errors.
template <class Act>
void forward(const char* op, const float* x, float* y, int64_t n, int version, cudaStream_t stream) {
  if (n == 0) return;
  if (pick(op, version, aligned16(x, y)) == 1) {
    LAUNCH(forward_v1<Act>, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, x, y, n);
    return;
  }
  const int64_t n4 = n / 4;
  LAUNCH(forward_v2<Act>, dim3(grid_stride_blocks(n4, kThreads)), dim3(kThreads), 0, stream,
         reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(y), n4, x + n4 * 4, y + n4 * 4,
         int(n - n4 * 4));
}

// dx = Act::backward(dy, y) over n elements.
template <class Act>
void backward(const char* op, const float* dy, const float* y, float* dx, int64_t n, int version,
              cudaStream_t stream) {
  if (n == 0) return;
  if (pick(op, version, aligned16(dy, y, dx)) == 1) {
    LAUNCH(backward_v1<Act>, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, dy, y, dx, n);
    return;
  }
  const int64_t n4 = n / 4;
  LAUNCH(backward_v2<Act>, dim3(grid_stride_blocks(n4, kThreads)), dim3(kThreads), 0, stream,
         reinterpret_cast<const float4*>(dy), reinterpret_cast<const float4*>(y), reinterpret_cast<float4*>(dx), n4,
         dy + n4 * 4, y + n4 * 4, dx + n4 * 4, int(n - n4 * 4));
}

}  // namespace alexnet::elementwise
