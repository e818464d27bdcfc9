// LRN and the max pooling after it in one kernel, forward and backward; the backward also takes
// the ReLU before the LRN (AlexNet: conv1 and conv2 are each followed by ReLU, LRN, max-pool 3/2).
//
// Math:    forward:  lrn_y, scale = lrn_forward(x)            (kernels/lrn_math.cuh)
//                    y_pool       = maxpool_forward(lrn_y)    (kernels/pool_math.cuh)
//          backward: g  = maxpool_backward(dy_pool, lrn_y)    each dy to the first maximum (row-major)
//                                                             of its window; overlaps add, p then q
//                                                             descending (the reference's order)
//                    dx = lrn_backward(g, x, lrn_y, scale)
//                    dx = 0 where x <= 0                      with relu_input (x is the ReLU's output:
//                                                             relu_backward(dx, x) folded in,
//                                                             kernels/relu_math.cuh)
//          Bit for bit the composition of the separate ops at both storage types: the same float
//          operations in the same order, through the same functions (lrn_math.cuh, pool_math.cuh).
//          Storage T (common/storage.cuh): float, or uint16_t = BF16 bits. Loads widen, every
//          stored value is rounded once, and a value the separate ops would store between two
//          ops is rounded to T here too (lrn_y before the pooling, g before the LRN backward;
//          no-ops for float), so BF16 is also the composition of BF16-storage ops.
// Layout:  x, lrn_y, dx (N, C, H, W) T; scale (N, C, H, W) float; y_pool, dy_pool (N, C, P, Q) T;
//          contiguous. P = (H - pool_size)/pool_stride + 1 (no padding).
// Threads:
// version 1: the simple oracle, one thread per input element (grid-stride), everything from
//            global memory. Forward: the element's LRN (its channel window of x), written to
//            lrn_y and scale; the thread at a window's top-left corner also pools that window,
//            recomputing the LRN of its size^2 elements. Backward: for each channel of the
//            element's LRN window, the pooled gradient at the element (the first maximum of
//            each covering window recomputed from lrn_y), then the LRN backward.
// version 2: bands of rows with a channel walk. A block of 256 threads owns one image, a group
//            of kGroup (64) channels and a band of rows over the full width (a band is contiguous
//            in memory per channel). It walks its channels in chunks of kChunk (8); a ring of
//            kChunk + 2*half channel rows in shared memory holds what the LRN window needs, so
//            each channel enters the ring once per block: halo channels are read again only at
//            the group's edges (2*half of 64).
//            Forward: band = pool rows [p0, p0 + TP) over the input rows they read plus the rows
//            no later band computes (the tail; rows between windows when stride > size). Per
//            chunk: load the new channels' x into the ring; sync; LRN of the chunk's channels,
//            written to lrn_y and scale (rows the band owns: rows shared with the next band, the
//            windows' overlap, are computed by both and written by the later one) and kept as
//            stored (T) in shared memory; sync; pool the chunk from shared memory.
//            Backward: band = input rows [h0, h0 + TH). Per chunk: for each new channel, the
//            first maximum (from lrn_y, through the caches, as maxpool_forward version 1 reads)
//            and dy of every window covering the band, into shared memory; sync; per new channel
//            and pixel, g gathered from those windows, then t = g*y/scale and g*scale^-beta into
//            two rings; sync; per own channel and pixel, the window sum of t and dx.
//            Two barriers per chunk; the analysis of why none more is needed is at each kernel.
//            The dispatcher picks version 2 when its shared memory fits in 48 KiB (W up to ~500
//            for 3/2 pooling and LRN size 5), else version 1.
// Memory (FP32 words per LRN element E, pooled element Ep):
//            forward  separate: lrn 1 read + 2 writes, pool 1 read + Ep write  = 4E + Ep
//                     fused:    x read, lrn_y and scale written, Ep written    = 3E + Ep
//            backward separate: pool 2E + Ep, lrn 4 reads + 1 write, relu 2 reads + 1 write
//                                                                              = 10E + Ep
//                     fused:    dy_pool, x, lrn_y, scale read, dx written      = 4E + Ep
//            (plus re-reads that should hit L2: a band's overlap rows, the group edges' halo).
//            At AlexNet's batch 128 (conv1 output 128x96x55x55: E = 37.2 M, 148.7 MB; conv2
//            128x256x27x27: E = 23.9 M, 95.6 MB): the forward does not read lrn_y again
//            (148.7 + 95.6 = 244 MB saved per step), the backward does not write and read g,
//            the LRN's dx and the ReLU's re-read of x (6E: 892 + 573 = 1466 MB saved per step);
//            1.71 GB per step, and 3 launches per layer fewer. Derived, not measured.
#include "kernels/lrn_pool.cuh"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/launch.h"
#include "common/storage.cuh"
#include "kernels/lrn_math.cuh"
#include "kernels/pool_math.cuh"
#include "kernels/relu_math.cuh"

namespace alexnet::kernels {
using lrn_math::LrnParams;
using pool_math::PoolGeom;
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 8;                      // channels per step of the walk (version 2)
constexpr int kGroup = 64;                     // channels per block (version 2), a multiple of kChunk
constexpr int64_t kSmemBudgetFloats = 12288;   // 48 KiB per block
constexpr int64_t kBandPixels = 512;           // the band's size aimed at (pixels per channel)
static_assert(kGroup % kChunk == 0);

// v as the separate ops would store and read it back: rounded to T, widened (exact).
template <class T>
__device__ __forceinline__ float as_stored(float v) {
  return storage::widen(storage::narrow<T>(v));
}

// The LRN of the element at channel c of the pixel whose channel 0 is at xcol (planes HW apart):
// y, and the scale in `sc` (version 1; lrn.cu's version 1 sums the same way).
template <class T>
__device__ __forceinline__ float lrn_at(const T* xcol, int c, const LrnParams& L, float& sc) {
  const int lo = max(c - L.half, 0), hi = min(c + L.half, L.C - 1);
  float s = 0.0f;
  for (int cc = lo; cc <= hi; ++cc) s = __fadd_rn(s, lrn_math::sq(storage::load(xcol, int64_t(cc) * L.HW)));
  sc = lrn_math::scale_of(L, s);
  return lrn_math::normalized(L, storage::load(xcol, int64_t(c) * L.HW), sc);
}

// Pooled gradient at (h, w) of one plane: the dy of every window covering (h, w) whose first
// maximum is (h, w), added with p then q descending (maxpool_backward's order). first(p, q)
// gives a window's plane-flat first-maximum index, dy(p, q) its gradient.
template <class First, class Dy>
__device__ __forceinline__ float gather(int h, int w, const PoolGeom& G, First first, Dy dy) {
  int plo, phi, qlo, qhi;
  pool_math::covering(h, G.size, G.stride, G.P, plo, phi);
  pool_math::covering(w, G.size, G.stride, G.Q, qlo, qhi);
  const int me = h * G.W + w;
  float acc = 0.0f;
  for (int p = phi; p >= plo; --p)
    for (int q = qhi; q >= qlo; --q)
      if (first(p, q) == me) acc = __fadd_rn(acc, dy(p, q));
  return acc;
}

// The plane-flat index of the first maximum of window (p, q) of a plane in memory.
template <class T>
__device__ __forceinline__ int first_max_index(const T* plane, const PoolGeom& G, int p, int q) {
  int arg;
  pool_math::window_first_max(plane + int64_t(p) * G.stride * G.W + q * G.stride, G.W, G.size, arg);
  return (p * G.stride + arg / G.size) * G.W + q * G.stride + arg % G.size;
}

// ---- version 1 ------------------------------------------------------------------------
template <class T>
__global__ void lrn_maxpool_forward_v1(const T* __restrict__ x, T* __restrict__ yp, T* __restrict__ ly,
                                       float* __restrict__ scale, LrnParams L, PoolGeom G) {
  const int64_t HW = L.HW, n = G.NC * HW;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t plane = i / HW;
    const int c = int(plane % L.C), hw = int(i % HW), h = hw / G.W, w = hw % G.W;
    const T* xcol0 = x + (plane - c) * HW;  // channel 0 of this image
    float sc;
    const float y = lrn_at(xcol0 + hw, c, L, sc);
    scale[i] = sc;
    storage::store(ly, i, y);
    if (h % G.stride || w % G.stride || h / G.stride >= G.P || w / G.stride >= G.Q) continue;
    // the window whose top-left corner this is: its LRN outputs recomputed, as stored
    int arg;
    const float m = pool_math::first_max_of(
        [&](int r, int s) {
          float unused;
          return as_stored<T>(lrn_at(xcol0 + (h + r) * G.W + (w + s), c, L, unused));
        },
        G.size, arg);
    storage::store(yp, plane * G.P * G.Q + int64_t(h / G.stride) * G.Q + w / G.stride, m);
  }
}

template <class T>
__global__ void lrn_maxpool_backward_v1(const T* __restrict__ dyp, const T* __restrict__ x, const T* __restrict__ ly,
                                        const float* __restrict__ scale, T* __restrict__ dx, LrnParams L, PoolGeom G,
                                        bool relu_input) {
  const int64_t HW = L.HW, PQ = int64_t(G.P) * G.Q, n = G.NC * HW;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t plane = i / HW;
    const int c = int(plane % L.C), hw = int(i % HW), h = hw / G.W, w = hw % G.W;
    auto g_at = [&](int cc) {  // the pooled gradient at (cc, h, w), as stored
      const int64_t pl = plane - c + cc;
      const T* lyp = ly + pl * HW;
      const T* dyp_p = dyp + pl * PQ;
      return as_stored<T>(gather(
          h, w, G, [&](int p, int q) { return first_max_index(lyp, G, p, q); },
          [&](int p, int q) { return storage::load(dyp_p, int64_t(p) * G.Q + q); }));
    };
    const int lo = max(c - L.half, 0), hi = min(c + L.half, L.C - 1);
    float cross = 0.0f;
    for (int cc = lo; cc <= hi; ++cc) {
      const int64_t j = i + int64_t(cc - c) * HW;
      cross = __fadd_rn(cross, lrn_math::cross_term(g_at(cc), storage::load(ly, j), scale[j]));
    }
    const float xv = storage::load(x, i);
    float d = lrn_math::grad(L, lrn_math::direct_term(L, g_at(c), scale[i]), xv, cross);
    if (relu_input) d = ReluMath::backward(d, xv);
    storage::store(dx, i, d);
  }
}

// ---- version 2 ------------------------------------------------------------------------
// Block b = (image n, channel group grp, band): b = (n * groups + grp) * bands + band, so that
// consecutive blocks are neighbouring bands (their shared rows meet in L2).
struct Blocking {
  int groups, bands;
  __device__ void split(int64_t b, int64_t& n, int& c0, int& c1, int& band, int C) const {
    band = int(b % bands);
    const int grp = int((b / bands) % groups);
    n = b / (int64_t(bands) * groups);
    c0 = grp * kGroup;
    c1 = min(C, c0 + kGroup);
  }
};

// Forward band `band` of TP pool rows: pool rows [p0, p0 + np), input rows [r0, r1) computed,
// rows [r0, own_end) written. Host and device use the same function.
struct FwdBand {
  int p0, np, r0, r1, own_end;
};
__host__ __device__ inline FwdBand forward_band(const PoolGeom& G, int TP, int bands, int band) {
  FwdBand B;
  B.p0 = band * TP;
  B.np = G.P - B.p0 < TP ? G.P - B.p0 : TP;
  B.r0 = B.p0 * G.stride;
  B.own_end = band == bands - 1 ? G.H : (B.p0 + TP) * G.stride;
  const int win_end = (B.p0 + B.np - 1) * G.stride + G.size;
  B.r1 = B.own_end > win_end ? B.own_end : win_end;
  return B;
}

// Ring slot of channel cc: channels enter in increasing order from `first` (<= every channel held).
__device__ __forceinline__ int ring_slot(int cc, int first, int rows) { return (cc - first) % rows; }

// Shared memory: ring[rows][pix_max] (x of channels [c0 - half, c0 + kChunk + half)),
//                ys[kChunk][pix_max] (the chunk's lrn_y as stored).
// Barriers: the loads of chunk k+1 overwrite ring slots last read by the LRN step of chunk k,
// and the LRN step of chunk k+1 overwrites ys, last read by the pooling of chunk k; each of
// those reads is before a barrier of chunk k (resp. the first barrier of chunk k+1) that every
// thread passes before the overwrite.
template <class T>
__global__ void __launch_bounds__(kThreads)
    lrn_maxpool_forward_v2(const T* __restrict__ x, T* __restrict__ yp, T* __restrict__ ly,
                           float* __restrict__ scale, LrnParams L, PoolGeom G, Blocking K, int TP, int pix_max) {
  DYNAMIC_SHARED(float, smem);
  const int rows = kChunk + 2 * L.half;
  float* ring = smem;
  float* ys = smem + rows * pix_max;
  int64_t n;
  int cg0, cg1, band;
  K.split(blockIdx.x, n, cg0, cg1, band, L.C);
  const FwdBand B = forward_band(G, TP, K.bands, band);
  const int pix = (B.r1 - B.r0) * G.W;
  const int64_t HW = L.HW;
  const int64_t img = n * L.C * HW + int64_t(B.r0) * G.W;  // channel 0, row r0 of image n
  const int first = max(cg0 - L.half, 0);
  int have = first;  // channels [first, have) have entered the ring

  for (int c0 = cg0; c0 < cg1; c0 += kChunk) {
    const int ch = min(kChunk, cg1 - c0);
    const int need = min(c0 + ch + L.half, L.C);
    for (int e = threadIdx.x; e < (need - have) * pix; e += kThreads) {
      const int cc = have + e / pix, px = e % pix;
      ring[ring_slot(cc, first, rows) * pix_max + px] = storage::load(x, img + int64_t(cc) * HW + px);
    }
    have = need;
    __syncthreads();
    for (int e = threadIdx.x; e < ch * pix; e += kThreads) {
      const int c = c0 + e / pix, px = e % pix;
      const int lo = max(c - L.half, 0), hi = min(c + L.half, L.C - 1);
      float s = 0.0f;
      for (int cc = lo, sl = ring_slot(lo, first, rows); cc <= hi; ++cc, sl = sl + 1 == rows ? 0 : sl + 1)
        s = __fadd_rn(s, lrn_math::sq(ring[sl * pix_max + px]));
      const float sc = lrn_math::scale_of(L, s);
      const float y = lrn_math::normalized(L, ring[ring_slot(c, first, rows) * pix_max + px], sc);
      if (B.r0 + px / G.W < B.own_end) {
        const int64_t i = img + int64_t(c) * HW + px;
        scale[i] = sc;
        storage::store(ly, i, y);
      }
      ys[(c - c0) * pix_max + px] = as_stored<T>(y);
    }
    __syncthreads();
    const int per = B.np * G.Q;
    for (int e = threadIdx.x; e < ch * per; e += kThreads) {
      const int co = e / per, pp = (e % per) / G.Q, q = e % G.Q;
      int arg;
      const float m = pool_math::window_first_max(ys + co * pix_max + pp * G.stride * G.W + q * G.stride, G.W,
                                                  G.size, arg);
      storage::store(yp, (n * L.C + c0 + co) * G.P * G.Q + int64_t(B.p0 + pp) * G.Q + q, m);
    }
  }
}

// Shared memory: ring_t[rows][pix_max] (t = g*y/scale), ring_d[rows][pix_max] (g*scale^-beta),
//                wdy[rows][win_max], warg[rows][win_max] (int): per ring slot, each covering
//                window's dy and plane-flat first-maximum index (win_max = windows * Q).
// Barriers: the window step of chunk k+1 overwrites wdy/warg, last read by the gather of chunk k
// (before chunk k's second barrier); the gather of chunk k+1 overwrites ring slots of channels
// below c0(k+1) - half, read by the dx step of chunk k, which every thread finishes before the
// first barrier of chunk k+1.
template <class T>
__global__ void __launch_bounds__(kThreads)
    lrn_maxpool_backward_v2(const T* __restrict__ dyp, const T* __restrict__ x, const T* __restrict__ ly,
                            const float* __restrict__ scale, T* __restrict__ dx, LrnParams L, PoolGeom G, Blocking K,
                            int TH, int win_max, bool relu_input) {
  DYNAMIC_SHARED(float, smem);
  const int rows = kChunk + 2 * L.half;
  const int pix_max = TH * G.W;
  float* ring_t = smem;
  float* ring_d = ring_t + rows * pix_max;
  float* wdy = ring_d + rows * pix_max;
  int* warg = reinterpret_cast<int*>(wdy + rows * win_max);
  int64_t n;
  int cg0, cg1, band;
  K.split(blockIdx.x, n, cg0, cg1, band, L.C);
  const int h0 = band * TH, th = min(TH, G.H - h0), pix = th * G.W;
  int plo, phi, unused;
  pool_math::covering(h0, G.size, G.stride, G.P, plo, unused);
  pool_math::covering(h0 + th - 1, G.size, G.stride, G.P, unused, phi);
  const int nwin = phi >= plo ? (phi - plo + 1) * G.Q : 0;  // windows covering the band (row-major)
  const int64_t HW = L.HW, PQ = int64_t(G.P) * G.Q;
  const int64_t img = n * L.C;  // plane of channel 0
  const int first = max(cg0 - L.half, 0);
  int have = first;

  for (int c0 = cg0; c0 < cg1; c0 += kChunk) {
    const int ch = min(kChunk, cg1 - c0);
    const int need = min(c0 + ch + L.half, L.C);
    for (int e = threadIdx.x; e < (need - have) * nwin; e += kThreads) {
      const int cc = have + e / nwin, k = e % nwin;
      const int p = plo + k / G.Q, q = k % G.Q, sl = ring_slot(cc, first, rows);
      warg[sl * win_max + k] = first_max_index(ly + (img + cc) * HW, G, p, q);
      wdy[sl * win_max + k] = storage::load(dyp, (img + cc) * PQ + int64_t(p) * G.Q + q);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < (need - have) * pix; e += kThreads) {
      const int cc = have + e / pix, px = e % pix, sl = ring_slot(cc, first, rows);
      const int h = h0 + px / G.W, w = px % G.W;
      const int* args = warg + sl * win_max;
      const float* dys = wdy + sl * win_max;
      const float g = as_stored<T>(gather(
          h, w, G, [&](int p, int q) { return args[(p - plo) * G.Q + q]; },
          [&](int p, int q) { return dys[(p - plo) * G.Q + q]; }));
      const int64_t j = (img + cc) * HW + int64_t(h0) * G.W + px;
      const float sc = scale[j];
      ring_t[sl * pix_max + px] = lrn_math::cross_term(g, storage::load(ly, j), sc);
      ring_d[sl * pix_max + px] = lrn_math::direct_term(L, g, sc);
    }
    have = need;
    __syncthreads();
    for (int e = threadIdx.x; e < ch * pix; e += kThreads) {
      const int c = c0 + e / pix, px = e % pix;
      const int lo = max(c - L.half, 0), hi = min(c + L.half, L.C - 1);
      float cross = 0.0f;
      for (int cc = lo, sl = ring_slot(lo, first, rows); cc <= hi; ++cc, sl = sl + 1 == rows ? 0 : sl + 1)
        cross = __fadd_rn(cross, ring_t[sl * pix_max + px]);
      const int64_t i = (img + c) * HW + int64_t(h0) * G.W + px;
      const float xv = storage::load(x, i);
      float d = lrn_math::grad(L, ring_d[ring_slot(c, first, rows) * pix_max + px], xv, cross);
      if (relu_input) d = ReluMath::backward(d, xv);
      storage::store(dx, i, d);
    }
  }
}

// ---- host ---------------------------------------------------------------------------------
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct FwdPlan {
  bool ok;
  int TP, bands, pix_max;
  size_t smem;
};
// The most pool rows per band whose input rows stay near kBandPixels and whose shared memory fits.
FwdPlan plan_forward(const LrnParams& L, const PoolGeom& G) {
  const int64_t rows = kChunk + 2 * L.half;
  int tp = int(std::min<int64_t>(G.P, std::max<int64_t>(1, (kBandPixels / G.W - G.size) / G.stride + 1)));
  for (; tp >= 1; --tp) {
    const int bands = int(cdiv(G.P, tp));
    int rows_max = 0;
    for (int b = 0; b < bands; ++b) {
      const FwdBand B = forward_band(G, tp, bands, b);
      rows_max = std::max(rows_max, B.r1 - B.r0);
    }
    const int64_t pix_max = int64_t(rows_max) * G.W;
    const int64_t floats = (rows + kChunk) * pix_max;
    if (floats <= kSmemBudgetFloats) return {true, tp, bands, int(pix_max), size_t(floats) * sizeof(float)};
  }
  return {false, 0, 0, 0, 0};
}

struct BwdPlan {
  bool ok;
  int TH, bands, win_max;
  size_t smem;
};
// The most input rows per band (a multiple of the stride when below H) near kBandPixels that fit.
BwdPlan plan_backward(const LrnParams& L, const PoolGeom& G) {
  const int64_t rows = kChunk + 2 * L.half;
  int th = int(std::min<int64_t>(G.H, std::max<int64_t>(1, kBandPixels / G.W)));
  if (th < G.H && th >= G.stride) th -= th % G.stride;
  for (; th >= 1; --th) {
    const int64_t win_max = std::min<int64_t>(G.P, (th + G.size - 2) / G.stride + 1) * G.Q;
    const int64_t floats = 2 * rows * th * int64_t(G.W) + 2 * rows * win_max;
    if (floats <= kSmemBudgetFloats) return {true, th, int(cdiv(G.H, th)), int(win_max), size_t(floats) * 4};
  }
  return {false, 0, 0, 0, 0};
}

int pick(const char* op, int version, bool v2_fits) {
  version = pick_version(op, version, kLrnPoolVersions, v2_fits ? 2 : 1);
  if (version == 2 && !v2_fits)
    throw std::invalid_argument(std::string(op) + ": version 2 needs a band of rows and the LRN window's channels "
                                "to fit in 48 KiB of shared memory (W or size too large); use version 1");
  return version;
}

}  // namespace

template <class T>
void lrn_maxpool_forward(const T* x, T* y_pool, T* lrn_y, float* scale, int64_t N, int64_t C, int64_t H, int64_t W,
                         int size, double a, double beta, double k, int pool_size, int pool_stride, int version,
                         cudaStream_t stream) {
  const char* op = "lrn_maxpool_forward";
  const LrnParams L = lrn_math::params(op, C, H * W, size, a, beta, k);
  const PoolGeom G = pool_math::geometry(op, N, C, H, W, pool_size, pool_stride);
  const FwdPlan plan = plan_forward(L, G);
  version = pick(op, version, plan.ok);
  if (G.NC == 0) return;
  if (version == 1) {
    LAUNCH(lrn_maxpool_forward_v1<T>, dim3(grid_stride_blocks(G.NC * H * W, kThreads)), dim3(kThreads), 0, stream, x,
           y_pool, lrn_y, scale, L, G);
  } else {
    const Blocking K{int(cdiv(C, kGroup)), plan.bands};
    LAUNCH(lrn_maxpool_forward_v2<T>, dim3(unsigned(N * K.groups * K.bands)), dim3(kThreads), plan.smem, stream, x,
           y_pool, lrn_y, scale, L, G, K, plan.TP, plan.pix_max);
  }
}

template <class T>
void lrn_maxpool_backward(const T* dy_pool, const T* x, const T* lrn_y, const float* scale, T* dx, int64_t N,
                          int64_t C, int64_t H, int64_t W, int size, double a, double beta, int pool_size,
                          int pool_stride, bool relu_input, int version, cudaStream_t stream) {
  const char* op = "lrn_maxpool_backward";
  const LrnParams L = lrn_math::params(op, C, H * W, size, a, beta, 0.0);
  const PoolGeom G = pool_math::geometry(op, N, C, H, W, pool_size, pool_stride);
  const BwdPlan plan = plan_backward(L, G);
  version = pick(op, version, plan.ok);
  if (G.NC == 0) return;
  if (version == 1) {
    LAUNCH(lrn_maxpool_backward_v1<T>, dim3(grid_stride_blocks(G.NC * H * W, kThreads)), dim3(kThreads), 0, stream,
           dy_pool, x, lrn_y, scale, dx, L, G, relu_input);
  } else {
    const Blocking K{int(cdiv(C, kGroup)), plan.bands};
    LAUNCH(lrn_maxpool_backward_v2<T>, dim3(unsigned(N * K.groups * K.bands)), dim3(kThreads), plan.smem, stream,
           dy_pool, x, lrn_y, scale, dx, L, G, K, plan.TH, plan.win_max, relu_input);
  }
}

template void lrn_maxpool_forward<float>(const float*, float*, float*, float*, int64_t, int64_t, int64_t, int64_t, int,
                                         double, double, double, int, int, int, cudaStream_t);
template void lrn_maxpool_forward<uint16_t>(const uint16_t*, uint16_t*, uint16_t*, float*, int64_t, int64_t, int64_t,
                                            int64_t, int, double, double, double, int, int, int, cudaStream_t);
template void lrn_maxpool_backward<float>(const float*, const float*, const float*, const float*, float*, int64_t,
                                          int64_t, int64_t, int64_t, int, double, double, int, int, bool, int,
                                          cudaStream_t);
template void lrn_maxpool_backward<uint16_t>(const uint16_t*, const uint16_t*, const uint16_t*, const float*,
                                             uint16_t*, int64_t, int64_t, int64_t, int64_t, int, double, double, int,
                                             int, bool, int, cudaStream_t);

}  // namespace alexnet::kernels
