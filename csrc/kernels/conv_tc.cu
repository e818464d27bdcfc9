// conv2d backward-data and backward-filter on tensor cores (TF32, BF16): the implicit GEMMs
// of conv.cu's version 2 on the tile engine of tc_tile.cuh (mma.sync through
// common/mma_sync.h), like conv.cu's conv_fwd_tc_v1.
//
// Math (conv.cu's header; xp = x zero-padded by `pad`, Cg = C/groups, Kg = K/groups):
//   data    dx[n,c,h,w] = sum_{k in g(c), r, s : h+pad-r = p*st, w+pad-s = q*st} dy[n,k,p,q] * w[k,c-g*Cg,r,s]
//   filter  dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * xp[n, g*Cg+c, p*st+r, q*st+s]
//   TF32: dy, w, x are FP32 in memory, each element rounded with cvt.rna.tf32.f32 when it is
//   staged into shared memory. BF16: dy, x are BF16 in memory (uint16 bit patterns), staged
//   as they are; w too, or FP32 (the master weights) rounded to nearest even as it is staged.
//   Products exact in FP32, accumulation FP32 (mma.sync); dw FP32; dx FP32, or BF16 at BF16
//   (the FP32 sum rounded once to nearest even on store: storage::store). relu_input (relu_x,
//   x's values in dx's storage): dx = that sum where x > 0, else +0, selected before the
//   rounding (relu_fold, kernels/relu_math.cuh: bit for bit relu_backward of the unfused dx).
// Layout: NCHW tensors, w (K, Cg, R, S); all C-contiguous.
//
// version 1 (both directions): tc_tile.cuh's block tile 64 x 64 x 32, 128 threads = 4 warps in
//   2 x 2, each warp 32 x 32 = 2 (m16) x 4 (n8) mma tiles; one k-tile in flight in registers.
//   data    per (group, stride phase) as conv.cu version 2 (Phase, conv_geo.cuh): M = Cg (c),
//           N = N * Hph * Wph (n, h', w'), Kdim = Kg * Rp * Sp (k, i, j), no zero taps.
//           A = w[g*Kg + k, c, r0 + i*st, s0 + j*st]: k-contiguous staging (a thread keeps one
//           (k, i, j) per k-tile, decoded once, and walks 16 channels c).
//           B = dy[n, g*Kg + k, h' + dp - i, w' + dq - j]: mn-contiguous staging (a thread keeps
//           one column (n, h', w'), decoded once per k-tile; (k, i, j) decoded per element).
//           blockIdx.z = group * st*st + phase; a phase with no taps writes zeros.
//   filter  M = Kg (k), N = Cg*R*S (c, r, s), Kdim = N*P*Q (n, p, q), split across blocks as
//           conv.cu version 2 (blockIdx.z = split * groups + g; each split writes a full partial
//           dw to the workspace, splitk_reduce (gemm.cu) adds them in split order:
//           deterministic, no atomics). Splits planned from the occupancy of this kernel,
//           in whole waves, at least 16 k-tiles (512 terms) each.
//           A = dy[n, g*Kg + k, p, q]: k-contiguous (a thread keeps one (n, p, q) per k-tile:
//           consecutive threads on consecutive (p, q), coalesced).
//           B = xp[n, g*Cg + c, p*st + r, q*st + s]: mn-contiguous (a thread keeps one column
//           (c, r, s) for the whole kernel; (n, p, q) decoded per element).
// Threads: grid (ceil(N/64), ceil(M/64), z), 128 threads. Edges guarded: any geometry.
// Constraints: x, dy and w each hold fewer than 2^31 elements (make_geo checks; 32-bit offsets).
#include "kernels/conv_tc.cuh"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/launch.h"
#include "common/storage.cuh"
#include "kernels/conv_geo.cuh"
#include "kernels/gemm_tile.cuh"
#include "kernels/relu_math.cuh"
#include "kernels/tc_tile.cuh"

namespace alexnet::kernels {
namespace {

using namespace tc;

// The k-contiguous operands' loads: the thread's k is the same in all its elements (at
// offset `base` of X, in range when `ok`); its rows m0 + mn < M lie `stride` elements apart.
template <class In>
__device__ __forceinline__ void load_rows(const In* __restrict__ X, int base, bool ok, int m0, int M, int stride,
                                          In (&r)[kPer]) {
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    int mn, kj;
    tile_pos<kBM, true>(threadIdx.x + kThreads * j, mn, kj);
    const int m = m0 + mn;
    r[j] = ok && m < M ? X[base + m * stride] : In(0);
  }
}

// ---- backward data -------------------------------------------------------------------------
// A: element (c, (k,i,j)) = w[g*Kg + k, c, r0 + i*st, s0 + j*st]; k-contiguous staging.
template <class In>
struct RotWeightTc {
  using Mem = In;
  static constexpr bool K_CONTIG = true;
  const In* __restrict__ w;
  Geo d;
  Phase ph;
  int g, m0;
  __device__ __forceinline__ void load(int k0, In (&r)[kPer]) const {
    int mm, kk;
    tile_pos<kBM, true>(threadIdx.x, mm, kk);  // this thread's k: the same in all its elements
    const int k = k0 + kk, taps = ph.Rp * ph.Sp, kq = k / taps, ij = k - kq * taps, i = ij / ph.Sp;
    const int base = (g * d.Kg + kq) * d.CRS + (ph.r0 + i * d.st) * d.S + ph.s0 + (ij - i * ph.Sp) * d.st;
    load_rows(w, base, k < ph.kdim, m0, d.Cg, d.RS, r);  // rows: the channels c
  }
};

// B: element ((k,i,j), (n,h',w')) = dy[n, g*Kg + k, h' + dp - i, w' + dq - j]; mn-contiguous.
template <class In>
struct DyGatherTc {
  using Mem = In;
  static constexpr bool K_CONTIG = false;
  const In* __restrict__ dy;
  Geo d;
  Phase ph;
  int g, n0;
  __device__ __forceinline__ void load(int k0, In (&r)[kPer]) const {
    int nn, kk;
    tile_pos<kBN, false>(threadIdx.x, nn, kk);  // this thread's column: the same in all its elements
    const int n = n0 + nn;
    int off = -1, p0 = 0, q0 = 0;
    if (n < ph.ncols) {
      const int per = ph.Hph * ph.Wph, img = n / per, rem = n - img * per, hq = rem / ph.Wph;
      off = img * d.KPQ + g * d.Kg * d.PQ;
      p0 = hq + ph.dp;
      q0 = rem - hq * ph.Wph + ph.dq;
    }
    const int taps = ph.Rp * ph.Sp;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      int mn, kj;
      tile_pos<kBN, false>(threadIdx.x + kThreads * j, mn, kj);
      const int k = k0 + kj, kq = k / taps, ij = k - kq * taps, i = ij / ph.Sp;
      const int p = p0 - i, q = q0 - (ij - i * ph.Sp);
      r[j] = off >= 0 && k < ph.kdim && unsigned(p) < unsigned(d.P) && unsigned(q) < unsigned(d.Q)
                 ? dy[off + kq * d.PQ + p * d.Q + q]
                 : In(0);
    }
  }
};

// MW: w's element in memory (In, or float at BF16: rounded as staged); T: dx's storage.
template <Precision P, class MW, class T>
__global__ void __launch_bounds__(kThreads)
    conv_bwd_data_tc_v1(const typename Tc<P>::In* __restrict__ dy, const MW* __restrict__ w, T* __restrict__ dx,
                        Geo d, const T* __restrict__ relu_x) {
  using In = typename Tc<P>::In;
  __shared__ __align__(16) typename Tc<P>::S As[kBM * Tc<P>::LDS];
  __shared__ __align__(16) typename Tc<P>::S Bs[kBN * Tc<P>::LDS];
  const int phases = d.st * d.st;
  const int g = blockIdx.z / phases, m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const Phase ph(d, int(blockIdx.z) - g * phases);
  if (n0 >= ph.ncols) return;  // block-uniform: this phase has fewer columns than the grid

  const RotWeightTc<MW> la{w, d, ph, g, m0};
  const DyGatherTc<In> lb{dy, d, ph, g, n0};
  float acc[2][4][4] = {};
  tc_mainloop<P>(la, lb, 0, (ph.kdim + kBK - 1) / kBK, As, Bs, acc);
  const int per = ph.Hph * ph.Wph;
  // dx's element of the tile's (c, n) (c < Cg, n < ncols).
  auto at = [&](int c, int n) {
    const int img = n / per, rem = n - img * per, hq = rem / ph.Wph, wq = rem - hq * ph.Wph;
    return (int64_t(img) * d.C + g * d.Cg + c) * d.HW + (ph.ph + hq * d.st) * d.W + ph.pw + wq * d.st;
  };
  if (relu_x)  // relu_input: every gate loaded in one pass (relu_math.cuh), the select before the store
    tc_map(acc, [&](int dm, int dn, float v) {
      const int c = m0 + dm, n = n0 + dn;
      const bool ok = c < d.Cg && n < ph.ncols;
      return ReluMath::backward(v, relu_gate(relu_x, ok ? at(c, n) : 0, ok));
    });
  tc_store(acc, [&](int dm, int dn, float v) {
    const int c = m0 + dm, n = n0 + dn;
    if (c < d.Cg && n < ph.ncols) storage::store(dx, at(c, n), v);
  });
}

// ---- backward filter -----------------------------------------------------------------------
// A: element (k, (n,p,q)) = dy[n, g*Kg + k, p, q]; k-contiguous staging.
template <class In>
struct DyRowsTc {
  using Mem = In;
  static constexpr bool K_CONTIG = true;
  const In* __restrict__ dy;
  Geo d;
  int g, m0;
  __device__ __forceinline__ void load(int k0, In (&r)[kPer]) const {
    int mm, kk;
    tile_pos<kBM, true>(threadIdx.x, mm, kk);  // this thread's (n, p, q): the same in all its elements
    const int k = k0 + kk, img = k / d.PQ;
    const int base = img * d.KPQ + g * d.Kg * d.PQ + (k - img * d.PQ);
    load_rows(dy, base, k < d.NPQ, m0, d.Kg, d.PQ, r);  // rows: the output channels k
  }
};

// B: element ((n,p,q), (c,r,s)) = xp[n, g*Cg + c, p*st + r, q*st + s]; mn-contiguous.
template <class In>
struct XColsTc {
  using Mem = In;
  static constexpr bool K_CONTIG = false;
  const In* __restrict__ x;
  Geo d;
  int off = -1, rr = 0, ss = 0;  // this thread's column (c, r, s): x[0, g*Cg + c], r - pad, s - pad
  __device__ __forceinline__ XColsTc(const In* x_, const Geo& d_, int g, int n0) : x(x_), d(d_) {
    int nn, kk;
    tile_pos<kBN, false>(threadIdx.x, nn, kk);
    const int n = n0 + nn;
    if (n < d.CRS) {
      const int ch = n / d.RS, rs = n - ch * d.RS, r = rs / d.S;
      off = (g * d.Cg + ch) * d.HW;
      rr = r - d.pad;
      ss = rs - r * d.S - d.pad;
    }
  }
  __device__ __forceinline__ void load(int k0, In (&r)[kPer]) const {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      int mn, kj;
      tile_pos<kBN, false>(threadIdx.x + kThreads * j, mn, kj);
      const int k = k0 + kj, img = k / d.PQ, pq = k - img * d.PQ, p = pq / d.Q;
      const int h = p * d.st + rr, w = (pq - p * d.Q) * d.st + ss;
      r[j] = off >= 0 && k < d.NPQ && unsigned(h) < unsigned(d.H) && unsigned(w) < unsigned(d.W)
                 ? x[img * d.CHW + off + h * d.W + w]
                 : In(0);
    }
  }
};

template <Precision P>
__global__ void __launch_bounds__(kThreads)
    conv_bwd_filter_tc_v1(const typename Tc<P>::In* __restrict__ dy, const typename Tc<P>::In* __restrict__ x,
                          float* __restrict__ dw, float* __restrict__ work, Geo d) {
  using In = typename Tc<P>::In;
  __shared__ __align__(16) typename Tc<P>::S As[kBM * Tc<P>::LDS];
  __shared__ __align__(16) typename Tc<P>::S Bs[kBN * Tc<P>::LDS];
  const int splits = int(gridDim.z) / d.groups, split = blockIdx.z / d.groups, g = blockIdx.z - split * d.groups;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  int kt0, kt1;
  tile::split_range((d.NPQ + kBK - 1) / kBK, splits, split, kt0, kt1);

  const DyRowsTc<In> la{dy, d, g, m0};
  const XColsTc<In> lb(x, d, g, n0);
  float acc[2][4][4] = {};
  tc_mainloop<P>(la, lb, kt0, kt1, As, Bs, acc);
  float* out = (splits > 1 ? work + int64_t(split) * d.K * d.CRS : dw) + int64_t(g) * d.Kg * d.CRS;
  tc_store(acc, [&](int dm, int dn, float v) {
    const int m = m0 + dm, n = n0 + dn;
    if (m < d.Kg && n < d.CRS) out[int64_t(m) * d.CRS + n] = v;
  });
}

// ---- launchers -----------------------------------------------------------------------------
template <Precision P, class MW, class T>
void launch_data(const void* dy, const void* w, T* dx, const Geo& d, const T* relu_x, cudaStream_t stream) {
  using In = typename Tc<P>::In;
  // Columns of the largest phase (phase 0): ceil(H/st) * ceil(W/st) per image.
  const int64_t cols = int64_t(d.N) * ((d.H + d.st - 1) / d.st) * ((d.W + d.st - 1) / d.st);
  const dim3 grid(ceil_div(cols, kBN), ceil_div(d.Cg, kBM), unsigned(d.groups * d.st * d.st));
  auto kernel = conv_bwd_data_tc_v1<P, MW, T>;
  LAUNCH(kernel, grid, dim3(kThreads), 0, stream, static_cast<const In*>(dy), static_cast<const MW*>(w), dx, d,
         relu_x);
}

template <Precision P>
void launch_filter(const void* dy, const void* x, float* dw, float* work, const Geo& d, int splits,
                   cudaStream_t stream) {
  using In = typename Tc<P>::In;
  const dim3 grid(ceil_div(d.CRS, kBN), ceil_div(d.Kg, kBM), unsigned(d.groups * splits));
  auto kernel = conv_bwd_filter_tc_v1<P>;
  LAUNCH(kernel, grid, dim3(kThreads), 0, stream, static_cast<const In*>(dy), static_cast<const In*>(x), dw, work,
         d);
}

// Blocks of the filter kernel that fit on the whole GPU at once.
int64_t filter_tc_slots() {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, conv_bwd_filter_tc_v1<Precision::kBF16>,
                                                           kThreads, 0));
  return int64_t(std::max(1, per_sm)) * device_sm_count();
}

}  // namespace

template <class T>
void conv2d_backward_data_tc(Precision p, const void* dy, const void* w, T* dx, const ConvShape& s, int version,
                             cudaStream_t stream, bool w_fp32, const T* relu_x) {
  constexpr bool kBF16Out = std::is_same_v<T, uint16_t>;
  if (p == Precision::kFP32) throw std::invalid_argument("conv2d_backward_data_tc: fp32 runs on conv2d_backward_data");
  if (p != Precision::kBF16 && (kBF16Out || w_fp32))
    throw std::invalid_argument("conv2d_backward_data_tc: BF16 storage of dx and FP32 w are for precision bf16");
  version = pick_version("conv2d_backward_data_tc", version, kConvTcVersions, 1);
  const Geo d = make_geo(s);
  if (d.N == 0) return;
  if constexpr (!kBF16Out) {
    if (p == Precision::kTF32) launch_data<Precision::kTF32, float>(dy, w, dx, d, relu_x, stream);
  }
  if (p == Precision::kBF16) {
    if (w_fp32) launch_data<Precision::kBF16, float>(dy, w, dx, d, relu_x, stream);
    else launch_data<Precision::kBF16, uint16_t>(dy, w, dx, d, relu_x, stream);
  }
}

// dx's storage types: float (TF32, BF16) and uint16_t (BF16 bits; precision bf16 only).
template void conv2d_backward_data_tc<float>(Precision, const void*, const void*, float*, const ConvShape&, int,
                                             cudaStream_t, bool, const float*);
template void conv2d_backward_data_tc<uint16_t>(Precision, const void*, const void*, uint16_t*, const ConvShape&, int,
                                                cudaStream_t, bool, const uint16_t*);

SplitPlan conv2d_backward_filter_tc_plan(const ConvShape& s, int version, int splits) {
  pick_version("conv2d_backward_filter_tc", version, kConvTcVersions, 1);
  const Geo d = make_geo(s);
  SplitPlan plan;
  if (d.N == 0) return plan;
  const int64_t tiles = int64_t(ceil_div(d.Kg, kBM)) * ceil_div(d.CRS, kBN) * d.groups;
  const int ktiles = int(ceil_div(d.NPQ, kBK));
  // Whole waves of blocks (balanced_splits, gemm.cuh), at least 16 k-tiles (512 terms) per split.
  int n = splits > 0 ? splits : balanced_splits(tiles, ktiles, filter_tc_slots(), 16, 4096);
  n = std::max(1, std::min({n, ktiles, 4096}));
  n = int(std::min<int64_t>(n, std::max<int64_t>(1, 65535 / d.groups)));
  plan.splits = n;
  plan.workspace = n > 1 ? int64_t(n) * d.K * d.CRS : 0;
  return plan;
}

void conv2d_backward_filter_tc(Precision p, const void* dy, const void* x, float* dw, float* work,
                               int64_t work_floats, const ConvShape& s, int version, int splits,
                               cudaStream_t stream) {
  if (p == Precision::kFP32)
    throw std::invalid_argument("conv2d_backward_filter_tc: fp32 runs on conv2d_backward_filter");
  version = pick_version("conv2d_backward_filter_tc", version, kConvTcVersions, 1);
  const Geo d = make_geo(s);  // N = 0: no k-tiles, the kernel writes dw = 0 (as the FP32 versions)
  const SplitPlan plan = conv2d_backward_filter_tc_plan(s, version, splits);
  if (plan.workspace > work_floats)
    throw std::invalid_argument("conv2d_backward_filter_tc: the workspace holds " + std::to_string(work_floats) +
                                " floats, " + std::to_string(plan.workspace) + " needed");
  if (p == Precision::kTF32) launch_filter<Precision::kTF32>(dy, x, dw, work, d, plan.splits, stream);
  else launch_filter<Precision::kBF16>(dy, x, dw, work, d, plan.splits, stream);
  if (plan.splits > 1) splitk_reduce(work, plan.splits, int64_t(d.K) * d.CRS, dw, nullptr, 1, stream);
}

}  // namespace alexnet::kernels
