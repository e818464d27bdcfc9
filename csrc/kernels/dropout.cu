// Inverted dropout, forward and backward (paper section 4.2; scaled at training time).
//
// Math:    e = start + i is the element index of element i of x (start = 0 for a whole tensor; a
//          process holding rows r0.. of a larger batch passes start = r0 * row size, so its mask is
//          exactly those rows of the whole batch's mask)
//          mask[i] = keep(philox(group = e / 4, seed, offset)[e % 4], t)   (common/philox.h)
//          y[i]    = (x[i] * mask[i]) * scale,   scale = float(1 / (1 - p)) (double on the host)
//          dx[i]   = (dy[i] * mask[i]) * scale
//          t = min(2^24, ceil(p * 2^24)) is computed on the host from p as a double. The
//          products are rounded one at a time (__fmul_rn), so y is bitwise the reference's
//          x * mask * scale (including -0 and NaN for dropped x = -v, inf, nan).
//          Backward with relu_y (the backward of the ReLU before the dropout folded in; relu_y is
//          that ReLU's output, i.e. the dropout's input x): dx[i] = relu_y[i] > 0 ? dx[i] : +0
//          (kernels/relu_math.cuh), so dx is relu_backward(dropout_backward(dy, mask), relu_y) bit
//          for bit (-0 and NaN of dy * 0 included where relu_y > 0; +0 elsewhere, as relu_backward
//          writes, which a ReLU mask folded into the dropout mask could not give: dy * 0 is -0 for
//          negative dy). relu_y null: no fold. A pointer of every version's backward.
// Storage: x, y, dy, dx FP32 or BF16 (uint16 bits, T = uint16_t; common/storage.cuh): the products
//          on the widened values in FP32 as above, one rounding on store, so the BF16 op is
//          round_bf16(the FP32 op on the widened input), bitwise. The mask stays uint8.
// Layout:  any shape, n contiguous elements of T; mask uint8 of the same shape.
// Threads: forward: one thread per group of 4 elements (one Philox call), grid-stride loop,
//          256 threads per block. Backward: as relu (elementwise, no RNG).
//
// version 1: scalar loads and stores; the thread of group g handles element indices 4g .. 4g+3
//            that fall in [start, start + n) (fewer in the first and last group). Works for any
//            alignment and any start.
// version 2: one four-element vector load/store (storage::Vec4: float4 FP32, uint2 BF16) and one
//            32-bit mask store per group (forward), or per 4 elements (backward). Needs x, y
//            (dy, dx, relu_y) aligned to four elements (16 bytes FP32, 8 BF16), mask 4-byte aligned and
//            start % 4 == 0 (the dispatcher picks version 1 otherwise); the n % 4 tail is done by
//            the last group's thread with scalar accesses. Local group g is Philox group
//            start / 4 + g, so the vector lanes are exactly the Philox lanes.
// Both are memory-bound: forward reads 4 and writes 5 bytes per element, backward reads 5
// and writes 4 (FP32; 2 and 3, 3 and 2 in BF16); ten Philox rounds per 4 elements are far
// below the memory time. The folded backward reads relu_y too (9 and 4 bytes; 5 and 2 in BF16),
// where the separate ReLU pass reads 8 and writes 4 (4 and 2): 8 bytes per element saved in
// FP32, 4 in BF16, and one launch.
#include "kernels/dropout.cuh"

#include <stdexcept>
#include <string>

#include "common/launch.h"
#include "common/philox.h"
#include "common/storage.cuh"
#include "kernels/relu_math.cuh"

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float drop(float x, uint8_t m, float scale) {
  return __fmul_rn(__fmul_rn(x, float(m)), scale);
}

// The backward's dx of element i: d, or with the folded ReLU (relu_y not null) relu_backward(d, relu_y[i]).
template <class T>
__device__ __forceinline__ float fold_relu(float d, const T* __restrict__ relu_y, int64_t i) {
  return relu_y ? ReluMath::backward(d, storage::load(relu_y, i)) : d;
}

// ---- version 1 ------------------------------------------------------------------
template <class T>
__global__ void dropout_forward_v1(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask, int64_t n,
                                   uint64_t start, uint64_t seed, uint64_t offset, uint32_t threshold, float scale) {
  const int64_t lead = int64_t(start % 4);  // elements of the first Philox group before x[0]
  const int64_t groups = (lead + n + 3) / 4;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += int64_t(gridDim.x) * blockDim.x) {
    const Philox4 r = dropout_philox(start / 4 + uint64_t(g), seed, offset);
    const int64_t base = g * 4 - lead;  // index in x of this group's lane 0
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = base + lane;
      if (i < 0 || i >= n) continue;
      const uint8_t m = dropout_keep(r.v[lane], threshold) ? 1 : 0;
      mask[i] = m;
      storage::store(y, i, drop(storage::load(x, i), m, scale));
    }
  }
}

template <class T>
__global__ void dropout_backward_v1(const T* __restrict__ dy, const uint8_t* __restrict__ mask, T* __restrict__ dx,
                                    int64_t n, float scale, const T* __restrict__ relu_y) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    storage::store(dx, i, fold_relu(drop(storage::load(dy, i), mask[i], scale), relu_y, i));
}

// ---- version 2 ------------------------------------------------------------------
template <class T>
__global__ void dropout_forward_v2(const T* __restrict__ x, T* __restrict__ y, uint32_t* __restrict__ mask, int64_t n,
                                   uint64_t group0, uint64_t seed, uint64_t offset, uint32_t threshold, float scale) {
  const int64_t full = n / 4, groups = (n + 3) / 4;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += int64_t(gridDim.x) * blockDim.x) {
    const Philox4 r = dropout_philox(group0 + uint64_t(g), seed, offset);
    uint8_t m[4];
    for (int lane = 0; lane < 4; ++lane) m[lane] = dropout_keep(r.v[lane], threshold) ? 1 : 0;
    if (g < full) {
      float v[4];
      storage::load4(x, g, v);
      for (int lane = 0; lane < 4; ++lane) v[lane] = drop(v[lane], m[lane], scale);
      storage::store4(y, g, v);
      // little-endian: byte `lane` of the word is element 4g + lane
      mask[g] = uint32_t(m[0]) | uint32_t(m[1]) << 8 | uint32_t(m[2]) << 16 | uint32_t(m[3]) << 24;
    } else {  // the partial last group
      uint8_t* ms = reinterpret_cast<uint8_t*>(mask);
      for (int64_t i = g * 4; i < n; ++i) {
        ms[i] = m[i - g * 4];
        storage::store(y, i, drop(storage::load(x, i), m[i - g * 4], scale));
      }
    }
  }
}

// kFold: relu_y is given (the folded ReLU). A template flag, so the plain kernel keeps its registers.
template <class T, bool kFold>
__global__ void dropout_backward_v2(const T* __restrict__ dy, const uint32_t* __restrict__ mask, T* __restrict__ dx,
                                    int64_t n, float scale, const T* __restrict__ relu_y) {
  const int64_t full = n / 4, groups = (n + 3) / 4;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += int64_t(gridDim.x) * blockDim.x) {
    if (g < full) {
      float v[4];
      storage::load4(dy, g, v);
      const uint32_t m = mask[g];
      for (int lane = 0; lane < 4; ++lane) v[lane] = drop(v[lane], uint8_t(m >> (8 * lane)), scale);
      if (kFold) {  // the folded ReLU: one more vector load
        float r[4];
        storage::load4(relu_y, g, r);
        for (int lane = 0; lane < 4; ++lane) v[lane] = ReluMath::backward(v[lane], r[lane]);
      }
      storage::store4(dx, g, v);
    } else {
      const uint8_t* ms = reinterpret_cast<const uint8_t*>(mask);
      for (int64_t i = g * 4; i < n; ++i)
        storage::store(dx, i, fold_relu(drop(storage::load(dy, i), ms[i], scale), kFold ? relu_y : nullptr, i));
    }
  }
}

void check_p(const char* op, double p) {
  if (!(p >= 0.0 && p < 1.0))
    throw std::invalid_argument(std::string(op) + ": p must be in [0, 1), got " + std::to_string(p));
}

template <class T>
void forward(const T* x, T* y, uint8_t* mask, int64_t n, double p, uint64_t seed, uint64_t offset, uint64_t start,
             int version, cudaStream_t stream) {
  check_p("dropout_forward", p);
  if (n == 0) return;
  if (start > ~uint64_t(0) - uint64_t(n))
    throw std::invalid_argument("dropout_forward: start + size must be <= 2^64, got start " + std::to_string(start));
  const uint32_t t = dropout_threshold(p);
  const float scale = float(1.0 / (1.0 - p));
  const bool al = storage::aligned_vec4(x, y) && aligned(mask, 4) && start % 4 == 0;
  version = pick_version("dropout_forward", version, kDropoutVersions, al ? 2 : 1);
  if (version == 1) {
    const int64_t groups = (int64_t(start % 4) + n + 3) / 4;
    LAUNCH(dropout_forward_v1<T>, dim3(grid_stride_blocks(groups, kThreads)), dim3(kThreads), 0, stream, x, y, mask,
           n, start, seed, offset, t, scale);
  } else {
    if (!al)
      throw std::invalid_argument("dropout_forward: version 2 needs " + std::to_string(4 * sizeof(T)) +
                                  "-byte aligned x, y, 4-byte aligned mask and start % 4 == 0");
    LAUNCH(dropout_forward_v2<T>, dim3(grid_stride_blocks((n + 3) / 4, kThreads)), dim3(kThreads), 0, stream, x, y,
           reinterpret_cast<uint32_t*>(mask), n, start / 4, seed, offset, t, scale);
  }
}

template <class T>
void backward(const T* dy, const uint8_t* mask, T* dx, int64_t n, double p, const T* relu_y, int version,
              cudaStream_t stream) {
  check_p("dropout_backward", p);
  if (n == 0) return;
  const float scale = float(1.0 / (1.0 - p));
  const bool al = storage::aligned_vec4(dy, dx) && aligned(mask, 4) && (!relu_y || storage::aligned_vec4(relu_y));
  version = pick_version("dropout_backward", version, kDropoutVersions, al ? 2 : 1);
  if (version == 1) {
    LAUNCH(dropout_backward_v1<T>, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, dy, mask, dx, n,
           scale, relu_y);
  } else {
    if (!al)
      throw std::invalid_argument("dropout_backward: version 2 needs " + std::to_string(4 * sizeof(T)) +
                                  "-byte aligned dy, dx (and relu_y) and 4-byte aligned mask");
    const dim3 grid(grid_stride_blocks((n + 3) / 4, kThreads));
    const uint32_t* m = reinterpret_cast<const uint32_t*>(mask);
    if (relu_y)
      LAUNCH(dropout_backward_v2<T, true>, grid, dim3(kThreads), 0, stream, dy, m, dx, n, scale, relu_y);
    else
      LAUNCH(dropout_backward_v2<T, false>, grid, dim3(kThreads), 0, stream, dy, m, dx, n, scale, relu_y);
  }
}

}  // namespace

void dropout_forward(const float* x, float* y, uint8_t* mask, int64_t n, double p, uint64_t seed, uint64_t offset,
                     uint64_t start, int version, cudaStream_t stream) {
  forward(x, y, mask, n, p, seed, offset, start, version, stream);
}
void dropout_forward(const uint16_t* x, uint16_t* y, uint8_t* mask, int64_t n, double p, uint64_t seed,
                     uint64_t offset, uint64_t start, int version, cudaStream_t stream) {
  forward(x, y, mask, n, p, seed, offset, start, version, stream);
}
void dropout_backward(const float* dy, const uint8_t* mask, float* dx, int64_t n, double p, const float* relu_y,
                      int version, cudaStream_t stream) {
  backward(dy, mask, dx, n, p, relu_y, version, stream);
}
void dropout_backward(const uint16_t* dy, const uint8_t* mask, uint16_t* dx, int64_t n, double p,
                      const uint16_t* relu_y, int version, cudaStream_t stream) {
  backward(dy, mask, dx, n, p, relu_y, version, stream);
}

}  // namespace alexnet::kernels
