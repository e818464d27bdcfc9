// Max pooling without padding, forward and backward (paper section 3.4: overlapping 3/2).
//
// Math:    y[n,c,p,q] = max_{r,s < size} x[n, c, p*stride + r, q*stride + s],
//          P = (H - size)/stride + 1, Q = (W - size)/stride + 1.
//          Backward: each dy[n,c,p,q] goes to the FIRST maximum of its window in row-major
//          order (smallest r, then s); overlapping windows add up. As np.max / np.argmax, a
//          NaN counts as the maximum (the first NaN wins). The backward is a gather: input
//          pixel (h, w) visits the windows that contain it and adds dy where that window's
//          first maximum is (h, w). No atomics; the additions go in the reference's order
//          (r ascending, then s, i.e. p descending, then q descending), so dx is bitwise the
//          reference's.
//          relu_input (the backward of the ReLU before the pooling folded in: x is that ReLU's
//          output): dx = 0 where !(x > 0) (x <= 0 or NaN; +0, as relu_backward writes), so dx is
//          relu_backward(maxpool_backward(dy, x), x) bit for bit (kernels/relu_math.cuh). A flag
//          of every version: the pixel's x is read once more through the caches (version 1,
//          which reads its windows from global memory anyway) or from the staged rows (version
//          2), so the fold adds no DRAM traffic and saves the ReLU's pass (read dx and x, write
//          dx: 12 bytes per input element in FP32, 6 in BF16).
// Storage: x, y, dy, dx FP32, or BF16 (uint16 bits, T = uint16_t; common/storage.cuh): values are
//          widened on load and compared / added in FP32; y is one of the inputs (exact in BF16);
//          dx is accumulated in FP32 over the overlapping windows and rounded once on store, so
//          the BF16 op is round_bf16(the FP32 op on the widened inputs), bitwise. Version 2 stages
//          the widened values (shared memory holds floats for both storages: one plan).
// Layout:  x, dx (N, C, H, W); y, dy (N, C, P, Q); contiguous; a plane is one (n, c).
// Threads:
// version 1: forward: one thread per output, the window read from global memory (neighbours
//            share inputs through the caches). Backward: one thread per input pixel; for each
//            covering window it recomputes the window's first maximum from global memory
//            (ceil(size/stride)^2 windows of size^2 loads: the simple oracle).
//            The dispatcher's choice for the forward (measured faster than version 2).
// version 2: shared-memory bands. A block owns `planes` consecutive planes and a band of
//            rows (the whole plane when it fits in 24 KiB; otherwise planes = 1 and the
//            largest band that fits). Forward: the block stages the input rows of its band
//            (coalesced, every input loaded once), then 256 threads compute the band's
//            outputs from shared memory. Backward: the block stages the input rows and the dy
//            rows of every window touching its band of input rows, computes each window's
//            first maximum once (into shared memory), then each input pixel gathers from
//            shared memory. Small planes (13x13) are packed several to a block so that a
//            block has >= 256 outputs. Needs size * W floats (+ two rows of Q) to fit in the
//            budget (W <= 2048 for size 3); the dispatcher falls back to version 1 otherwise.
// Memory: forward reads 4 bytes per input and writes 4 per output (2 and 2 in BF16); backward
//         reads x and dy and writes dx once each (version 2), with or without relu_input.
#include "kernels/pool.cuh"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/launch.h"
#include "common/storage.cuh"
#include "kernels/pool_math.cuh"
#include "kernels/relu_math.cuh"

namespace alexnet::kernels {
using namespace pool_math;
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSmemBudgetFloats = 6144;  // 24 KiB per block (several blocks per SM)

// ---- version 1 ------------------------------------------------------------------------
template <class T>
__global__ void maxpool_forward_v1(const T* __restrict__ x, T* __restrict__ y, PoolGeom G) {
  const int64_t n = G.NC * G.P * G.Q;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int q = int(i % G.Q), p = int((i / G.Q) % G.P);
    const int64_t plane = i / (int64_t(G.P) * G.Q);
    const T* win = x + plane * G.H * G.W + int64_t(p) * G.stride * G.W + q * G.stride;
    int arg;
    storage::store(y, i, window_first_max(win, G.W, G.size, arg));
  }
}

template <class T>
__global__ void maxpool_backward_v1(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, PoolGeom G,
                                    bool relu_input) {
  const int64_t n = G.NC * G.H * G.W;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int w = int(i % G.W), h = int((i / G.W) % G.H);
    const int64_t plane = i / (int64_t(G.H) * G.W);
    const T* xp = x + plane * G.H * G.W;
    const T* dyp = dy + plane * G.P * G.Q;
    int plo, phi, qlo, qhi;
    covering(h, G.size, G.stride, G.P, plo, phi);
    covering(w, G.size, G.stride, G.Q, qlo, qhi);
    float acc = 0.0f;
    for (int p = phi; p >= plo; --p)
      for (int q = qhi; q >= qlo; --q) {
        int arg;
        window_first_max(xp + p * G.stride * G.W + q * G.stride, G.W, G.size, arg);
        if (p * G.stride + arg / G.size == h && q * G.stride + arg % G.size == w)
          acc += storage::load(dyp, p * G.Q + q);
      }
    if (relu_input) acc = ReluMath::backward(acc, storage::load(xp, int64_t(h) * G.W + w));
    storage::store(dx, i, acc);
  }
}

// ---- version 2 ------------------------------------------------------------------------
// Block b: plane group g = b / bands (planes g*planes ...), band = b % bands.
// Forward band: output rows [band*TP, +TP), input rows [band*TP*stride, +(TP-1)*stride+size).
template <class T>
__global__ void __launch_bounds__(kThreads)
    maxpool_forward_v2(const T* __restrict__ x, T* __restrict__ y, PoolGeom G, int planes, int TP, int bands) {
  DYNAMIC_SHARED(float, stage);
  const int64_t plane0 = int64_t(blockIdx.x / bands) * planes;
  const int p0 = (blockIdx.x % bands) * TP;
  const int np = min(TP, G.P - p0);
  const int rows = (np - 1) * G.stride + G.size;  // input rows this band reads
  const int rows_max = (TP - 1) * G.stride + G.size;
  const int npl = G.NC - plane0 < planes ? int(G.NC - plane0) : planes;
  const int64_t HW = int64_t(G.H) * G.W;

  for (int e = threadIdx.x; e < npl * rows * G.W; e += kThreads) {
    const int pl = e / (rows * G.W), rc = e % (rows * G.W);
    stage[pl * rows_max * G.W + rc] = storage::load(x, (plane0 + pl) * HW + int64_t(p0) * G.stride * G.W + rc);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < npl * np * G.Q; e += kThreads) {
    const int pl = e / (np * G.Q), pp = (e / G.Q) % np, q = e % G.Q;
    int arg;
    const float m =
        window_first_max(stage + pl * rows_max * G.W + pp * G.stride * G.W + q * G.stride, G.W, G.size, arg);
    storage::store(y, (plane0 + pl) * G.P * G.Q + int64_t(p0 + pp) * G.Q + q, m);
  }
}

// Backward band: input rows [h0, h0 + TH). Windows touching it: [plo, phi]; their input rows
// [plo*stride, phi*stride + size) and dy rows are staged. Shared layout per plane:
//   xs[rows_max][W] | dys[np_max][Q] | args[np_max][Q] (int, plane-flat index of the first max)
template <class T>
__global__ void __launch_bounds__(kThreads) maxpool_backward_v2(const T* __restrict__ dy, const T* __restrict__ x,
                                                                T* __restrict__ dx, PoolGeom G, int planes, int TH,
                                                                int bands, int rows_max, int np_max, bool relu_input) {
  DYNAMIC_SHARED(float, stage);
  const int64_t plane0 = int64_t(blockIdx.x / bands) * planes;
  const int h0 = (blockIdx.x % bands) * TH;
  const int th = min(TH, G.H - h0);
  const int npl = G.NC - plane0 < planes ? int(G.NC - plane0) : planes;
  const int64_t HW = int64_t(G.H) * G.W, PQ = int64_t(G.P) * G.Q;
  const int per_plane = rows_max * G.W + 2 * np_max * G.Q;

  int plo, phi, unused;
  covering(h0, G.size, G.stride, G.P, plo, unused);
  covering(h0 + th - 1, G.size, G.stride, G.P, unused, phi);
  const int np = phi - plo + 1;  // may be <= 0: rows past the last window get zeros
  const int rows = np > 0 ? (np - 1) * G.stride + G.size : 0;
  const int xh0 = plo * G.stride;

  if (np > 0) {
    for (int e = threadIdx.x; e < npl * rows * G.W; e += kThreads) {
      const int pl = e / (rows * G.W), rc = e % (rows * G.W);
      stage[pl * per_plane + rc] = storage::load(x, (plane0 + pl) * HW + int64_t(xh0) * G.W + rc);
    }
    for (int e = threadIdx.x; e < npl * np * G.Q; e += kThreads) {
      const int pl = e / (np * G.Q), rc = e % (np * G.Q);
      stage[pl * per_plane + rows_max * G.W + rc] = storage::load(dy, (plane0 + pl) * PQ + int64_t(plo) * G.Q + rc);
    }
  }
  __syncthreads();
  if (np > 0) {
    for (int e = threadIdx.x; e < npl * np * G.Q; e += kThreads) {
      const int pl = e / (np * G.Q), pp = (e / G.Q) % np, q = e % G.Q;
      int arg;
      window_first_max(stage + pl * per_plane + pp * G.stride * G.W + q * G.stride, G.W, G.size, arg);
      const int h = (plo + pp) * G.stride + arg / G.size, w = q * G.stride + arg % G.size;
      reinterpret_cast<int*>(stage + pl * per_plane + rows_max * G.W + np_max * G.Q)[pp * G.Q + q] = h * G.W + w;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < npl * th * G.W; e += kThreads) {
    const int pl = e / (th * G.W), h = h0 + (e / G.W) % th, w = e % G.W;
    const float* dys = stage + pl * per_plane + rows_max * G.W;
    const int* args = reinterpret_cast<const int*>(dys + np_max * G.Q);
    int lo, hi, qlo, qhi;
    covering(h, G.size, G.stride, G.P, lo, hi);
    covering(w, G.size, G.stride, G.Q, qlo, qhi);
    const int me = h * G.W + w;
    float acc = 0.0f;
    for (int p = hi; p >= lo; --p)
      for (int q = qhi; q >= qlo; --q)
        if (args[(p - plo) * G.Q + q] == me) acc += dys[(p - plo) * G.Q + q];
    // relu_input: x of this pixel from the staged rows. A pixel in no window (lo > hi or qlo > qhi)
    // may lie outside them, but its acc is +0 already, the value the fold would give.
    if (relu_input && lo <= hi && qlo <= qhi)
      acc = ReluMath::backward(acc, stage[pl * per_plane + (h - xh0) * G.W + w]);
    storage::store(dx, (plane0 + pl) * HW + int64_t(h) * G.W + w, acc);
  }
}

// ---- host ---------------------------------------------------------------------------------
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

struct FwdPlan {
  bool ok;
  int planes, TP, bands;
};
FwdPlan plan_forward(const PoolGeom& G) {
  const int64_t rows_full = int64_t(G.P - 1) * G.stride + G.size;
  if (rows_full * G.W <= kSmemBudgetFloats) {
    const int64_t planes = clamp64(cdiv(kThreads, int64_t(G.P) * G.Q), 1, kSmemBudgetFloats / (rows_full * G.W));
    return {true, int(planes), G.P, 1};
  }
  const int64_t tp = (kSmemBudgetFloats / G.W - G.size) / G.stride + 1;  // ((tp-1)*stride + size) * W <= budget
  if (G.size * int64_t(G.W) > kSmemBudgetFloats || tp < 1) return {false, 0, 0, 0};
  return {true, 1, int(tp), int(cdiv(G.P, tp))};
}

struct BwdPlan {
  bool ok;
  int planes, TH, bands, rows_max, np_max;
};
BwdPlan plan_backward(const PoolGeom& G) {
  auto shape = [&](int64_t th, int64_t& rows_max, int64_t& np_max) {
    np_max = th >= G.H ? G.P : std::min<int64_t>(G.P, (th + G.size - 2) / G.stride + 1);
    rows_max = std::min<int64_t>(G.H, (np_max - 1) * G.stride + G.size);
    return rows_max * G.W + 2 * np_max * G.Q;  // floats per plane
  };
  int64_t rows_max, np_max;
  const int64_t whole = shape(G.H, rows_max, np_max);
  if (whole <= kSmemBudgetFloats) {
    const int64_t planes = clamp64(cdiv(kThreads, int64_t(G.H) * G.W), 1, kSmemBudgetFloats / whole);
    return {true, int(planes), G.H, 1, int(rows_max), int(np_max)};
  }
  for (int64_t th = G.H - 1; th >= 1; --th) {
    if (shape(th, rows_max, np_max) <= kSmemBudgetFloats)
      return {true, 1, int(th), int(cdiv(G.H, th)), int(rows_max), int(np_max)};
  }
  return {false, 0, 0, 0, 0, 0};
}

template <class T>
void forward(const T* x, T* y, int64_t N, int64_t C, int64_t H, int64_t W, int size, int stride, int version,
             cudaStream_t stream) {
  const PoolGeom G = geometry("maxpool_forward", N, C, H, W, size, stride);
  const FwdPlan plan = plan_forward(G);
  // Version 0 is version 1: on an H200 (2026-11-26, benchmarks/results/bench_layers.md) it ran
  // at 1.17-1.32x PyTorch's speed at AlexNet's three pooling shapes, version 2 at 0.80-0.97x
  // (the caches already serve the overlapping windows; staging rows costs more than it saves).
  version = pick_version("maxpool_forward", version, kPoolVersions, 1);
  if (version == 2 && !plan.ok)
    throw std::invalid_argument("maxpool_forward: version 2 needs size*W <= " + std::to_string(kSmemBudgetFloats) +
                                " (the band does not fit in shared memory); use version 1");
  if (G.NC == 0) return;
  if (version == 1) {
    LAUNCH(maxpool_forward_v1<T>, dim3(grid_stride_blocks(G.NC * G.P * G.Q, kThreads)), dim3(kThreads), 0, stream, x,
           y, G);
  } else {
    const int rows_max = (plan.TP - 1) * G.stride + G.size;
    const size_t smem = size_t(plan.planes) * rows_max * G.W * sizeof(float);
    const int64_t blocks = cdiv(G.NC, plan.planes) * plan.bands;
    LAUNCH(maxpool_forward_v2<T>, dim3(unsigned(blocks)), dim3(kThreads), smem, stream, x, y, G, plan.planes, plan.TP,
           plan.bands);
  }
}

template <class T>
void backward(const T* dy, const T* x, T* dx, int64_t N, int64_t C, int64_t H, int64_t W, int size, int stride,
              bool relu_input, int version, cudaStream_t stream) {
  const PoolGeom G = geometry("maxpool_backward", N, C, H, W, size, stride);
  const BwdPlan plan = plan_backward(G);
  version = pick_version("maxpool_backward", version, kPoolVersions, plan.ok ? 2 : 1);
  if (version == 2 && !plan.ok)
    throw std::invalid_argument("maxpool_backward: version 2 needs a band of rows to fit in shared memory; use version 1");
  if (G.NC == 0) return;
  if (version == 1) {
    LAUNCH(maxpool_backward_v1<T>, dim3(grid_stride_blocks(G.NC * G.H * G.W, kThreads)), dim3(kThreads), 0, stream,
           dy, x, dx, G, relu_input);
  } else {
    const size_t per_plane = size_t(plan.rows_max) * G.W + 2 * size_t(plan.np_max) * G.Q;
    const size_t smem = size_t(plan.planes) * per_plane * sizeof(float);
    const int64_t blocks = cdiv(G.NC, plan.planes) * plan.bands;
    LAUNCH(maxpool_backward_v2<T>, dim3(unsigned(blocks)), dim3(kThreads), smem, stream, dy, x, dx, G, plan.planes,
           plan.TH, plan.bands, plan.rows_max, plan.np_max, relu_input);
  }
}

}  // namespace

void maxpool_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int size, int stride,
                     int version, cudaStream_t stream) {
  forward(x, y, N, C, H, W, size, stride, version, stream);
}
void maxpool_forward(const uint16_t* x, uint16_t* y, int64_t N, int64_t C, int64_t H, int64_t W, int size, int stride,
                     int version, cudaStream_t stream) {
  forward(x, y, N, C, H, W, size, stride, version, stream);
}
void maxpool_backward(const float* dy, const float* x, float* dx, int64_t N, int64_t C, int64_t H, int64_t W, int size,
                      int stride, bool relu_input, int version, cudaStream_t stream) {
  backward(dy, x, dx, N, C, H, W, size, stride, relu_input, version, stream);
}
void maxpool_backward(const uint16_t* dy, const uint16_t* x, uint16_t* dx, int64_t N, int64_t C, int64_t H, int64_t W,
                      int size, int stride, bool relu_input, int version, cudaStream_t stream) {
  backward(dy, x, dx, N, C, H, W, size, stride, relu_input, version, stream);
}

}  // namespace alexnet::kernels
