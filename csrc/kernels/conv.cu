// Grouped 2-D convolution (cross-correlation), forward and backward (paper section 3.5).
//
// Math (xp = x zero-padded by `pad`, Cg = C/groups, Kg = K/groups, g(k) = k / Kg):
//   forward  y[n,k,p,q]  = b[k] + sum_{c<Cg,r<R,s<S} w[k,c,r,s] * xp[n, g*Cg+c, p*st+r, q*st+s]
//            and with `relu` (the fused epilogue) y = max(0, that), applied to the FP32 value
//            stored otherwise (tile::epilogue), so it equals relu_forward of the unfused y bit for bit
//   data     dx[n,c,h,w] = sum_{k in g(c), r, s : h+pad-r = p*st, w+pad-s = q*st, p<P, q<Q}
//                          dy[n,k,p,q] * w[k, c-g*Cg, r, s]
//            and with `relu_x` (relu_input: x is a ReLU's output) dx = that where x[n,c,h,w] > 0,
//            else +0, in the store (relu_fold, kernels/relu_math.cuh: relu_backward's select on
//            the same FP32 value, so bit for bit relu_backward of the unfused dx; every version)
//   filter   dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * xp[n, g*Cg+c, p*st+r, q*st+s]
//   bias     db[k]       = sum_{n,p,q} dy[n,k,p,q]
// All FP32 with FFMA. Layout: NCHW tensors, weights (K, Cg, R, S) as PyTorch; all C-contiguous.
//
// version 1 (every direction): one thread per output element, direct loops over the terms
//   in the order the formula reads. Obviously correct, slow; the oracle for version 2.
// version 2: implicit GEMM on the tile engine of gemm_tile.cuh (block tile BM x BN x BK with
//   double-buffered shared tiles and a TMxTN register micro-tile per thread; BM picked from
//   {128, 64, 32, 8} by the GEMM's M so small channel counts waste little). One GEMM per
//   group (blockIdx.z); the NCHW operands are gathered into the shared tiles on the fly:
//   forward   M = Kg (k), N = N*P*Q (n,p,q), Kdim = Cg*R*S (c,r,s).
//             A = w viewed as (Kg x CRS) row-major: dense, float4 loads when CRS % 4 == 0.
//             B = im2col(x): each thread keeps its column's image pointer and window origin
//             and walks (c,r,s) with a mixed-radix counter (no division in the loop).
//   data      "phase" decomposition of the transposed convolution: dx positions are split
//             by (h mod st, w mod st) (blockIdx.z = group * st*st + phase); within a phase
//             only the taps r = r0 + i*st, s = s0 + j*st contribute, and each to one dy row
//             p = h' + dp - i. So the GEMM is M = Cg, N = N*ceil((H-ph)/st)*ceil((W-pw)/st),
//             Kdim = Kg*Rp*Sp with no zero taps (for stride 1 there is one phase and it is
//             the usual "dy conv rotated w").
//             A = w[k, c, r0+i*st, s0+j*st] (gathered), B = dy[n, k, h'+dp-i, w'+dq-j].
//   filter    M = Kg (k), N = Cg*R*S (c,r,s), Kdim = N*P*Q (n,p,q): the long reduction is
//             split across blocks (blockIdx.z = split * groups + g); each split writes a full
//             partial dw to the workspace and splitk_reduce (gemm.cu) sums them in split
//             order: deterministic, no atomics. dy is gathered with consecutive threads on
//             consecutive (p,q) (k-fast mapping: coalesced along q); x with consecutive threads
//             on consecutive (c,r,s) (k-slow mapping: coalesced along s, also at stride 4,
//             and a thread's elements share one column, which keeps the gather state small).
//   bias      one block of 256 threads per channel, a strided sum then a shared-memory tree
//             (both versions read dy as float or as BF16 bits, widened exactly; FP32 sums).
// forward on tensor cores (conv2d_forward_tc, TF32 or BF16), version 1: the implicit GEMM
//   of version 2's forward on tc_tile.cuh (mma.sync, 64 x 64 x 32 block tiles, 128 threads);
//   A = w dense, B = im2col(x) gathered with a division per element (no mixed-radix counter
//   yet). TF32 rounds x and w with cvt.rna as it stages them; BF16 reads bf16 x, and w as BF16
//   bits or as the FP32 master weights rounded to nearest even as they are staged.
//   Accumulation FP32; y FP32, or BF16 at BF16 (the FP32 epilogue value, bias and ReLU
//   included, rounded once to nearest even on store: storage::store); `relu` fused as in
//   versions 1 and 2. The backward directions on tensor cores: conv_tc.cu.
// Threads: v1 256 per block over the output; v2 grid (ceil(N/BN), ceil(M/BM), z), the
//   config's THREADS per block.
// Constraints: x, y and w each hold fewer than 2^31 elements (32-bit offsets; checked).
#include "kernels/conv.cuh"
#include "kernels/conv_wgrad.cuh"
#include "kernels/gemm_tile.cuh"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/launch.h"
#include "common/storage.cuh"
#include "kernels/tc_tile.cuh"
#include "kernels/conv_geo.cuh"
#include "kernels/relu_math.cuh"

namespace alexnet::kernels {
namespace {

using namespace tile;

// ============================ version 1: direct loops ======================================
__global__ void conv_fwd_v1(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                            float* __restrict__ y, Geo d, bool relu) {
  const int64_t total = int64_t(d.N) * d.K * d.PQ;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int q = int(idx % d.Q), p = int(idx / d.Q % d.P), k = int(idx / d.PQ % d.K);
    const int64_t n = idx / (int64_t(d.PQ) * d.K);
    const int g = k / d.Kg;
    float acc = 0.0f;
    for (int c = 0; c < d.Cg; ++c) {
      const float* xc = x + (n * d.C + g * d.Cg + c) * d.HW;
      const float* wc = w + (int64_t(k) * d.Cg + c) * d.RS;
      for (int r = 0; r < d.R; ++r) {
        const int h = p * d.st - d.pad + r;
        if (h < 0 || h >= d.H) continue;
        for (int s = 0; s < d.S; ++s) {
          const int ww = q * d.st - d.pad + s;
          if (ww >= 0 && ww < d.W) acc = fmaf(wc[r * d.S + s], xc[h * d.W + ww], acc);
        }
      }
    }
    y[idx] = epilogue(acc + (b ? b[k] : 0.0f), relu);
  }
}

__global__ void conv_bwd_data_v1(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                                 Geo d, const float* __restrict__ relu_x) {
  const int64_t total = int64_t(d.N) * d.C * d.HW;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int ww = int(idx % d.W), h = int(idx / d.W % d.H), c = int(idx / d.HW % d.C);
    const int64_t n = idx / (int64_t(d.HW) * d.C);
    const int g = c / d.Cg, cl = c - g * d.Cg;
    float acc = 0.0f;
    for (int k = g * d.Kg; k < (g + 1) * d.Kg; ++k) {
      for (int r = 0; r < d.R; ++r) {
        const int hp = h + d.pad - r;
        if (hp < 0 || hp % d.st != 0 || hp / d.st >= d.P) continue;
        const int p = hp / d.st;
        for (int s = 0; s < d.S; ++s) {
          const int wp = ww + d.pad - s;
          if (wp < 0 || wp % d.st != 0 || wp / d.st >= d.Q) continue;
          const int q = wp / d.st;
          acc = fmaf(dy[((n * d.K + k) * d.P + p) * d.Q + q], w[((int64_t(k) * d.Cg + cl) * d.R + r) * d.S + s], acc);
        }
      }
    }
    dx[idx] = relu_fold(acc, relu_x, idx);
  }
}

__global__ void conv_bwd_filter_v1(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ dw,
                                   Geo d) {
  const int64_t total = int64_t(d.K) * d.CRS;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int s = int(idx % d.S), r = int(idx / d.S % d.R), c = int(idx / d.RS % d.Cg), k = int(idx / d.CRS);
    const int g = k / d.Kg;
    float acc = 0.0f;
    for (int64_t n = 0; n < d.N; ++n) {
      const float* dyn = dy + (n * d.K + k) * d.PQ;
      const float* xn = x + (n * d.C + g * d.Cg + c) * d.HW;
      for (int p = 0; p < d.P; ++p) {
        const int h = p * d.st - d.pad + r;
        if (h < 0 || h >= d.H) continue;
        for (int q = 0; q < d.Q; ++q) {
          const int ww = q * d.st - d.pad + s;
          if (ww >= 0 && ww < d.W) acc = fmaf(dyn[p * d.Q + q], xn[h * d.W + ww], acc);
        }
      }
    }
    dw[idx] = acc;
  }
}

// dy is float or uint16_t (BF16 bits: the stored values, widened exactly); the sums are FP32.
template <class T>
__global__ void conv_bias_v1(const T* __restrict__ dy, float* __restrict__ db, int N, int K, int PQ) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  float acc = 0.0f;
  for (int64_t n = 0; n < N; ++n)
    for (int i = 0; i < PQ; ++i) acc += storage::load(dy, (n * K + k) * PQ + i);
  db[k] = acc;
}

// ============================ version 2: implicit GEMM =====================================

// ---- forward: B = im2col(x), element ((c,r,s), (n,p,q)) --------------------------------------
// (Sources follow GatherTile's interface in gemm_tile.cuh; offsets are 32-bit, -1 = outside.)
struct Im2colSrc {
  const float* __restrict__ x;
  Geo d;
  int g, n0;
  struct Col {
    int off = -1, h0 = 0, w0 = 0;  // image + group offset, window origin (p*st - pad, q*st - pad)
  };
  __device__ __forceinline__ Col col(int mn) const {
    Col c;
    const int n = n0 + mn;
    if (n < d.NPQ) {
      const int img = n / d.PQ, pq = n - img * d.PQ, p = pq / d.Q, q = pq - p * d.Q;
      c.off = img * d.CHW + g * d.Cg * d.HW;
      c.h0 = p * d.st - d.pad;
      c.w0 = q * d.st - d.pad;
    }
    return c;
  }
  __device__ __forceinline__ Digits kpos(int k) const { return split3(k, d.R, d.S); }
  __device__ __forceinline__ void advance(Digits& k, const Digits& step) const { advance3(k, step, d.R, d.S); }
  __device__ __forceinline__ float fetch(const Col& c, const Digits& k) const {
    const int h = c.h0 + k.mid, w = c.w0 + k.lo;
    return c.off >= 0 && k.hi < d.Cg && unsigned(h) < unsigned(d.H) && unsigned(w) < unsigned(d.W)
               ? __ldg(x + c.off + k.hi * d.HW + h * d.W + w)
               : 0.0f;
  }
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    conv_fwd_v2(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                float* __restrict__ y, Geo d, bool vec_w, bool relu) {
  __shared__ __align__(16) float As[2 * Cfg::A_TILE];
  __shared__ __align__(16) float Bs[2 * Cfg::B_TILE];
  const int t = threadIdx.x, tx = t % Cfg::TX, ty = t / Cfg::TX;
  const int g = blockIdx.z, m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;

  const Im2colSrc src{x, d, g, n0};
  DenseTile<Cfg, Cfg::BM, true> la(w + int64_t(g) * d.Kg * d.CRS, d.CRS, d.Kg, d.CRS, m0, 0, vec_w);
  GatherTile<Cfg, Cfg::BN, false, Im2colSrc> lb(src, 0);
  float acc[Cfg::TM][Cfg::TN] = {};
  mainloop<Cfg>(la, lb, (d.CRS + Cfg::BK - 1) / Cfg::BK, As, Bs, tx, ty, acc);

#pragma unroll
  for (int j = 0; j < Cfg::TN; ++j) {
    const int n = n0 + col_of<Cfg>(tx, j);
    if (n >= d.NPQ) continue;
    const int img = n / d.PQ, pq = n - img * d.PQ;
    float* yc = y + int64_t(img) * d.K * d.PQ + pq;
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i) {
      const int m = m0 + row_of<Cfg>(ty, i);
      if (m < d.Kg) {
        const int k = g * d.Kg + m;
        yc[int64_t(k) * d.PQ] = epilogue(acc[i][j] + (b ? b[k] : 0.0f), relu);
      }
    }
  }
}

// ---- backward data, one stride phase (Phase: conv_geo.cuh) ---------------------------------
// A: element (c, (k,i,j)) = w[g*Kg + k, c, r0 + i*st, s0 + j*st]
struct RotWeightSrc {
  const float* __restrict__ w;
  Geo d;
  Phase ph;
  int g, m0;
  struct Col {
    int off = -1;  // w[g*Kg, c, r0, s0]
  };
  __device__ __forceinline__ Col col(int mn) const {
    Col c;
    const int ch = m0 + mn;
    if (ch < d.Cg) c.off = (g * d.Kg * d.Cg + ch) * d.RS + ph.r0 * d.S + ph.s0;
    return c;
  }
  __device__ __forceinline__ Digits kpos(int k) const { return split3(k, ph.Rp, ph.Sp); }
  __device__ __forceinline__ void advance(Digits& k, const Digits& step) const { advance3(k, step, ph.Rp, ph.Sp); }
  __device__ __forceinline__ float fetch(const Col& c, const Digits& k) const {
    return c.off >= 0 && k.hi < d.Kg ? __ldg(w + c.off + k.hi * d.CRS + (k.mid * d.S + k.lo) * d.st) : 0.0f;
  }
};

// B: element ((k,i,j), (n,h',w')) = dy[n, g*Kg + k, h' + dp - i, w' + dq - j]
struct DyGatherSrc {
  const float* __restrict__ dy;
  Geo d;
  Phase ph;
  int g, n0;
  struct Col {
    int off = -1, p0 = 0, q0 = 0;  // dy[n, g*Kg] and the row/column reached with i = j = 0
  };
  __device__ __forceinline__ Col col(int mn) const {
    Col c;
    const int n = n0 + mn;
    if (n < ph.ncols) {
      const int per = ph.Hph * ph.Wph;
      const int img = n / per, rem = n - img * per, hq = rem / ph.Wph, wq = rem - hq * ph.Wph;
      c.off = img * d.KPQ + g * d.Kg * d.PQ;
      c.p0 = hq + ph.dp;
      c.q0 = wq + ph.dq;
    }
    return c;
  }
  __device__ __forceinline__ Digits kpos(int k) const { return split3(k, ph.Rp, ph.Sp); }
  __device__ __forceinline__ void advance(Digits& k, const Digits& step) const { advance3(k, step, ph.Rp, ph.Sp); }
  __device__ __forceinline__ float fetch(const Col& c, const Digits& k) const {
    const int p = c.p0 - k.mid, q = c.q0 - k.lo;
    return c.off >= 0 && k.hi < d.Kg && unsigned(p) < unsigned(d.P) && unsigned(q) < unsigned(d.Q)
               ? __ldg(dy + c.off + k.hi * d.PQ + p * d.Q + q)
               : 0.0f;
  }
};

// The backward kernels with T64 (128 threads, 8x8 per thread, 8 gathered elements per thread
// and tile) spill under a 128-register cap on sm_80, so they ask for 3 blocks per SM (170).
template <class Cfg>
constexpr int relaxed_min_blocks() {
  return Cfg::BM == 64 ? 3 : Cfg::MIN_BLOCKS;
}

// RELU_IN: relu_input, dx folded with relu_x (relu_math.cuh); false: relu_x is not read (null), and
// the kernel is the one without the fold, register for register (a runtime test here cost the T8
// config a spill on sm_90).
template <class Cfg, bool RELU_IN>
__global__ void __launch_bounds__(Cfg::THREADS, relaxed_min_blocks<Cfg>())
    conv_bwd_data_v2(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, Geo d,
                     const float* __restrict__ relu_x) {
  __shared__ __align__(16) float As[2 * Cfg::A_TILE];
  __shared__ __align__(16) float Bs[2 * Cfg::B_TILE];
  const int t = threadIdx.x, tx = t % Cfg::TX, ty = t / Cfg::TX;
  const int phases = d.st * d.st;
  const int g = blockIdx.z / phases, m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
  const Phase ph(d, int(blockIdx.z) - g * phases);
  if (n0 >= ph.ncols) return;  // block-uniform: this phase has fewer columns than the grid

  const RotWeightSrc asrc{w, d, ph, g, m0};
  const DyGatherSrc bsrc{dy, d, ph, g, n0};
  GatherTile<Cfg, Cfg::BM, false, RotWeightSrc> la(asrc, 0);
  GatherTile<Cfg, Cfg::BN, false, DyGatherSrc> lb(bsrc, 0);
  float acc[Cfg::TM][Cfg::TN] = {};
  mainloop<Cfg>(la, lb, (ph.kdim + Cfg::BK - 1) / Cfg::BK, As, Bs, tx, ty, acc);

  const int per = ph.Hph * ph.Wph;
#pragma unroll
  for (int j = 0; j < Cfg::TN; ++j) {
    const int n = n0 + col_of<Cfg>(tx, j);
    if (n >= ph.ncols) continue;
    const int img = n / per, rem = n - img * per, hq = rem / ph.Wph, wq = rem - hq * ph.Wph;
    const int64_t o = (int64_t(img) * d.C + g * d.Cg) * d.HW + (ph.ph + hq * d.st) * d.W + ph.pw + wq * d.st;
    float* dxc = dx + o;
    // relu_input: the column's gates (x at its dx elements) loaded together, then the select; without
    // it every gate is 1 and acc is stored as it is.
    float gate[Cfg::TM];
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i) {
      const int c = m0 + row_of<Cfg>(ty, i);
      gate[i] = relu_gate(RELU_IN ? relu_x : nullptr, o + int64_t(c) * d.HW, c < d.Cg);
    }
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i) {
      const int c = m0 + row_of<Cfg>(ty, i);
      if (c < d.Cg) dxc[int64_t(c) * d.HW] = ReluMath::backward(acc[i][j], gate[i]);
    }
  }
}

// ---- backward filter --------------------------------------------------------------------------
// A: element (k, (n,p,q)) = dy[n, g*Kg + k, p, q]
struct DyRowsSrc {
  const float* __restrict__ dy;
  Geo d;
  int g, m0;
  struct Col {
    int off = -1;  // dy[0, g*Kg + k]
  };
  __device__ __forceinline__ Col col(int mn) const {
    Col c;
    const int km = m0 + mn;
    if (km < d.Kg) c.off = (g * d.Kg + km) * d.PQ;
    return c;
  }
  __device__ __forceinline__ Digits kpos(int k) const { return split3(k, d.P, d.Q); }
  __device__ __forceinline__ void advance(Digits& k, const Digits& step) const { advance3(k, step, d.P, d.Q); }
  __device__ __forceinline__ float fetch(const Col& c, const Digits& k) const {
    return c.off >= 0 && k.hi < d.N ? __ldg(dy + c.off + k.hi * d.KPQ + k.mid * d.Q + k.lo) : 0.0f;
  }
};

// B: element ((n,p,q), (c,r,s)) = xp[n, g*Cg + c, p*st + r, q*st + s]
struct XColsSrc {
  const float* __restrict__ x;
  Geo d;
  int g, n0;
  struct Col {
    int off = -1, rr = 0, ss = 0;  // x[0, g*Cg + c], r - pad, s - pad
  };
  __device__ __forceinline__ Col col(int mn) const {
    Col c;
    const int n = n0 + mn;
    if (n < d.CRS) {
      const int ch = n / d.RS, rs = n - ch * d.RS, r = rs / d.S, s = rs - r * d.S;
      c.off = (g * d.Cg + ch) * d.HW;
      c.rr = r - d.pad;
      c.ss = s - d.pad;
    }
    return c;
  }
  __device__ __forceinline__ Digits kpos(int k) const { return split3(k, d.P, d.Q); }
  __device__ __forceinline__ void advance(Digits& k, const Digits& step) const { advance3(k, step, d.P, d.Q); }
  __device__ __forceinline__ float fetch(const Col& c, const Digits& k) const {
    const int h = k.mid * d.st + c.rr, w = k.lo * d.st + c.ss;
    return c.off >= 0 && k.hi < d.N && unsigned(h) < unsigned(d.H) && unsigned(w) < unsigned(d.W)
               ? __ldg(x + c.off + k.hi * d.CHW + h * d.W + w)
               : 0.0f;
  }
};


template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, relaxed_min_blocks<Cfg>())
    conv_bwd_filter_v2(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ dw,
                       float* __restrict__ work, Geo d, int splits) {
  __shared__ __align__(16) float As[2 * Cfg::A_TILE];
  __shared__ __align__(16) float Bs[2 * Cfg::B_TILE];
  const int t = threadIdx.x, tx = t % Cfg::TX, ty = t / Cfg::TX;
  const int split = blockIdx.z / d.groups, g = blockIdx.z - split * d.groups;
  const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
  int kt0, kt1;
  split_range((d.NPQ + Cfg::BK - 1) / Cfg::BK, splits, split, kt0, kt1);

  const DyRowsSrc asrc{dy, d, g, m0};
  const XColsSrc bsrc{x, d, g, n0};
  GatherTile<Cfg, Cfg::BM, true, DyRowsSrc> la(asrc, kt0 * Cfg::BK);
  GatherTile<Cfg, Cfg::BN, false, XColsSrc> lb(bsrc, kt0 * Cfg::BK);
  float acc[Cfg::TM][Cfg::TN] = {};
  mainloop<Cfg>(la, lb, kt1 - kt0, As, Bs, tx, ty, acc);

  float* out = splits > 1 ? work + int64_t(split) * d.K * d.CRS : dw;
  store_tile<Cfg>(out + int64_t(g) * d.Kg * d.CRS, d.CRS, d.Kg, d.CRS, m0, n0, tx, ty, acc, nullptr, false);
}

// ---- bias gradient, version 2 ---------------------------------------------------------------
// dy float or uint16_t (BF16 bits) as in version 1.
template <class T>
__global__ void conv_bias_v2(const T* __restrict__ dy, float* __restrict__ db, int N, int K, int PQ) {
  __shared__ float part[256];
  const int k = blockIdx.x, t = threadIdx.x;
  const int64_t total = int64_t(N) * PQ;
  float acc = 0.0f;
  for (int64_t i = t; i < total; i += 256) {
    const int64_t n = i / PQ;
    acc += storage::load(dy, (n * K + k) * PQ + (i - n * PQ));
  }
  part[t] = acc;
  __syncthreads();
  for (int half = 128; half > 0; half >>= 1) {
    if (t < half) part[t] += part[t + half];
    __syncthreads();
  }
  if (t == 0) db[k] = part[0];
}

// ============================ dispatch ==========================================================
// Runs LAUNCHER<Cfg>(args...) with the config chosen for the GEMM's M.
#define CONV_WITH_TILE(M, LAUNCHER, ...)                                  \
  switch (pick_tile(M, true)) {                                           \
    case Tile::k8: LAUNCHER<T8>(__VA_ARGS__); break;                      \
    case Tile::k32: LAUNCHER<T32>(__VA_ARGS__); break;                    \
    case Tile::k64: LAUNCHER<T64>(__VA_ARGS__); break;                    \
    case Tile::k128: LAUNCHER<T128>(__VA_ARGS__); break;                  \
  }

template <class Cfg>
void launch_fwd_v2(const float* x, const float* w, const float* b, float* y, const Geo& d, bool relu,
                   cudaStream_t stream) {
  const bool vec_w = aligned16(w) && d.CRS % 4 == 0;
  const dim3 grid(ceil_div(d.NPQ, Cfg::BN), ceil_div(d.Kg, Cfg::BM), unsigned(d.groups));
  auto conv_fwd_v2_tiled = conv_fwd_v2<Cfg>;
  LAUNCH(conv_fwd_v2_tiled, grid, dim3(Cfg::THREADS), 0, stream, x, w, b, y, d, vec_w, relu);
}

template <class Cfg>
void launch_bwd_data_v2(const float* dy, const float* w, float* dx, const Geo& d, const float* relu_x,
                        cudaStream_t stream) {
  // Columns of the largest phase (phase 0): ceil(H/st) * ceil(W/st) per image.
  const int64_t cols = int64_t(d.N) * ((d.H + d.st - 1) / d.st) * ((d.W + d.st - 1) / d.st);
  const dim3 grid(ceil_div(cols, Cfg::BN), ceil_div(d.Cg, Cfg::BM), unsigned(d.groups * d.st * d.st));
  auto conv_bwd_data_v2_tiled = relu_x ? conv_bwd_data_v2<Cfg, true> : conv_bwd_data_v2<Cfg, false>;
  LAUNCH(conv_bwd_data_v2_tiled, grid, dim3(Cfg::THREADS), 0, stream, dy, w, dx, d, relu_x);
}

template <class Cfg>
void launch_bwd_filter_v2(const float* dy, const float* x, float* dw, float* work, const Geo& d, int splits,
                          cudaStream_t stream) {
  const dim3 grid(ceil_div(d.CRS, Cfg::BN), ceil_div(d.Kg, Cfg::BM), unsigned(d.groups * splits));
  auto conv_bwd_filter_v2_tiled = conv_bwd_filter_v2<Cfg>;
  LAUNCH(conv_bwd_filter_v2_tiled, grid, dim3(Cfg::THREADS), 0, stream, dy, x, dw, work, d, splits);
}

// ---- forward on tensor cores (TF32, BF16): tc_tile.cuh with B = im2col(x) ------------------
// B's element (n, k) of the k-tile at k0: column n = (img, p, q), k = (c, r, s); a thread's
// 16 elements share one column (tile_pos with K_CONTIG false: n = thread % 64), so the
// column's image offset and window origin are computed once per k-tile.
template <class In>
struct Im2colTc {
  using Mem = In;
  static constexpr bool K_CONTIG = false;  // consecutive threads on consecutive (p, q)
  const In* __restrict__ x;
  Geo d;
  int g, n0;
  __device__ __forceinline__ void load(int k0, In (&r)[tc::kPer]) const {
    int nn, kk;
    tc::tile_pos<tc::kBN, false>(threadIdx.x, nn, kk);
    const int n = n0 + nn;
    int off = -1, h0 = 0, w0 = 0;
    if (n < d.NPQ) {
      const int img = n / d.PQ, pq = n - img * d.PQ, p = pq / d.Q, q = pq - p * d.Q;
      off = img * d.CHW + g * d.Cg * d.HW;
      h0 = p * d.st - d.pad;
      w0 = q * d.st - d.pad;
    }
#pragma unroll
    for (int j = 0; j < tc::kPer; ++j) {
      int mn, kj;
      tc::tile_pos<tc::kBN, false>(threadIdx.x + tc::kThreads * j, mn, kj);
      const int k = k0 + kj, c = k / d.RS, rs = k - c * d.RS, rr = rs / d.S, h = h0 + rr, w = w0 + rs - rr * d.S;
      r[j] = off >= 0 && k < d.CRS && unsigned(h) < unsigned(d.H) && unsigned(w) < unsigned(d.W)
                 ? x[off + c * d.HW + h * d.W + w]
                 : In(0);
    }
  }
};

// One implicit GEMM per group (blockIdx.z): M = Kg, N = N*P*Q, Kdim = Cg*R*S, A = w (dense).
// MW: w's element in memory (In, or float at BF16: rounded as staged); T: y's storage.
template <Precision P, class MW, class T>
__global__ void __launch_bounds__(tc::kThreads)
    conv_fwd_tc_v1(const typename tc::Tc<P>::In* __restrict__ x, const MW* __restrict__ w,
                   const float* __restrict__ b, T* __restrict__ y, Geo d, bool relu) {
  using In = typename tc::Tc<P>::In;
  __shared__ __align__(16) typename tc::Tc<P>::S As[tc::kBM * tc::Tc<P>::LDS];
  __shared__ __align__(16) typename tc::Tc<P>::S Bs[tc::kBN * tc::Tc<P>::LDS];
  const int g = blockIdx.z, m0 = blockIdx.y * tc::kBM, n0 = blockIdx.x * tc::kBN;
  const tc::DenseSrc<MW, tc::kBM, true> la{w + int64_t(g) * d.Kg * d.CRS, d.CRS, d.Kg, d.CRS, m0};
  const Im2colTc<In> lb{x, d, g, n0};
  float acc[2][4][4] = {};
  tc::tc_mainloop<P>(la, lb, 0, (d.CRS + tc::kBK - 1) / tc::kBK, As, Bs, acc);
  tc::tc_store(acc, [&](int dm, int dn, float v) {
    const int m = m0 + dm, n = n0 + dn;
    if (m >= d.Kg || n >= d.NPQ) return;
    const int img = n / d.PQ, pq = n - img * d.PQ, k = g * d.Kg + m;
    storage::store(y, int64_t(img) * d.KPQ + int64_t(k) * d.PQ + pq, epilogue(v + (b ? b[k] : 0.0f), relu));
  });
}

template <Precision P, class MW, class T>
void launch_fwd_tc(const void* x, const void* w, const float* b, T* y, const Geo& d, bool relu,
                   cudaStream_t stream) {
  using In = typename tc::Tc<P>::In;
  const dim3 grid(ceil_div(d.NPQ, tc::kBN), ceil_div(d.Kg, tc::kBM), unsigned(d.groups));
  auto kernel = conv_fwd_tc_v1<P, MW, T>;
  LAUNCH(kernel, grid, dim3(tc::kThreads), 0, stream, static_cast<const In*>(x), static_cast<const MW*>(w), b, y, d,
         relu);
}

}  // namespace

void conv2d_forward(const float* x, const float* w, const float* b, float* y, const ConvShape& s, int version,
                    cudaStream_t stream, bool relu) {
  version = pick_version("conv2d_forward", version, kConvVersions, 2);
  const Geo d = make_geo(s);
  if (d.N == 0) return;
  if (version == 1) {
    LAUNCH(conv_fwd_v1, dim3(grid_stride_blocks(int64_t(d.NPQ) * d.K, 256)), dim3(256), 0, stream, x, w, b, y, d,
           relu);
    return;
  }
  CONV_WITH_TILE(d.Kg, launch_fwd_v2, x, w, b, y, d, relu, stream)
}

template <class T>
void conv2d_forward_tc(Precision p, const void* x, const void* w, const float* b, T* y, const ConvShape& s,
                       int version, cudaStream_t stream, bool relu, bool w_fp32) {
  constexpr bool kBF16Out = std::is_same_v<T, uint16_t>;
  if (p == Precision::kFP32) throw std::invalid_argument("conv2d_forward_tc: fp32 runs on conv2d_forward");
  if (p != Precision::kBF16 && (kBF16Out || w_fp32))
    throw std::invalid_argument("conv2d_forward_tc: BF16 storage of y and FP32 w are for precision bf16");
  version = pick_version("conv2d_forward_tc", version, kConvTcVersions, 1);
  const Geo d = make_geo(s);
  if (d.N == 0) return;
  if constexpr (!kBF16Out) {
    if (p == Precision::kTF32) launch_fwd_tc<Precision::kTF32, float>(x, w, b, y, d, relu, stream);
  }
  if (p == Precision::kBF16) {
    if (w_fp32) launch_fwd_tc<Precision::kBF16, float>(x, w, b, y, d, relu, stream);
    else launch_fwd_tc<Precision::kBF16, uint16_t>(x, w, b, y, d, relu, stream);
  }
}

void conv2d_backward_data(const float* dy, const float* w, float* dx, const ConvShape& s, int version,
                          cudaStream_t stream, const float* relu_x) {
  version = pick_version("conv2d_backward_data", version, kConvVersions, 2);
  const Geo d = make_geo(s);
  if (d.N == 0) return;
  if (version == 1) {
    LAUNCH(conv_bwd_data_v1, dim3(grid_stride_blocks(int64_t(d.N) * d.C * d.HW, 256)), dim3(256), 0, stream, dy, w, dx,
           d, relu_x);
    return;
  }
  CONV_WITH_TILE(d.Cg, launch_bwd_data_v2, dy, w, dx, d, relu_x, stream)
}

namespace {
// Blocks of the filter kernel that fit on the whole GPU at once.
template <class Cfg>
int64_t filter_slots() {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, conv_bwd_filter_v2<Cfg>, Cfg::THREADS, 0));
  return int64_t(std::max(1, per_sm)) * device_sm_count();
}
}  // namespace

// The filter kernel version 0 runs: 3 (conv_wgrad.cu) unless Kg <= 8. Per k-tile on sm_90, v3's
// 64-row tile issues 76% FFMA, v2's 32-row tile 26% and its 8-row tile 14%
// (benchmarks/results/conv_wgrad_prediction.md), so v3 wins despite its empty rows for Kg > 8.
int filter_choice(const ConvShape& s) { return s.K > 8 * s.groups ? 3 : 2; }

SplitPlan conv2d_backward_filter_plan(const ConvShape& s, int version, int splits) {
  version = pick_version("conv2d_backward_filter", version, kConvFilterVersions, filter_choice(s));
  const Geo d = make_geo(s);
  if (version == 3) return conv2d_backward_filter_v3_plan(s, splits);
  SplitPlan plan;
  if (version == 1 || d.N == 0) return plan;
  const Tile t = pick_tile(d.Kg, true);
  const int64_t tiles = int64_t(ceil_div(d.Kg, tile_bm(t))) * ceil_div(d.CRS, tile_bn(t)) * d.groups;
  const int ktiles = int(ceil_div(d.NPQ, tile_bk(t)));
  int n = splits;
  if (n <= 0) {
    // Whole waves of blocks (balanced_splits, gemm.cuh), at least 32 k-tiles per split.
    const int64_t slots = t == Tile::k8    ? filter_slots<T8>()
                          : t == Tile::k32 ? filter_slots<T32>()
                          : t == Tile::k64 ? filter_slots<T64>()
                                           : filter_slots<T128>();
    n = balanced_splits(tiles, ktiles, slots, 32, 4096);
  }
  n = std::max(1, std::min({n, ktiles, 4096}));
  const int64_t zmax = 65535 / d.groups;
  n = int(std::min<int64_t>(n, std::max<int64_t>(1, zmax)));
  plan.splits = n;
  plan.workspace = n > 1 ? int64_t(n) * d.K * d.CRS : 0;
  return plan;
}

void conv2d_backward_filter(const float* dy, const float* x, float* dw, float* work, int64_t work_floats,
                            const ConvShape& s, int version, int splits, cudaStream_t stream) {
  version = pick_version("conv2d_backward_filter", version, kConvFilterVersions, filter_choice(s));
  const Geo d = make_geo(s);
  if (version == 3) return conv2d_backward_filter_v3(dy, x, dw, work, work_floats, s, splits, stream);
  if (version == 1) {
    LAUNCH(conv_bwd_filter_v1, dim3(grid_stride_blocks(int64_t(d.K) * d.CRS, 256)), dim3(256), 0, stream, dy, x, dw,
           d);
    return;
  }
  const SplitPlan plan = conv2d_backward_filter_plan(s, version, splits);
  if (plan.workspace > work_floats)
    throw std::invalid_argument("conv2d_backward_filter: the workspace holds " + std::to_string(work_floats) +
                                " floats, " + std::to_string(plan.workspace) + " needed");
  CONV_WITH_TILE(d.Kg, launch_bwd_filter_v2, dy, x, dw, work, d, plan.splits, stream)
  if (plan.splits > 1) splitk_reduce(work, plan.splits, int64_t(d.K) * d.CRS, dw, nullptr, 1, stream);
}

template <class T>
void conv2d_backward_bias(const T* dy, float* db, int N, int K, int PQ, int version, cudaStream_t stream) {
  version = pick_version("conv2d_backward_bias", version, kConvVersions, 2);
  if (K <= 0) return;
  if (version == 1) {
    auto kernel = conv_bias_v1<T>;
    LAUNCH(kernel, dim3(ceil_div(K, 128)), dim3(128), 0, stream, dy, db, N, K, PQ);
  } else {
    auto kernel = conv_bias_v2<T>;
    LAUNCH(kernel, dim3(unsigned(K)), dim3(256), 0, stream, dy, db, N, K, PQ);
  }
}

// The storage types of dy and y: float (every precision) and uint16_t (BF16 bits, precision bf16).
template void conv2d_backward_bias<float>(const float*, float*, int, int, int, int, cudaStream_t);
template void conv2d_backward_bias<uint16_t>(const uint16_t*, float*, int, int, int, int, cudaStream_t);
template void conv2d_forward_tc<float>(Precision, const void*, const void*, const float*, float*, const ConvShape&,
                                       int, cudaStream_t, bool, bool);
template void conv2d_forward_tc<uint16_t>(Precision, const void*, const void*, const float*, uint16_t*,
                                          const ConvShape&, int, cudaStream_t, bool, bool);

}  // namespace alexnet::kernels
