// conv2d forward and backward-data of a 3x3, stride-1 convolution by Winograd's minimal filtering
// algorithm F(4x4, 3x3) (Winograd 1980; for CNNs Lavin & Gray, "Fast Algorithms for Convolutional
// Neural Networks", CVPR 2016). FP32 throughout, FFMA.
//
// Math. In one dimension, the 4 outputs y_i = sum_{r<3} d_{i+r} g_r (i < 4) of a 3-tap correlation
// over 6 inputs d_0..d_5 are y = A^T [ (G g) .* (B^T d) ] (.* elementwise), with the Toom-Cook
// interpolation points 0, 1, -1, 2, -2 and infinity:
//          | 4  0 -5  0  1  0 |         | 1/4    0     0  |
//          | 0 -4 -4  1  1  0 |         |-1/6  -1/6  -1/6 |         | 1  1  1  1  1  0 |
//   B^T =  | 0  4 -4 -1  1  0 |    G =  |-1/6   1/6  -1/6 |  A^T =  | 0  1 -1  2 -2  0 |
//          | 0 -2 -1  2  1  0 |         | 1/24  1/12  1/6 |         | 0  1  1  4  4  0 |
//          | 0  2 -1 -2  1  0 |         | 1/24 -1/12  1/6 |         | 0  1 -1  8 -8  1 |
//          | 0  4  0 -5  0  1 |         |  0     0     1  |
// Nesting it, the 4x4 output tile of one (input, output) channel pair is A^T [ (G g G^T) .* (B^T d B) ] A
// from its 6x6 input tile d and 3x3 filter g. The output transform is linear, so the sum over input
// channels moves inside it:
//     Y[k, tile] = A^T [ sum_c U[k, c] .* V[c, tile] ] A,     U = G g G^T,  V = B^T d B (6x6 each),
// and for each of the 36 transformed positions xi = 6a + b that sum is one GEMM (per group):
//     M[xi][k, t] = sum_{c < Cg} U[xi][k, c] * V[xi][c, t]        k < Kg, t < the number of tiles.
// The 1-D transforms in the code are these matrices' rows, factored where it saves operations
// (G's rows 4 and 5: (g0 +- 2 g1 + 4 g2) / 24; A^T's rows from m1 +- m2 and m3 +- m4).
//
// Why F(4x4, 3x3). Arithmetic: 36 products per 16 outputs of a channel pair instead of 144 (4x).
// On AlexNet's 13x13 maps 4 x 4 = 16 tiles cover 16 x 16, so the GEMMs do 16 * 36 = 576 products per
// map and channel pair against 169 * 9 = 1,521 for direct summation: 2.64x fewer FLOPs. F(2x2, 3x3)
// (4x4 input tiles) saves 2.25x nominally and 1,521 / (49 * 16) = 1.94x at 13x13, and moves 36% more
// transformed data (784 values per map against 576); F(6x6, 3x3) (8x8 input tiles) also does
// 9 * 64 = 576 products at 13x13, no better, with larger transform entries.
// Accuracy: the rounding errors grow with the transforms' entries. To first order the computed
// output obeys (componentwise, |.| of every matrix and input)
//     |y^ - y| <= gamma_n * [ sum_c |A^T| ( |G||g||G^T| .* |B^T||d||B| ) |A| + |b| ],  gamma_n = n u / (1 - n u),
// u = 2^-24, n = Cg + 24 roundings on the longest path (6 in B^T d B, 8 in G g G^T with its rounded
// constants 1/6 and 1/24, Cg in the channel sum, 8 in A^T M A, 1 for the bias). For inputs of one
// magnitude the bracket is (c_i c_j / 9) sum |x||w| at output (i, j) of a tile, c = the row sums of
// |A^T||G||B^T| over taps and inputs = 16, 17, 24, 48: up to 256x the bound of direct summation
// (F(2x2, 3x3): 7.1x). That is a worst case: measured (tests/test_conv_winograd.py) the error is at
// most 0.4 u times the bracket, and relative to sum |x||w| it is 1.3-2.0e-6 at conv3-5's sizes against
// 2.5-2.8e-7 for the implicit GEMM of conv.cu (5-7x).
//
// Backward data. dx[n, c, h, w] = sum_{k, r, s} dy[n, k, h + pad - r, w + pad - s] w[k, c, r, s] is the
// 3x3, stride-1 convolution of dy zero-padded by 2 - pad with the filter f[c, k, r, s] = w[k, c, 2 - r,
// 2 - s] (flipped, input and output channels exchanged within each group). The same kernels compute
// it; only the filter transform reads w differently (`flip`). So padding must be 0, 1 or 2.
//
// Names below: the convolution computed has Ci input channels (Cig per group), Co output channels
// (Cog per group), an H x W input, a P x Q output and padding pad; forward: (C, K, H x W, P x Q, pad),
// data: (K, C, P x Q, H x W, 2 - pad).
// Tiles: output tile t = (n*TH + th)*TW + tw < T = N*TH*TW (TH = ceil(P/4), TW = ceil(Q/4)) covers
// outputs (4th + i, 4tw + j), i, j < 4 (those inside P x Q are stored), and reads input rows
// 4th - pad + [0, 6), columns 4tw - pad + [0, 6) (zero outside the map).
// Layout of the workspace (floats; every part starts at a multiple of 4 floats):
//   U [36][Ci][Cogp]  U[xi][g*Cig + ci][co]: transformed filter of (co, ci) in group g;
//                     Cogp = Cog rounded up to a multiple of 4
//   V [36][Ci][Tp]    V[xi][g*Cig + ci][t]: transformed input tiles; Tp = T rounded up to a multiple of 4
//   M [36][Co][Tp]    M[xi][g*Cog + co][t]: the GEMMs' products
// so the GEMM of z = xi*groups + g is M_z (Cog x T, row pitch Tp) = U_z^T V_z with U_z = U + z*Cig*Cogp
// (Cig x Cog, pitch Cogp) and V_z = V + z*Cig*Tp (Cig x T, pitch Tp), M_z = M + z*Cog*Tp; both
// operands are read along their contiguous rows. The padding columns (t >= T, co >= Cog) are never
// read or written. NCHW x, y, dy, dx and (K, Cg, 3, 3) w as in conv.cu.
//
// version 1: four kernels, each the formula as written:
//   filter transform  one thread per (g, ci, co) (consecutive threads: consecutive co): 9 taps, G g G^T, 36 stores
//   input transform   one thread per (g*Cig + ci, t) (consecutive threads: consecutive t): its 6x6 tile, B^T d B
//   batched GEMM      gemm_tile.cuh's engine: DenseTile for both operands (float4 loads along m and n),
//                     mainloop (k-tiles of 8), store_tile; grid (ceil(T/BN), ceil(Cog/BM), 36*groups),
//                     blockIdx.z = z (launched in chunks of at most 65,535), the tile chosen by Cog
//   output transform  one thread per (g*Cog + co, t): M's 36 values, A^T M A, + bias, ReLU when asked
//                     (tile::epilogue: bit for bit relu_forward of the unfused output), its <= 16 outputs;
//                     for the data gradient with relu_input, dx where x > 0 else +0 (relu_fold,
//                     kernels/relu_math.cuh: bit for bit relu_backward of the unfused dx)
// version 2: the same transforms; the batched GEMM copies U and V global -> shared with 16-byte
//   cp.async (async_copy.h; zero-filled past Cog and T), no staging registers, two stages with one
//   __syncthreads per k-tile, k-tiles of 16 (half version 1's barriers); 128 x 128 x 16 tiles (256
//   threads) or 64 x 128 x 16 (128 threads) where that leaves fewer empty rows (Cog mod 128 in
//   (0, 64], e.g. Cog = 192); the same 8x8 FFMA micro-kernel. Copy mapping: quad L = t + e*THREADS of
//   a k-tile is row kk = L / (BMN/4), floats 4*(L % (BMN/4)) + [0, 4) (consecutive threads: consecutive
//   16-byte quads of one row). It needs a 16-byte-aligned workspace; elsewhere the GEMM of version 1 runs.
// Constraints: R = S = 3, stride 1, padding <= 2 (conv_winograd_unsupported); 32-bit offsets in x, y,
//   dy, dx (make_geo), 64-bit in the workspace.
#include "kernels/conv_winograd.cuh"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/async_copy.h"
#include "common/launch.h"
#include "kernels/conv_geo.cuh"
#include "kernels/gemm_tile.cuh"
#include "kernels/relu_math.cuh"

namespace alexnet::kernels {
namespace {

using namespace tile;

constexpr int kAlpha = 6;               // input tile side (m + r - 1)
constexpr int kXi = kAlpha * kAlpha;    // transformed positions
constexpr int kOut = 4;                 // output tile side

struct WinoGeo {
  int N, Ci, Co, H, W, P, Q, pad, groups, Cig, Cog;
  int TH, TW, TT, T;  // tiles per column and row of the output, per image, in all
  int64_t Tp, Cogp;   // row pitches of V/M and U
  bool flip;          // data direction: the filter is w flipped and transposed
};

int64_t round4(int64_t v) { return (v + 3) / 4 * 4; }

WinoGeo make_wino_geo(const ConvShape& s, bool data) {
  const Geo d = make_geo(s);  // checks the geometry and the 32-bit limits of x, y and w
  WinoGeo g{};
  g.N = d.N;
  g.groups = d.groups;
  g.flip = data;
  if (!data) {
    g.Ci = d.C, g.Co = d.K, g.H = d.H, g.W = d.W, g.P = d.P, g.Q = d.Q, g.pad = d.pad;
  } else {
    g.Ci = d.K, g.Co = d.C, g.H = d.P, g.W = d.Q, g.P = d.H, g.Q = d.W, g.pad = 2 - d.pad;
  }
  g.Cig = g.Ci / g.groups;
  g.Cog = g.Co / g.groups;
  g.TH = (g.P + kOut - 1) / kOut;
  g.TW = (g.Q + kOut - 1) / kOut;
  g.TT = g.TH * g.TW;
  // A tile holds at least one output, so T <= N*P*Q < 2^31 (make_geo).
  g.T = g.N * g.TT;
  g.Tp = round4(g.T);
  g.Cogp = round4(g.Cog);
  return g;
}

struct WinoParts {
  int64_t u, v, m;  // floats of U, V, M (each a multiple of 4)
};

WinoParts parts(const WinoGeo& g) {
  return {int64_t(kXi) * g.Ci * g.Cogp, int64_t(kXi) * g.Ci * g.Tp, int64_t(kXi) * g.Co * g.Tp};
}

// ---- the 1-D transforms (rows of B^T, G, A^T) ----------------------------------------------------
// t = B^T d
__device__ __forceinline__ void input_1d(const float (&d)[6], float (&t)[6]) {
  t[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
  t[1] = -4.0f * d[1] - 4.0f * d[2] + d[3] + d[4];
  t[2] = 4.0f * d[1] - 4.0f * d[2] - d[3] + d[4];
  t[3] = -2.0f * d[1] - d[2] + 2.0f * d[3] + d[4];
  t[4] = 2.0f * d[1] - d[2] - 2.0f * d[3] + d[4];
  t[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
}

// u = G g
__device__ __forceinline__ void filter_1d(const float (&g)[3], float (&u)[6]) {
  constexpr float kSixth = 1.0f / 6.0f, kTwentyFourth = 1.0f / 24.0f;
  u[0] = 0.25f * g[0];
  u[1] = -((g[0] + g[1]) + g[2]) * kSixth;
  u[2] = -((g[0] - g[1]) + g[2]) * kSixth;
  u[3] = ((g[0] + 2.0f * g[1]) + 4.0f * g[2]) * kTwentyFourth;
  u[4] = ((g[0] - 2.0f * g[1]) + 4.0f * g[2]) * kTwentyFourth;
  u[5] = g[2];
}

// y = A^T m
__device__ __forceinline__ void output_1d(const float (&m)[6], float (&y)[4]) {
  const float s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
  y[0] = (m[0] + s12) + s34;
  y[1] = d12 + 2.0f * d34;
  y[2] = s12 + 4.0f * s34;
  y[3] = (d12 + 8.0f * d34) + m[5];
}

// ============================ transforms (versions 1 and 2) ===================================
// U[xi][g*Cig + ci][co] = (G f G^T)[xi], f = w[g*Cog + co, ci] (forward) or, flipped and transposed,
// f[r][s] = w[g*Cig + ci, co, 2 - r, 2 - s] (data).
__global__ void wino_filter_v1(const float* __restrict__ w, float* __restrict__ U, WinoGeo d) {
  const int64_t total = int64_t(d.Ci) * d.Cog;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int co = int(idx % d.Cog), c = int(idx / d.Cog), g = c / d.Cig, ci = c - g * d.Cig;
    const float* f = d.flip ? w + (int64_t(c) * d.Cog + co) * 9 : w + ((int64_t(g) * d.Cog + co) * d.Cig + ci) * 9;
    float u[6][6];
    float col[3][6];  // col[s] = G f[:, s]
#pragma unroll
    for (int s = 0; s < 3; ++s) {
      float gs[3];
#pragma unroll
      for (int r = 0; r < 3; ++r) gs[r] = d.flip ? f[(2 - r) * 3 + (2 - s)] : f[r * 3 + s];
      filter_1d(gs, col[s]);
    }
#pragma unroll
    for (int a = 0; a < 6; ++a) {
      const float row[3] = {col[0][a], col[1][a], col[2][a]};
      filter_1d(row, u[a]);
    }
    float* out = U + int64_t(c) * d.Cogp + co;
#pragma unroll
    for (int a = 0; a < 6; ++a)
#pragma unroll
      for (int b = 0; b < 6; ++b) out[int64_t(a * 6 + b) * d.Ci * d.Cogp] = u[a][b];
  }
}

// V[xi][c][t] = (B^T d B)[xi], d = input tile t of channel c.
__global__ void wino_input_v1(const float* __restrict__ x, float* __restrict__ V, WinoGeo d) {
  const int64_t total = int64_t(d.Ci) * d.T;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int t = int(idx % d.T), c = int(idx / d.T);
    const int n = t / d.TT, rem = t - n * d.TT, th = rem / d.TW, tw = rem - th * d.TW;
    const int h0 = th * kOut - d.pad, w0 = tw * kOut - d.pad;
    const float* xc = x + (n * d.Ci + c) * d.H * d.W;
    float tmp[6][6];  // tmp[j] = B^T (column j of the tile)
#pragma unroll
    for (int j = 0; j < 6; ++j) {
      float colj[6];
      const int ww = w0 + j;
#pragma unroll
      for (int i = 0; i < 6; ++i) {
        const int h = h0 + i;
        colj[i] = unsigned(h) < unsigned(d.H) && unsigned(ww) < unsigned(d.W) ? __ldg(xc + h * d.W + ww) : 0.0f;
      }
      input_1d(colj, tmp[j]);
    }
    float* out = V + int64_t(c) * d.Tp + t;
#pragma unroll
    for (int a = 0; a < 6; ++a) {
      const float row[6] = {tmp[0][a], tmp[1][a], tmp[2][a], tmp[3][a], tmp[4][a], tmp[5][a]};
      float v[6];
      input_1d(row, v);
#pragma unroll
      for (int b = 0; b < 6; ++b) out[int64_t(a * 6 + b) * d.Ci * d.Tp] = v[b];
    }
  }
}

// y[n, k, 4th + i, 4tw + j] = act((A^T M A)[i][j] + b[k]), M = the 36 products of (k, t); with
// relu_x (the data gradient's relu_input: x shaped as y) that is relu_fold'ed with x at the same element.
__global__ void wino_output_v1(const float* __restrict__ M, const float* __restrict__ b, float* __restrict__ y,
                               WinoGeo d, bool relu, const float* __restrict__ relu_x) {
  const int64_t total = int64_t(d.Co) * d.T;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int t = int(idx % d.T), k = int(idx / d.T);
    const int n = t / d.TT, rem = t - n * d.TT, th = rem / d.TW, tw = rem - th * d.TW;
    const float* in = M + int64_t(k) * d.Tp + t;
    float tmp[6][4];  // tmp[b] = A^T (column b of M)
#pragma unroll
    for (int bcol = 0; bcol < 6; ++bcol) {
      float colb[6];
#pragma unroll
      for (int a = 0; a < 6; ++a) colb[a] = in[int64_t(a * 6 + bcol) * d.Co * d.Tp];
      output_1d(colb, tmp[bcol]);
    }
    const float bias = b ? b[k] : 0.0f;
    const int ok = (n * d.Co + k) * d.P * d.Q;
    float* yk = y + ok;
    float gate[kOut][kOut];  // relu_x's at the tile's outputs, loaded together (relu_math.cuh); else 1
#pragma unroll
    for (int i = 0; i < kOut; ++i)
#pragma unroll
      for (int j = 0; j < kOut; ++j) {
        const int p = th * kOut + i, q = tw * kOut + j;
        gate[i][j] = relu_gate(relu_x, ok + p * d.Q + q, p < d.P && q < d.Q);
      }
#pragma unroll
    for (int i = 0; i < kOut; ++i) {
      const float row[6] = {tmp[0][i], tmp[1][i], tmp[2][i], tmp[3][i], tmp[4][i], tmp[5][i]};
      float out[4];
      output_1d(row, out);
      const int p = th * kOut + i;
      if (p >= d.P) continue;
#pragma unroll
      for (int j = 0; j < kOut; ++j) {
        const int q = tw * kOut + j;
        if (q < d.Q) yk[p * d.Q + q] = ReluMath::backward(epilogue(out[j] + bias, relu), gate[i][j]);
      }
    }
  }
}

// ============================ version 1: batched GEMM on the tile engine ========================
template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    wino_gemm_v1(const float* __restrict__ U, const float* __restrict__ V, float* __restrict__ M, WinoGeo d, int z0,
                 bool vec) {
  __shared__ __align__(16) float As[2 * Cfg::A_TILE];
  __shared__ __align__(16) float Bs[2 * Cfg::B_TILE];
  const int t = threadIdx.x, tx = t % Cfg::TX, ty = t / Cfg::TX;
  const int64_t z = z0 + int64_t(blockIdx.z);
  const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
  DenseTile<Cfg, Cfg::BM, false> la(U + z * d.Cig * d.Cogp, int(d.Cogp), d.Cog, d.Cig, m0, 0, vec);
  DenseTile<Cfg, Cfg::BN, false> lb(V + z * d.Cig * d.Tp, int(d.Tp), d.T, d.Cig, n0, 0, vec);
  float acc[Cfg::TM][Cfg::TN] = {};
  mainloop<Cfg>(la, lb, (d.Cig + Cfg::BK - 1) / Cfg::BK, As, Bs, tx, ty, acc);
  store_tile<Cfg>(M + z * d.Cog * d.Tp, int(d.Tp), d.Cog, d.T, m0, n0, tx, ty, acc, nullptr, vec);
}

// ============================ version 2: batched GEMM with cp.async =============================
using A128 = Config<128, 128, 8, 8, 16>;
using A64 = Config<64, 128, 8, 8, 16>;

// Quads of one k-tile of a dense operand: row kk of BMN floats at x + (k0 + kk)*ld + mn0, into
// tile[kk * (BMN + 4)]; floats past MN and rows past K are zero-filled (not read).
template <class Cfg, int BMN>
__device__ __forceinline__ void copy_rows(float* tile, const float* __restrict__ x, int64_t ld, int MN, int K,
                                          int mn0, int k0) {
  constexpr int QR = BMN / 4, QUADS = Cfg::BK * QR, E = QUADS / Cfg::THREADS;
  static_assert(QUADS % Cfg::THREADS == 0, "whole quads per thread");
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int L = int(threadIdx.x) + e * Cfg::THREADS, kk = L / QR, mq = (L - kk * QR) * 4;
    const int mn = mn0 + mq, k = k0 + kk;
    const int valid = k < K ? max(0, min(4, MN - mn)) : 0;
    async_copy_f32x4(tile + kk * (BMN + 4) + mq, valid > 0 ? x + k * ld + mn : x, valid);
  }
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    wino_gemm_v2(const float* __restrict__ U, const float* __restrict__ V, float* __restrict__ M, WinoGeo d, int z0) {
  __shared__ __align__(16) float As[2 * Cfg::A_TILE];
  __shared__ __align__(16) float Bs[2 * Cfg::B_TILE];
  const int t = threadIdx.x, tx = t % Cfg::TX, ty = t / Cfg::TX;
  const int64_t z = z0 + int64_t(blockIdx.z);
  const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
  const float* Uz = U + z * d.Cig * d.Cogp;
  const float* Vz = V + z * d.Cig * d.Tp;
  auto load = [&](int kt, int buf) {
    copy_rows<Cfg, Cfg::BM>(As + buf * Cfg::A_TILE, Uz, d.Cogp, d.Cog, d.Cig, m0, kt * Cfg::BK);
    copy_rows<Cfg, Cfg::BN>(Bs + buf * Cfg::B_TILE, Vz, d.Tp, d.T, d.Cig, n0, kt * Cfg::BK);
    async_commit();
  };
  float acc[Cfg::TM][Cfg::TN] = {};
  const int ktiles = (d.Cig + Cfg::BK - 1) / Cfg::BK;
  load(0, 0);
  for (int i = 0; i < ktiles; ++i) {
    async_wait_all();
    __syncthreads();  // k-tile i is in buffer i&1 for everyone; everyone is done with buffer (i+1)&1
    if (i + 1 < ktiles) load(i + 1, (i + 1) & 1);
    fma_tile<Cfg>(As + (i & 1) * Cfg::A_TILE, Bs + (i & 1) * Cfg::B_TILE, tx, ty, acc);
  }
  store_tile<Cfg>(M + z * d.Cog * d.Tp, int(d.Tp), d.Cog, d.T, m0, n0, tx, ty, acc, nullptr, true);
}

// ============================ launchers ==========================================================
// The GEMMs' blockIdx.z = z - z0 in launches of at most 65,535.
template <class F>
void over_z(const WinoGeo& d, F launch) {
  const int zs = kXi * d.groups;
  for (int z0 = 0; z0 < zs; z0 += 65535) launch(z0, std::min(65535, zs - z0));
}

template <class Cfg>
void launch_gemm_v1(const float* U, const float* V, float* M, const WinoGeo& d, bool vec, cudaStream_t stream) {
  over_z(d, [&](int z0, int nz) {
    const dim3 grid(ceil_div(d.T, Cfg::BN), ceil_div(d.Cog, Cfg::BM), unsigned(nz));
    auto kernel = wino_gemm_v1<Cfg>;
    LAUNCH(kernel, grid, dim3(Cfg::THREADS), 0, stream, U, V, M, d, z0, vec);
  });
}

template <class Cfg>
void launch_gemm_v2(const float* U, const float* V, float* M, const WinoGeo& d, cudaStream_t stream) {
  over_z(d, [&](int z0, int nz) {
    const dim3 grid(ceil_div(d.T, Cfg::BN), ceil_div(d.Cog, Cfg::BM), unsigned(nz));
    auto kernel = wino_gemm_v2<Cfg>;
    LAUNCH(kernel, grid, dim3(Cfg::THREADS), 0, stream, U, V, M, d, z0);
  });
}

void gemm_v1(const float* U, const float* V, float* M, const WinoGeo& d, cudaStream_t stream) {
  // Rows of U_z, V_z and M_z start at multiples of 4 floats (Cogp, Tp): float4 when the workspace allows.
  const bool vec = aligned16(U, V, M);
  switch (pick_tile(d.Cog, true)) {
    case Tile::k8: launch_gemm_v1<T8>(U, V, M, d, vec, stream); break;
    case Tile::k32: launch_gemm_v1<T32>(U, V, M, d, vec, stream); break;
    case Tile::k64: launch_gemm_v1<T64>(U, V, M, d, vec, stream); break;
    case Tile::k128: launch_gemm_v1<T128>(U, V, M, d, vec, stream); break;
  }
}

void gemm_v2(const float* U, const float* V, float* M, const WinoGeo& d, cudaStream_t stream) {
  if (!aligned16(U, V, M)) return gemm_v1(U, V, M, d, stream);  // cp.async of 16 bytes needs alignment
  const bool w64 = int64_t(ceil_div(d.Cog, 64)) * 64 < int64_t(ceil_div(d.Cog, 128)) * 128;
  if (w64) launch_gemm_v2<A64>(U, V, M, d, stream);
  else launch_gemm_v2<A128>(U, V, M, d, stream);
}

const char* direction_op(bool data) { return data ? "conv2d_backward" : "conv2d_forward"; }

// The checks every entry point makes (before anything is launched or written).
WinoGeo checked_geo(const ConvShape& s, bool data, int& version, int64_t work_floats, bool with_work) {
  const char* op = direction_op(data);
  const std::string why = conv_winograd_unsupported(s);
  if (!why.empty()) throw std::invalid_argument(std::string(op) + ": " + why);
  version = pick_version(op, version, kConvWinogradVersions, 2);
  const WinoGeo d = make_wino_geo(s, data);
  if (with_work) {
    const WinoParts p = parts(d);
    const int64_t need = d.N == 0 ? 0 : p.u + p.v + p.m;
    if (need > work_floats)
      throw std::invalid_argument(std::string(op) + ": the workspace holds " + std::to_string(work_floats) +
                                  " floats, " + std::to_string(need) + " needed (winograd)");
  }
  return d;
}

// The four steps: in (the convolution's input) -> out, bias b (may be null), filter w.
void run(const float* in, const float* w, const float* b, float* out, float* work, const WinoGeo& d, int version,
         bool relu, const float* relu_x, cudaStream_t stream) {
  if (d.N == 0) return;
  const WinoParts p = parts(d);
  float* U = work;
  float* V = U + p.u;
  float* M = V + p.v;
  constexpr int kThreads = 256;
  LAUNCH(wino_filter_v1, dim3(grid_stride_blocks(int64_t(d.Ci) * d.Cog, kThreads)), dim3(kThreads), 0, stream, w, U,
         d);
  LAUNCH(wino_input_v1, dim3(grid_stride_blocks(int64_t(d.Ci) * d.T, kThreads)), dim3(kThreads), 0, stream, in, V,
         d);
  if (version == 1) gemm_v1(U, V, M, d, stream);
  else gemm_v2(U, V, M, d, stream);
  LAUNCH(wino_output_v1, dim3(grid_stride_blocks(int64_t(d.Co) * d.T, kThreads)), dim3(kThreads), 0, stream, M, b,
         out, d, relu, relu_x);
}

}  // namespace

std::string conv_winograd_unsupported(const ConvShape& s) {
  if (s.R == 3 && s.S == 3 && s.stride == 1 && s.pad >= 0 && s.pad <= 2) return "";
  return "algorithm 'winograd' takes a 3x3 kernel with stride 1 and padding 0, 1 or 2, got " +
         std::to_string(s.R) + "x" + std::to_string(s.S) + " with stride " + std::to_string(s.stride) +
         " and padding " + std::to_string(s.pad);
}

int64_t conv2d_winograd_workspace(const ConvShape& s, bool data, int version) {
  const WinoGeo d = checked_geo(s, data, version, 0, false);
  if (d.N == 0) return 0;
  const WinoParts p = parts(d);
  return p.u + p.v + p.m;
}

void conv2d_forward_winograd(const float* x, const float* w, const float* b, float* y, float* work, int64_t work_floats,
                             const ConvShape& s, int version, cudaStream_t stream, bool relu) {
  const WinoGeo d = checked_geo(s, false, version, work_floats, true);
  run(x, w, b, y, work, d, version, relu, nullptr, stream);
}

void conv2d_backward_data_winograd(const float* dy, const float* w, float* dx, float* work, int64_t work_floats,
                                   const ConvShape& s, int version, cudaStream_t stream, const float* relu_x) {
  const WinoGeo d = checked_geo(s, true, version, work_floats, true);
  run(dy, w, nullptr, dx, work, d, version, false, relu_x, stream);
}

}  // namespace alexnet::kernels
