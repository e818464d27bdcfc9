// tanh, forward and backward (the saturating unit of the paper's Figure 1, section 3.1).
//
// Math:    y = tanh(x);  dx = dy * (1 - y^2), computed as dy * ((1 - y) * (1 + y)): 1 - y is exact
//          for |y| >= 1/2 (Sterbenz), so the factor keeps its relative precision where y nears +-1,
//          and the expression has no multiply-add a compiler could contract, so every build rounds
//          it as the NumPy reference does (bitwise equal backward).
// Layout:  any shape, treated as n contiguous float32 elements; the backward reads y (the forward
//          output), not x.
// Threads: a grid-stride loop, 256 threads per block (grid: grid_stride_blocks, common/launch.h).
//
// version 1: one element per thread per iteration, tanhf (CUDA's, at most 2 ulp from the exact value).
// version 2: float4 loads and stores (four elements per thread per iteration); needs all pointers
//            16-byte aligned (the dispatcher picks version 1 otherwise); the n % 4 tail is done by the
//            first threads of the grid.
// The forward is compute-light (one tanhf), both are memory-bound: 8 or 12 bytes per element.
#include "kernels/tanh.cuh"

#include <stdexcept>

#include "common/launch.h"

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float tanh_grad(float g, float y) { return g * ((1.0f - y) * (1.0f + y)); }

// ---- version 1 ------------------------------------------------------------------
__global__ void tanh_forward_v1(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = tanhf(x[i]);
}

__global__ void tanh_backward_v1(const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ dx,
                                 int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = tanh_grad(dy[i], y[i]);
}

// ---- version 2 ------------------------------------------------------------------
__global__ void tanh_forward_v2(const float4* __restrict__ x, float4* __restrict__ y, int64_t n4,
                                const float* __restrict__ xt, float* __restrict__ yt, int tail) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < n4; i += stride) {
    const float4 v = x[i];
    y[i] = make_float4(tanhf(v.x), tanhf(v.y), tanhf(v.z), tanhf(v.w));
  }
  if (first < tail) yt[first] = tanhf(xt[first]);
}

__global__ void tanh_backward_v2(const float4* __restrict__ dy, const float4* __restrict__ y, float4* __restrict__ dx,
                                 int64_t n4, const float* __restrict__ dyt, const float* __restrict__ ytail,
                                 float* __restrict__ dxt, int tail) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < n4; i += stride) {
    const float4 g = dy[i], v = y[i];
    dx[i] = make_float4(tanh_grad(g.x, v.x), tanh_grad(g.y, v.y), tanh_grad(g.z, v.z), tanh_grad(g.w, v.w));
  }
  if (first < tail) dxt[first] = tanh_grad(dyt[first], ytail[first]);
}

}  // namespace

void tanh_forward(const float* x, float* y, int64_t n, int version, cudaStream_t stream) {
  if (n == 0) return;
  const bool al = aligned16(x, y);
  version = pick_version("tanh_forward", version, kTanhVersions, al ? 2 : 1);
  if (version == 2 && !al) throw std::invalid_argument("tanh_forward: version 2 needs 16-byte aligned arrays");
  if (version == 1) {
    LAUNCH(tanh_forward_v1, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, x, y, n);
    return;
  }
  const int64_t n4 = n / 4;
  LAUNCH(tanh_forward_v2, dim3(grid_stride_blocks(n4, kThreads)), dim3(kThreads), 0, stream,
         reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(y), n4, x + n4 * 4, y + n4 * 4,
         int(n - n4 * 4));
}

void tanh_backward(const float* dy, const float* y, float* dx, int64_t n, int version, cudaStream_t stream) {
  if (n == 0) return;
  const bool al = aligned16(dy, y, dx);
  version = pick_version("tanh_backward", version, kTanhVersions, al ? 2 : 1);
  if (version == 2 && !al) throw std::invalid_argument("tanh_backward: version 2 needs 16-byte aligned arrays");
  if (version == 1) {
    LAUNCH(tanh_backward_v1, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, dy, y, dx, n);
    return;
  }
  const int64_t n4 = n / 4;
  LAUNCH(tanh_backward_v2, dim3(grid_stride_blocks(n4, kThreads)), dim3(kThreads), 0, stream,
         reinterpret_cast<const float4*>(dy), reinterpret_cast<const float4*>(y), reinterpret_cast<float4*>(dx), n4,
         dy + n4 * 4, y + n4 * 4, dx + n4 * 4, int(n - n4 * 4));
}

}  // namespace alexnet::kernels
