// Local response normalization across channels, forward and backward (paper section 3.3).
//
// Math:    win(c) = [c - half, c + half] clipped to [0, C-1], half = size / 2 (size odd)
//          scale[c] = k + a * sum_{c' in win(c)} x[c']^2          (a = alpha, or alpha/size)
//          y[c]     = x[c] * scale[c]^-beta
//          dx[j]    = dy[j] * scale[j]^-beta - (2 a beta) * x[j] * sum_{c in win(j)} dy[c] y[c] / scale[c]
//          (per n, h, w). Rounding follows alexnet_cuda.reference step by step: squares
//          and products rounded one at a time (__fmul_rn, no FMA contraction), window sums
//          accumulated from the lowest channel up, k, a, beta and 2*a*beta rounded to float
//          from doubles on the host. scale is therefore bitwise the reference's; y and dx
//          differ only through powf (CUDA: at most 2 ulp).
// Storage: x, y, dy, dx FP32, or BF16 (uint16 bits, T = uint16_t; common/storage.cuh): widened on
//          load, every operation above in FP32 on the widened values, y and dx rounded once on
//          store. scale is always FP32 (the saved sum; a reduction stays FP32). So the BF16 op is
//          round_bf16(the FP32 op on the widened inputs) up to powf's ulps before the rounding.
// Layout:  x, y, scale, dy, dx: (N, C, H, W), contiguous; HW = H * W.
// Threads:
// version 1: one thread per output element (n, c, h, w), grid-stride; the window is read
//            straight from global memory (size loads per output, 3*size in the backward;
//            neighbouring channels hit the caches). The simple oracle of version 2.
// version 2: tiled. A block of 32 x 8 threads owns 32 consecutive pixels of one image and
//            walks the channels in chunks of 32: it stages x (forward) or t = dy*y/scale
//            (backward) for channels [c0 - half, c0 + 32 + half) of its 32 pixels in shared
//            memory (row = channel, 32 floats = one coalesced 128-byte line per channel; the
//            loads of a chunk are independent, so many are in flight), then thread (tx, ty)
//            finishes channels c0 + ty, c0 + ty + 8, ... of pixel tx from shared memory.
//            Halo rows are re-read per chunk (2*half/32 extra loads, from L2). Needs
//            min(half, C-1) <= 32 (shared memory (32 + 2*32) * 32 floats at most); the
//            dispatcher falls back to version 1 beyond that.
// Memory: forward reads 4 and writes 8 bytes per element; backward reads 16, writes 4 (FP32;
//         BF16: 2 and 6, 10 and 2). Version 2 stages widened floats for both storages.
#include "kernels/lrn.cuh"

#include <stdexcept>
#include <string>

#include "common/launch.h"
#include "common/storage.cuh"
#include "kernels/lrn_math.cuh"

namespace alexnet::kernels {
using namespace lrn_math;
namespace {

constexpr int kThreads = 256;
constexpr int kTilePix = 32;   // pixels per block (version 2)
constexpr int kTileRows = 8;   // threads along channels (version 2)
constexpr int kChunk = 32;     // output channels per shared-memory chunk (version 2)
constexpr int kMaxHalfV2 = 32;

// ---- version 1: one thread per element ------------------------------------------------
template <class T>
__global__ void lrn_forward_v1(const T* __restrict__ x, T* __restrict__ y, float* __restrict__ scale, int64_t n,
                               LrnParams P) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int((i / P.HW) % P.C);
    const T* col = x + (i - int64_t(c) * P.HW);  // channel 0 of this pixel
    const int lo = max(c - P.half, 0), hi = min(c + P.half, P.C - 1);
    float s = 0.0f;
    for (int cc = lo; cc <= hi; ++cc) s = __fadd_rn(s, sq(storage::load(col, int64_t(cc) * P.HW)));
    const float sc = scale_of(P, s);
    scale[i] = sc;
    storage::store(y, i, normalized(P, storage::load(x, i), sc));
  }
}

template <class T>
__global__ void lrn_backward_v1(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                                const float* __restrict__ scale, T* __restrict__ dx, int64_t n, LrnParams P) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int((i / P.HW) % P.C);
    const int64_t col = i - int64_t(c) * P.HW;
    const int lo = max(c - P.half, 0), hi = min(c + P.half, P.C - 1);
    float cross = 0.0f;
    for (int cc = lo; cc <= hi; ++cc) {
      const int64_t j = col + int64_t(cc) * P.HW;
      cross = __fadd_rn(cross, cross_term(storage::load(dy, j), storage::load(y, j), scale[j]));
    }
    storage::store(dx, i, grad(P, direct_term(P, storage::load(dy, i), scale[i]), storage::load(x, i), cross));
  }
}

// ---- version 2: shared-memory tiles over channel chunks ----------------------------------
// Block b: image n = b / tiles, pixels [p0, p0 + 32) with p0 = (b % tiles) * 32.
// Shared: stage[r][tx], r = channel - (c0 - half), r < 32 + 2*half.
template <class T>
__global__ void __launch_bounds__(kThreads) lrn_forward_v2(const T* __restrict__ x, T* __restrict__ y,
                                                           float* __restrict__ scale, int64_t tiles, LrnParams P) {
  DYNAMIC_SHARED(float, stage);
  const int tx = threadIdx.x % kTilePix, ty = threadIdx.x / kTilePix;
  const int64_t nimg = blockIdx.x / tiles;
  const int64_t p = (blockIdx.x % tiles) * kTilePix + tx;
  const bool in = p < P.HW;
  const T* xn = x + nimg * P.C * P.HW + p;
  const int rows = kChunk + 2 * P.half;
  for (int c0 = 0; c0 < P.C; c0 += kChunk) {
    for (int r = ty; r < rows; r += kTileRows) {
      const int cc = c0 - P.half + r;
      stage[r * kTilePix + tx] = in && cc >= 0 && cc < P.C ? storage::load(xn, int64_t(cc) * P.HW) : 0.0f;
    }
    __syncthreads();
    for (int co = ty; co < kChunk && c0 + co < P.C; co += kTileRows) {
      // channels outside [0, C) were staged as 0: adding +0 leaves the sum bitwise unchanged
      float s = 0.0f;
      for (int d = 0; d < P.size; ++d) s = __fadd_rn(s, sq(stage[(co + d) * kTilePix + tx]));
      const float sc = scale_of(P, s);
      if (in) {
        const int64_t i = int64_t(c0 + co) * P.HW;
        scale[nimg * P.C * P.HW + p + i] = sc;
        storage::store(y, nimg * P.C * P.HW + p + i, normalized(P, stage[(co + P.half) * kTilePix + tx], sc));
      }
    }
    __syncthreads();  // the next chunk overwrites stage
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    lrn_backward_v2(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                    const float* __restrict__ scale, T* __restrict__ dx, int64_t tiles, LrnParams P) {
  DYNAMIC_SHARED(float, stage);
  const int tx = threadIdx.x % kTilePix, ty = threadIdx.x / kTilePix;
  const int64_t nimg = blockIdx.x / tiles;
  const int64_t p = (blockIdx.x % tiles) * kTilePix + tx;
  const bool in = p < P.HW;
  const int64_t base = nimg * P.C * P.HW + p;
  const int rows = kChunk + 2 * P.half;
  for (int c0 = 0; c0 < P.C; c0 += kChunk) {
    for (int r = ty; r < rows; r += kTileRows) {
      const int cc = c0 - P.half + r;
      float t = 0.0f;
      if (in && cc >= 0 && cc < P.C) {
        const int64_t j = base + int64_t(cc) * P.HW;
        t = cross_term(storage::load(dy, j), storage::load(y, j), scale[j]);
      }
      stage[r * kTilePix + tx] = t;
    }
    __syncthreads();
    for (int co = ty; co < kChunk && c0 + co < P.C; co += kTileRows) {
      float cross = 0.0f;
      for (int d = 0; d < P.size; ++d) cross = __fadd_rn(cross, stage[(co + d) * kTilePix + tx]);
      if (in) {
        const int64_t i = base + int64_t(c0 + co) * P.HW;
        storage::store(dx, i, grad(P, direct_term(P, storage::load(dy, i), scale[i]), storage::load(x, i), cross));
      }
    }
    __syncthreads();
  }
}

int pick(const char* op, int version, const LrnParams& P) {
  version = pick_version(op, version, kLrnVersions, P.half <= kMaxHalfV2 ? 2 : 1);
  if (version == 2 && P.half > kMaxHalfV2)
    throw std::invalid_argument(std::string(op) + ": version 2 handles size <= " + std::to_string(2 * kMaxHalfV2 + 1) +
                                " (or size >= 2C-1); use version 1");
  return version;
}

template <class T>
void forward(const T* x, T* y, float* scale, int64_t N, int64_t C, int64_t HW, int size, double a, double beta,
             double k, int version, cudaStream_t stream) {
  const LrnParams P = params("lrn_forward", C, HW, size, a, beta, k);
  version = pick("lrn_forward", version, P);
  const int64_t n = N * C * HW;
  if (n == 0) return;
  if (version == 1) {
    LAUNCH(lrn_forward_v1<T>, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, x, y, scale, n, P);
  } else {
    const int64_t tiles = (HW + kTilePix - 1) / kTilePix;
    const size_t smem = size_t(kChunk + 2 * P.half) * kTilePix * sizeof(float);
    LAUNCH(lrn_forward_v2<T>, dim3(unsigned(N * tiles)), dim3(kThreads), smem, stream, x, y, scale, tiles, P);
  }
}

template <class T>
void backward(const T* dy, const T* x, const T* y, const float* scale, T* dx, int64_t N, int64_t C, int64_t HW,
              int size, double a, double beta, int version, cudaStream_t stream) {
  const LrnParams P = params("lrn_backward", C, HW, size, a, beta, 0.0);
  version = pick("lrn_backward", version, P);
  const int64_t n = N * C * HW;
  if (n == 0) return;
  if (version == 1) {
    LAUNCH(lrn_backward_v1<T>, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, dy, x, y, scale, dx,
           n, P);
  } else {
    const int64_t tiles = (HW + kTilePix - 1) / kTilePix;
    const size_t smem = size_t(kChunk + 2 * P.half) * kTilePix * sizeof(float);
    LAUNCH(lrn_backward_v2<T>, dim3(unsigned(N * tiles)), dim3(kThreads), smem, stream, dy, x, y, scale, dx, tiles,
           P);
  }
}

}  // namespace

void lrn_forward(const float* x, float* y, float* scale, int64_t N, int64_t C, int64_t HW, int size, double a,
                 double beta, double k, int version, cudaStream_t stream) {
  forward(x, y, scale, N, C, HW, size, a, beta, k, version, stream);
}
void lrn_forward(const uint16_t* x, uint16_t* y, float* scale, int64_t N, int64_t C, int64_t HW, int size, double a,
                 double beta, double k, int version, cudaStream_t stream) {
  forward(x, y, scale, N, C, HW, size, a, beta, k, version, stream);
}
void lrn_backward(const float* dy, const float* x, const float* y, const float* scale, float* dx, int64_t N, int64_t C,
                  int64_t HW, int size, double a, double beta, int version, cudaStream_t stream) {
  backward(dy, x, y, scale, dx, N, C, HW, size, a, beta, version, stream);
}
void lrn_backward(const uint16_t* dy, const uint16_t* x, const uint16_t* y, const float* scale, uint16_t* dx, int64_t N,
                  int64_t C, int64_t HW, int size, double a, double beta, int version, cudaStream_t stream) {
  backward(dy, x, y, scale, dx, N, C, HW, size, a, beta, version, stream);
}

}  // namespace alexnet::kernels
