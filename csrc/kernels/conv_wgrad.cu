// conv2d backward-filter (weight gradient), version 3: implicit GEMM with image-aligned
// k-tiles, a zero-padded x, cp.async double buffering and a split reduction.
//
// Math (as conv.cu; xp = x zero-padded by `pad` to Hp x Wp, Cg = C/groups, Kg = K/groups):
//   dw[g*Kg + m, c, r, s] = sum_{n < N, p < P, q < Q} dy[n, g*Kg + m, p, q] * xp[n, g*Cg + c, p*st + r, q*st + s]
// One GEMM per (group, split): M = Kg (m), N = Cg*R*S (column (c,r,s)), Kdim = the reduction
// over (n, pq), pq = p*Q + q. FP32 with FFMA (the micro-kernel of gemm_tile.cuh).
// Layout: NCHW x and dy, dw (K, Cg, R, S), all C-contiguous. The workspace holds the `splits`
// partial dw (when splits > 1: each a full (K, Cg*R*S)) and then xp (N, C, Hp, Wp) when pad > 0.
//
// Why it differs from version 2 (the measurements and the roofline: docs/measurements.md):
//   - k-tiles never straddle two images: image n contributes ceil(PQ/BK) k-tiles, the last
//     one zero-filled past PQ. So a k-tile is (n, pq0) with both block-uniform, and a thread
//     whose k-slot is kk sees pq = pq0 + kk in every element it loads. With xp padded in
//     memory, element (pq, (c,r,s)) of the x operand is at
//         xp + n*C*Hp*Wp + [p*st*Wp + q*st]  +  [(g*Cg + c)*Hp*Wp + r*Wp + s]
//     = a per-tile term shared by the thread's elements + a per-column constant (a shared
//     table of BN ints): one add and one copy per element, no bounds checks, no digit counters.
//     The dy operand is dy + n*K*PQ + pq + (g*Kg + m)*PQ likewise. (The tile tail costs
//     1 - PQ/(BK*ceil(PQ/BK)) of the FMAs: 4% at 13x13, 1% at 27x27, 0.5% at 55x55.)
//   - BK = 16 (version 2: 8): half the barriers, and 1024 FFMA per thread per k-tile
//     against 16 element copies and 64 shared float4 reads.
//   - Copies go global -> shared with cp.async on sm_80+ (async_copy.h): no staging
//     registers, no shared stores, two stages (the copy of k-tile i+1 runs under the FMAs
//     of k-tile i; one __syncthreads per k-tile).
// Tiles (Config of gemm_tile.cuh): W128 = 128 x 128 x 16, 256 threads, 8x8 per thread;
//   W64 = 64 x 128 x 16, 128 threads, 8x8 per thread, for Kg = 64*odd (conv4: Kg = 192 in
//   three 64-row tiles instead of two 128-row tiles, a quarter of them empty).
// Threads: grid (ceil(CRS/BN), ceil(Kg/BM), groups * splits), blockIdx.z = split*groups + g.
//   Copy mapping: thread t owns k-slot kk = t % BK and the rows (A) / columns (B)
//   t/BK + e*(THREADS/BK); consecutive threads copy consecutive pq (consecutive addresses
//   of dy and, at stride 1, of xp). Accumulators: fma_tile's 8x8 micro-tile (row_of/col_of).
// Splits: k-tiles [kt0, kt1) of split `split` (split_range); the planner takes whole waves of
//   blocks from the occupancy (balanced_splits, gemm.cuh); splitk_reduce adds the partials
//   in split order: deterministic, no atomics.
// Constraints: 32-bit offsets within xp, dy and dw (the padded x is checked here).
#include "kernels/conv_wgrad.cuh"
#include "kernels/gemm_tile.cuh"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/async_copy.h"
#include "common/launch.h"

namespace alexnet::kernels {
namespace {

using namespace tile;

using W128 = Config<128, 128, 8, 8, 16>;
using W64 = Config<64, 128, 8, 8, 16>;

struct WGeo {
  int N, C, H, W, K, S, st, pad, groups, PQ, Q;
  int Cg, Kg, RS, CRS, Hp, Wp, HpWp, KPQ;
  int tpi;  // k-tiles per image: ceil(PQ / BK)
};

WGeo make_wgeo(const ConvShape& s, int BK) {
  WGeo d{};
  d.N = s.N, d.C = s.C, d.H = s.H, d.W = s.W, d.K = s.K, d.S = s.S, d.st = s.stride, d.pad = s.pad;
  d.groups = s.groups, d.PQ = s.P * s.Q, d.Q = s.Q;
  d.Cg = s.C / s.groups, d.Kg = s.K / s.groups, d.RS = s.R * s.S, d.CRS = d.Cg * d.RS;
  d.Hp = s.H + 2 * s.pad, d.Wp = s.W + 2 * s.pad, d.HpWp = d.Hp * d.Wp, d.KPQ = s.K * d.PQ;
  d.tpi = (d.PQ + BK - 1) / BK;
  if (int64_t(s.N) * s.C * d.Hp * d.Wp > std::numeric_limits<int>::max() ||
      int64_t(s.N) * d.tpi > std::numeric_limits<int>::max())
    throw std::invalid_argument("conv2d_backward_filter: the padded x has more than 2^31-1 elements (version 3)");
  return d;
}

// xp = x zero-padded by `pad` on every side: blockIdx.x = image plane (n, c); the threads of
// blockIdx.y stride over the Hp x Wp plane (32-bit: xp has < 2^31 elements, make_wgeo).
__global__ void conv_pad_x(const float* __restrict__ x, float* __restrict__ xp, WGeo d) {
  const int plane = blockIdx.x;
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < d.HpWp; i += gridDim.y * blockDim.x) {
    const int hp = i / d.Wp, h = hp - d.pad, w = i - hp * d.Wp - d.pad;
    xp[plane * d.HpWp + i] =
        unsigned(h) < unsigned(d.H) && unsigned(w) < unsigned(d.W) ? x[(plane * d.H + h) * d.W + w] : 0.0f;
  }
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    conv_wgrad_v3(const float* __restrict__ dy, const float* __restrict__ xp, float* __restrict__ dw,
                  float* __restrict__ work, WGeo d, int splits, bool vec_out) {
  constexpr int BK = Cfg::BK, NT = Cfg::THREADS, STEP = NT / BK;
  constexpr int EA = Cfg::BM / STEP, EB = Cfg::BN / STEP;  // elements per thread and k-tile
  static_assert(NT % BK == 0 && Cfg::BM % STEP == 0 && Cfg::BN % STEP == 0 && EA <= 32 && EB <= 32,
                "copy mapping: whole rows and columns per thread");
  __shared__ __align__(16) float As[2 * Cfg::A_TILE];
  __shared__ __align__(16) float Bs[2 * Cfg::B_TILE];
  const int t = threadIdx.x, tx = t % Cfg::TX, ty = t / Cfg::TX;
  const int kk = t % BK, lane = t / BK;
  const int split = blockIdx.z / d.groups, g = blockIdx.z - split * d.groups;
  const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
  int kt0, kt1;
  split_range(d.N * d.tpi, splits, split, kt0, kt1);

  // A rows m0 + lane + e*STEP (dy of group g): a validity mask. B columns: their offsets in
  // one image of xp, in a shared table (-1 past CRS; registers would spill at 8 or 16 per thread).
  __shared__ int bcol[Cfg::BN];
  const float* arow = dy + int64_t(g * d.Kg + m0 + lane) * d.PQ;
  const int astep = STEP * d.PQ;
  unsigned amask = 0;
#pragma unroll
  for (int e = 0; e < EA; ++e)
    if (m0 + lane + e * STEP < d.Kg) amask |= 1u << e;
  for (int j = t; j < Cfg::BN; j += NT) {
    const int col = n0 + j;
    int off = -1;
    if (col < d.CRS) {
      const int c = col / d.RS, rs = col - c * d.RS, r = rs / d.S, s = rs - r * d.S;
      off = (g * d.Cg + c) * d.HpWp + r * d.Wp + s;
    }
    bcol[j] = off;
  }
  __syncthreads();

  // Reduction position: image n, k-tile start pq0 (block-uniform); this thread's pq = pq0 + kk = (p, q).
  int n = kt0 / d.tpi, pq0 = (kt0 - n * d.tpi) * BK;
  const int p_first = kk / d.Q, q_first = kk - p_first * d.Q;  // (p, q) of pq = kk
  const int bp = BK / d.Q, bq = BK - bp * d.Q;                   // BK as (rows, columns) of the output
  int p = (pq0 + kk) / d.Q, q = pq0 + kk - p * d.Q;

  float* const as0 = As + kk * Cfg::LDA + lane;
  float* const bs0 = Bs + kk * Cfg::LDB + lane;
  auto load = [&](int buf) {
    const bool in = pq0 + kk < d.PQ;
    const float* a = arow + int64_t(n) * d.KPQ + pq0 + kk;
    const float* b = xp + int64_t(n) * d.C * d.HpWp + (p * d.Wp + q) * d.st;
    float* as = as0 + buf * Cfg::A_TILE;
    float* bs = bs0 + buf * Cfg::B_TILE;
#pragma unroll
    for (int e = 0; e < EA; ++e) async_copy_f32(as + e * STEP, a + e * astep, in && (amask >> e & 1u));
#pragma unroll
    for (int e = 0; e < EB; ++e) {
      const int off = bcol[lane + e * STEP];
      async_copy_f32(bs + e * STEP, b + max(off, 0), in && off >= 0);
    }
    async_commit();
  };
  auto advance = [&]() {
    pq0 += BK;
    if (pq0 >= d.PQ) {  // next image
      pq0 = 0;
      ++n;
      p = p_first;
      q = q_first;
    } else {
      p += bp;
      q += bq;
      if (q >= d.Q) {
        q -= d.Q;
        ++p;
      }
    }
  };

  float acc[Cfg::TM][Cfg::TN] = {};
  const int ktiles = kt1 - kt0;  // block-uniform: the loop's barriers are reached by all threads
  if (ktiles > 0) load(0);
  for (int i = 0; i < ktiles; ++i) {
    async_wait_all();
    __syncthreads();  // k-tile i is in buffer i&1 for everyone; everyone is done with buffer (i+1)&1
    if (i + 1 < ktiles) {
      advance();
      load((i + 1) & 1);
    }
    fma_tile<Cfg>(As + (i & 1) * Cfg::A_TILE, Bs + (i & 1) * Cfg::B_TILE, tx, ty, acc);
  }

  float* out = splits > 1 ? work + int64_t(split) * d.K * d.CRS : dw;
  store_tile<Cfg>(out + int64_t(g) * d.Kg * d.CRS, d.CRS, d.Kg, d.CRS, m0, n0, tx, ty, acc, nullptr, vec_out);
}

// The tile for Kg rows: W64 when it leaves fewer empty rows than W128 (Kg mod 128 in (0, 64]).
bool use_w64(int Kg) { return int64_t(ceil_div(Kg, 64)) * 64 < int64_t(ceil_div(Kg, 128)) * 128; }

template <class Cfg>
int64_t wgrad_slots() {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, conv_wgrad_v3<Cfg>, Cfg::THREADS, 0));
  return int64_t(std::max(1, per_sm)) * device_sm_count();
}

template <class Cfg>
SplitPlan plan_v3(const ConvShape& s, int splits) {
  const WGeo d = make_wgeo(s, Cfg::BK);
  SplitPlan plan;
  if (d.N == 0) return plan;
  const int64_t tiles = int64_t(ceil_div(d.Kg, Cfg::BM)) * ceil_div(d.CRS, Cfg::BN) * d.groups;
  const int ktiles = d.N * d.tpi;
  // Whole waves of blocks, at least 16 k-tiles (256 terms of the reduction) per split.
  int n = splits > 0 ? splits : balanced_splits(tiles, ktiles, wgrad_slots<Cfg>(), 16, 4096);
  n = std::max(1, std::min({n, ktiles, 4096}));
  n = int(std::min<int64_t>(n, std::max<int64_t>(1, 65535 / d.groups)));
  plan.splits = n;
  plan.workspace = (n > 1 ? int64_t(n) * d.K * d.CRS : 0) + (d.pad > 0 ? int64_t(d.N) * d.C * d.HpWp : 0);
  return plan;
}

template <class Cfg>
void run_v3(const float* dy, const float* x, float* dw, float* work, int64_t work_floats, const ConvShape& s,
            int splits, cudaStream_t stream) {
  const SplitPlan plan = plan_v3<Cfg>(s, splits);
  if (s.N == 0) return;
  if (plan.workspace > work_floats)
    throw std::invalid_argument("conv2d_backward_filter: the workspace holds " + std::to_string(work_floats) +
                                " floats, " + std::to_string(plan.workspace) + " needed");
  const WGeo d = make_wgeo(s, Cfg::BK);
  const int64_t partials = plan.splits > 1 ? int64_t(plan.splits) * d.K * d.CRS : 0;
  const float* xp = x;
  if (d.pad > 0) {
    float* xpad = work + partials;
    const dim3 grid(unsigned(d.N * d.C), std::min(ceil_div(d.HpWp, 256), 65535u));
    LAUNCH(conv_pad_x, grid, dim3(256), 0, stream, x, xpad, d);
    xp = xpad;
  }
  float* out = plan.splits > 1 ? work : dw;
  const bool vec_out = aligned16(out) && d.CRS % 4 == 0;
  const dim3 grid(ceil_div(d.CRS, Cfg::BN), ceil_div(d.Kg, Cfg::BM), unsigned(d.groups * plan.splits));
  auto kernel = conv_wgrad_v3<Cfg>;
  LAUNCH(kernel, grid, dim3(Cfg::THREADS), 0, stream, dy, xp, dw, work, d, plan.splits, vec_out);
  if (plan.splits > 1) splitk_reduce(work, plan.splits, int64_t(d.K) * d.CRS, dw, nullptr, 1, stream);
}

}  // namespace

SplitPlan conv2d_backward_filter_v3_plan(const ConvShape& s, int splits) {
  return use_w64(s.K / s.groups) ? plan_v3<W64>(s, splits) : plan_v3<W128>(s, splits);
}

void conv2d_backward_filter_v3(const float* dy, const float* x, float* dw, float* work, int64_t work_floats,
                               const ConvShape& s, int splits, cudaStream_t stream) {
  if (use_w64(s.K / s.groups)) run_v3<W64>(dy, x, dw, work, work_floats, s, splits, stream);
  else run_v3<W128>(dy, x, dw, work, work_floats, s, splits, stream);
}

}  // namespace alexnet::kernels
