// ReLU, forward and backward (paper section 3.1).
//
// Math:    y = max(0, x);  dx = dy if y > 0 else 0  (the gradient at 0 is taken as 0)
// Layout:  any shape, treated as n contiguous float32 elements.
// Threads: a grid-stride loop, 256 threads per block, at most 8 blocks per SM-equivalent.
//
// version 1: one element per thread per iteration.
// version 2: float4 loads and stores (four elements per thread per iteration); needs all
//            pointers 16-byte aligned (the dispatcher picks version 1 otherwise); the
//            n % 4 tail is done by the first threads of the grid.
// Both are memory-bound: 8 (forward) or 12 (backward) bytes per element.
#include "kernels/relu.cuh"

#include <stdexcept>
#include <string>

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return unsigned(blocks < 1 ? 1 : blocks > 65535 ? 65535 : blocks);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

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

void bad_version(const char* op, int v) {
  throw std::invalid_argument(std::string(op) + ": no kernel version " + std::to_string(v) + " (have 1, 2)");
}

}  // namespace

void relu_forward(const float* x, float* y, int64_t n, int version, cudaStream_t stream) {
  if (n == 0) return;
  if (version == 0) version = aligned16(x) && aligned16(y) ? 2 : 1;
  if (version == 2 && !(aligned16(x) && aligned16(y)))
    throw std::invalid_argument("relu_forward: version 2 needs 16-byte aligned arrays");
  if (version == 1) {
    LAUNCH(relu_forward_v1, dim3(grid_for(n)), dim3(kThreads), 0, stream, x, y, n);
  } else if (version == 2) {
    const int64_t n4 = n / 4;
    const int tail = int(n - n4 * 4);
    LAUNCH(relu_forward_v2, dim3(grid_for(n4 > 0 ? n4 : 1)), dim3(kThreads), 0, stream,
           reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(y), n4, x + n4 * 4, y + n4 * 4, tail);
  } else {
    bad_version("relu_forward", version);
  }
}

void relu_backward(const float* dy, const float* y, float* dx, int64_t n, int version, cudaStream_t stream) {
  if (n == 0) return;
  const bool al = aligned16(dy) && aligned16(y) && aligned16(dx);
  if (version == 0) version = al ? 2 : 1;
  if (version == 2 && !al) throw std::invalid_argument("relu_backward: version 2 needs 16-byte aligned arrays");
  if (version == 1) {
    LAUNCH(relu_backward_v1, dim3(grid_for(n)), dim3(kThreads), 0, stream, dy, y, dx, n);
  } else if (version == 2) {
    const int64_t n4 = n / 4;
    const int tail = int(n - n4 * 4);
    LAUNCH(relu_backward_v2, dim3(grid_for(n4 > 0 ? n4 : 1)), dim3(kThreads), 0, stream,
           reinterpret_cast<const float4*>(dy), reinterpret_cast<const float4*>(y), reinterpret_cast<float4*>(dx), n4,
           dy + n4 * 4, y + n4 * 4, dx + n4 * 4, tail);
  } else {
    bad_version("relu_backward", version);
  }
}

}  // namespace alexnet::kernels
