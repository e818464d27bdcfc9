// ReLU, forward and backward (paper section 3.1).
//
// Math:    y = max(0, x);  dx = dy if y > 0 else 0  (the gradient at 0 is taken as 0)
// Layout:  any shape, treated as n contiguous float32 elements.
// Threads: a grid-stride loop, 256 threads per block (grid: grid_stride_blocks, common/launch.h).
//
// version 1: one element per thread per iteration.
// version 2: float4 loads and stores (four elements per thread per iteration); needs all
//            pointers 16-byte aligned (the dispatcher picks version 1 otherwise); the
//            n % 4 tail is done by the first threads of the grid.
// Both are memory-bound: 8 (forward) or 12 (backward) bytes per element.
#include "kernels/relu.cuh"

#include <stdexcept>

#include "common/launch.h"

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;

// ---- version 1 ------------------------------------------------------------------
__global__ void relu_forward_v1(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = fmaxf(x[i], 0.0f);
}

__global__ void relu_backward_v1(const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ dx,
                                 int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// ---- version 2 ------------------------------------------------------------------
__global__ void relu_forward_v2(const float4* __restrict__ x, float4* __restrict__ y, int64_t n4,
                                const float* __restrict__ xt, float* __restrict__ yt, int tail) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < n4; i += stride) {
    float4 v = x[i];
    v.x = fmaxf(v.x, 0.0f);
    v.y = fmaxf(v.y, 0.0f);
    v.z = fmaxf(v.z, 0.0f);
    v.w = fmaxf(v.w, 0.0f);
    y[i] = v;
  }
  if (first < tail) yt[first] = fmaxf(xt[first], 0.0f);
}

__global__ void relu_backward_v2(const float4* __restrict__ dy, const float4* __restrict__ y, float4* __restrict__ dx,
                                 int64_t n4, const float* __restrict__ dyt, const float* __restrict__ ytail,
                                 float* __restrict__ dxt, int tail) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < n4; i += stride) {
    const float4 g = dy[i], v = y[i];
    dx[i] = make_float4(v.x > 0.0f ? g.x : 0.0f, v.y > 0.0f ? g.y : 0.0f, v.z > 0.0f ? g.z : 0.0f,
                        v.w > 0.0f ? g.w : 0.0f);
  }
  if (first < tail) dxt[first] = ytail[first] > 0.0f ? dyt[first] : 0.0f;
}

}  // namespace

void relu_forward(const float* x, float* y, int64_t n, int version, cudaStream_t stream) {
  if (n == 0) return;
  const bool al = aligned16(x, y);
  version = pick_version("relu_forward", version, kReluVersions, al ? 2 : 1);
  if (version == 2 && !al) throw std::invalid_argument("relu_forward: version 2 needs 16-byte aligned arrays");
  if (version == 1) {
    LAUNCH(relu_forward_v1, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, x, y, n);
  } else {
    const int64_t n4 = n / 4;
    const int tail = int(n - n4 * 4);
    LAUNCH(relu_forward_v2, dim3(grid_stride_blocks(n4, kThreads)), dim3(kThreads), 0, stream,
           reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(y), n4, x + n4 * 4, y + n4 * 4, tail);
  }
}

void relu_backward(const float* dy, const float* y, float* dx, int64_t n, int version, cudaStream_t stream) {
  if (n == 0) return;
  const bool al = aligned16(dy, y, dx);
  version = pick_version("relu_backward", version, kReluVersions, al ? 2 : 1);
  if (version == 2 && !al) throw std::invalid_argument("relu_backward: version 2 needs 16-byte aligned arrays");
  if (version == 1) {
    LAUNCH(relu_backward_v1, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, dy, y, dx, n);
  } else {
    const int64_t n4 = n / 4;
    const int tail = int(n - n4 * 4);
    LAUNCH(relu_backward_v2, dim3(grid_stride_blocks(n4, kThreads)), dim3(kThreads), 0, stream,
           reinterpret_cast<const float4*>(dy), reinterpret_cast<const float4*>(y), reinterpret_cast<float4*>(dx), n4,
           dy + n4 * 4, y + n4 * 4, dx + n4 * 4, tail);
  }
}

}  // namespace alexnet::kernels
