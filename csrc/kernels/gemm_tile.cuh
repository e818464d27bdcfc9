// The FP32 tile engine shared by gemm.cu and conv.cu: DEVICE code, included only by .cu
// files (unlike the launcher headers, this one has CUDA syntax).
//
// Every fast kernel of this project is one GEMM per (group, phase, split):
//
//     C[m, n] = sum_k A[m, k] * B[k, n]          m < M, n < N, k < Kdim
//
// where A and B are *views*: a dense matrix (linear layers, conv weights), or an operand
// gathered on the fly from an NCHW tensor (implicit GEMM: im2col without materializing
// it). The engine splits into three replaceable parts, so that a tensor-core version can
// later swap the math without touching the operand gathers:
//
//   loaders   global -> registers -> shared tile. A tile is stored k-major:
//             tile[k * LD + mn], LD = BM + 4 (A) or BN + 4 (B). The +4 keeps rows 16-byte
//             aligned for float4 reads and spreads k-fast stores over the banks.
//               DenseTile  a strided matrix, float4 loads when the caller says alignment
//                          allows (`vec`), else guarded scalars.
//               GatherTile any Src that yields one element per (mn, k) with a per-element
//                          state advanced incrementally by BK (no divisions in the loop);
//                          K_FAST picks the thread mapping: consecutive threads take
//                          consecutive mn (K_FAST=false) or consecutive k (K_FAST=true),
//                          whichever is contiguous in global memory.
//   mainloop  double-buffered shared tiles, one __syncthreads per k-tile: the next tile
//             is fetched into registers before the FMAs on the current one and stored
//             to the other buffer after them.
//   fma_tile  the FP32 micro-kernel (FFMA only): thread (tx, ty) owns a TM x TN micro-tile
//             made of (TM/4) x (TN/4) blocks of 4x4; block (i, j) covers rows
//             i*TY*4 + ty*4 + [0,4) and columns j*TX*4 + tx*4 + [0,4), so each k step reads
//             TM/4 + TN/4 float4 from shared memory, and a warp's float4 reads of B are
//             consecutive (no bank conflicts).
//
// Config<BM, BN, TM, TN, BK>: block tile BM x BN, k-tile BK, THREADS = (BM/TM) * (BN/TN),
// TM and TN multiples of 4. Out-of-range rows, columns and k read as 0, so any M, N, Kdim
// works; the epilogue (store_tile, or the kernel's own) guards its stores.
#pragma once

#include "common/cuda_common.h"

namespace alexnet::kernels::tile {

template <int BM_, int BN_, int TM_, int TN_, int BK_>
struct Config {
  static constexpr int BM = BM_, BN = BN_, TM = TM_, TN = TN_, BK = BK_;
  static constexpr int TY = BM / TM, TX = BN / TN, THREADS = TX * TY;
  static constexpr int LDA = BM + 4, LDB = BN + 4;
  static constexpr int A_TILE = BK * LDA, B_TILE = BK * LDB;  // floats per buffer
  // Blocks per SM asked of the compiler in __launch_bounds__: 512 threads per SM, which
  // caps registers at 128 per thread (65536 / 512).
  static constexpr int MIN_BLOCKS = 512 / THREADS;
  static_assert(TM % 4 == 0 && TN % 4 == 0 && BM % TM == 0 && BN % TN == 0, "micro-tile is made of 4x4 blocks");
  static_assert(BK % 4 == 0, "BK is a multiple of 4 (float4 k-quads)");
  static_assert(THREADS <= 1024, "too many threads");
};

// The configurations the dispatchers choose from (fixed here so conv and gemm agree).
using T128 = Config<128, 128, 8, 8, 8>;  // 256 threads, 8x8 per thread: large M
using T64 = Config<64, 128, 8, 8, 8>;    // 128 threads, 8x8 per thread: M <= 64
using T32 = Config<32, 128, 4, 8, 8>;    // 128 threads, 4x8 per thread: M <= 32
using T8 = Config<8, 64, 4, 4, 4>;       //  32 threads, 4x4 per thread: M <= 8 (conv1's dx, C=3)

// The configuration for a GEMM of M rows (host side): the smallest block tile that covers M;
// T8 only where the caller has compiled it (conv; gemm starts at T32).
enum class Tile { k128, k64, k32, k8 };
inline Tile pick_tile(int M, bool with_t8) {
  return with_t8 && M <= 8 ? Tile::k8 : M <= 32 ? Tile::k32 : M <= 64 ? Tile::k64 : Tile::k128;
}
inline int tile_bm(Tile t) {
  return t == Tile::k8 ? T8::BM : t == Tile::k32 ? T32::BM : t == Tile::k64 ? T64::BM : T128::BM;
}
inline int tile_bn(Tile t) {
  return t == Tile::k8 ? T8::BN : t == Tile::k32 ? T32::BN : t == Tile::k64 ? T64::BN : T128::BN;
}
inline int tile_bk(Tile t) {
  return t == Tile::k8 ? T8::BK : t == Tile::k32 ? T32::BK : t == Tile::k64 ? T64::BK : T128::BK;
}

// Row (in the block tile) of accumulator row i of thread row ty; column likewise.
template <class Cfg>
__device__ __forceinline__ int row_of(int ty, int i) {
  return (i / 4) * Cfg::TY * 4 + ty * 4 + (i % 4);
}
template <class Cfg>
__device__ __forceinline__ int col_of(int tx, int j) {
  return (j / 4) * Cfg::TX * 4 + tx * 4 + (j % 4);
}

// ---- a mixed-radix counter: (hi, mid, lo) with radices (-, MID, LO) -----------------------
// Gathers walk k = ((hi * MID) + mid) * LO + lo (e.g. (c, r, s) of a filter, (n, p, q) of an
// output) and advance by a constant; this keeps divisions out of the main loop.
struct Digits {
  int hi, mid, lo;
};
__device__ __forceinline__ Digits split3(int v, int MID, int LO) {
  const int q = v / LO;
  const int hi = q / MID;
  return Digits{hi, q - hi * MID, v - q * LO};
}
// d += step where step = split3(dk, MID, LO) (so step.mid < MID, step.lo < LO).
__device__ __forceinline__ void advance3(Digits& d, const Digits& step, int MID, int LO) {
  d.lo += step.lo;
  d.mid += step.mid;
  d.hi += step.hi;
  if (d.lo >= LO) {
    d.lo -= LO;
    ++d.mid;
  }
  if (d.mid >= MID) {
    d.mid -= MID;
    ++d.hi;
  }
}

// ---- DenseTile: op(X) of a strided matrix --------------------------------------------------
// Element (mn, k) of the view is X[mn * ld + k] when K_CONTIG, else X[k * ld + mn]. Threads
// take float4 quads along the contiguous direction; `vec` (set by the launcher) promises that
// X and ld allow 16-byte loads and, when K_CONTIG, that Kdim % 4 == 0.
template <class Cfg, int BMN, bool K_CONTIG>
struct DenseTile {
  static constexpr int BK = Cfg::BK, NT = Cfg::THREADS, LD = BMN + 4;
  static constexpr int QUADS = BMN * BK / 4;
  static constexpr int E = (QUADS + NT - 1) / NT;
  static constexpr int REGS = 4 * E;
  const float* __restrict__ x;
  int ld, MN, K, mn0, k;
  bool vec;

  __device__ __forceinline__ DenseTile(const float* x_, int ld_, int MN_, int K_, int mn0_, int k0, bool vec_)
      : x(x_), ld(ld_), MN(MN_), K(K_), mn0(mn0_), k(k0), vec(vec_) {}

  // Quad L of the tile: (mn, k) of its first element; the quad runs along k (K_CONTIG) or mn.
  __device__ __forceinline__ static int quad_mn(int L) { return K_CONTIG ? L / (BK / 4) : (L % (BMN / 4)) * 4; }
  __device__ __forceinline__ static int quad_k(int L) { return K_CONTIG ? (L % (BK / 4)) * 4 : L / (BMN / 4); }

  __device__ __forceinline__ void load(float (&r)[REGS]) const {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int L = int(threadIdx.x) + e * NT;
      const int mn = mn0 + quad_mn(L), kk = k + quad_k(L);
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (QUADS % NT == 0 || L < QUADS) {
        if (K_CONTIG) {
          if (mn < MN && kk < K) {
            const float* p = x + int64_t(mn) * ld + kk;
            if (vec) {
              v = __ldg(reinterpret_cast<const float4*>(p));
            } else {
              v.x = p[0];
              if (kk + 1 < K) v.y = p[1];
              if (kk + 2 < K) v.z = p[2];
              if (kk + 3 < K) v.w = p[3];
            }
          }
        } else {
          if (kk < K && mn < MN) {
            const float* p = x + int64_t(kk) * ld + mn;
            if (vec && mn + 3 < MN) {
              v = __ldg(reinterpret_cast<const float4*>(p));
            } else {
              v.x = p[0];
              if (mn + 1 < MN) v.y = p[1];
              if (mn + 2 < MN) v.z = p[2];
              if (mn + 3 < MN) v.w = p[3];
            }
          }
        }
      }
      r[4 * e + 0] = v.x;
      r[4 * e + 1] = v.y;
      r[4 * e + 2] = v.z;
      r[4 * e + 3] = v.w;
    }
  }
  __device__ __forceinline__ void advance() { k += BK; }
  __device__ __forceinline__ void store(const float (&r)[REGS], float* tile) const {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int L = int(threadIdx.x) + e * NT;
      if (QUADS % NT != 0 && L >= QUADS) continue;
      const int mn = quad_mn(L), kk = quad_k(L);
      if (K_CONTIG) {
#pragma unroll
        for (int i = 0; i < 4; ++i) tile[(kk + i) * LD + mn] = r[4 * e + i];
      } else {
        *reinterpret_cast<float4*>(tile + kk * LD + mn) = make_float4(r[4 * e], r[4 * e + 1], r[4 * e + 2], r[4 * e + 3]);
      }
    }
  }
};

// ---- GatherTile: an operand produced element by element by a source ------------------------
// Src provides
//   struct Col;                          state of one mn index (e.g. an image offset and a
//                                        window origin); a default Col means "outside"
//   Col col(int mn) const;               mn relative to the tile, in [0, BMN)
//   Digits kpos(int k) const;            k (absolute) as mixed-radix digits
//   void advance(Digits& k, const Digits& step) const;   k += step (step = kpos(some dk))
//   float fetch(const Col&, const Digits&) const;        the element, 0 outside the operand
// A thread loads E elements per tile: element e is slot L = threadIdx.x + e*THREADS of the
// tile, at (mn, k) = (L % BMN, L / BMN) with the k-slow mapping (K_FAST=false: consecutive
// threads on consecutive mn) or (L / BK, L % BK) with the k-fast one. When THREADS is a
// multiple of BMN (k-slow) or of BK (k-fast) all of a thread's elements share one mn (one Col
// is kept) or one k (the k of element e is k0 + e*KS); then one Digits is kept and the
// others are stepped from it in load(). This keeps the gather state to a few registers.
template <class Cfg, int BMN, bool K_FAST, class Src>
struct GatherTile {
  static constexpr int BK = Cfg::BK, NT = Cfg::THREADS, LD = BMN + 4;
  static constexpr int TOTAL = BK * BMN;
  static constexpr int E = (TOTAL + NT - 1) / NT;
  static constexpr int REGS = E;
  static constexpr bool FULL = TOTAL % NT == 0;
  static constexpr bool SHARED_COL = !K_FAST && NT % BMN == 0;
  static constexpr bool SHARED_K = K_FAST ? NT % BK == 0 : NT % BMN == 0;
  static constexpr int KS = K_FAST ? 0 : NT / BMN;  // k distance between a thread's elements (SHARED_K)
  static constexpr int NC = SHARED_COL ? 1 : E;
  static constexpr int ND = SHARED_K ? 1 : E;
  const Src& src;
  typename Src::Col cols[NC];
  Digits ks[ND];
  Digits step_bk, step_e;

  __device__ __forceinline__ static int mn_of(int L) { return K_FAST ? L / BK : L % BMN; }
  __device__ __forceinline__ static int k_of(int L) { return K_FAST ? L % BK : L / BMN; }
  __device__ __forceinline__ static bool inside(int L) { return FULL || L < TOTAL; }

  __device__ __forceinline__ GatherTile(const Src& s, int k0) : src(s) {
#pragma unroll
    for (int e = 0; e < NC; ++e) {
      const int L = int(threadIdx.x) + e * NT;
      cols[e] = inside(L) ? src.col(mn_of(L)) : typename Src::Col{};
    }
#pragma unroll
    for (int e = 0; e < ND; ++e) ks[e] = src.kpos(k0 + k_of(int(threadIdx.x) + e * NT));
    step_bk = src.kpos(BK);
    step_e = src.kpos(KS);
  }
  __device__ __forceinline__ void load(float (&r)[REGS]) const {
    Digits k = ks[0];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int L = int(threadIdx.x) + e * NT;
      if (ND > 1) k = ks[e];
      else if (KS > 0 && e > 0) src.advance(k, step_e);
      r[e] = inside(L) ? src.fetch(cols[NC == 1 ? 0 : e], k) : 0.0f;
    }
  }
  __device__ __forceinline__ void advance() {
#pragma unroll
    for (int e = 0; e < ND; ++e) src.advance(ks[e], step_bk);
  }
  __device__ __forceinline__ void store(const float (&r)[REGS], float* tile) const {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int L = int(threadIdx.x) + e * NT;
      if (inside(L)) tile[k_of(L) * LD + mn_of(L)] = r[e];
    }
  }
};

// ---- the FP32 micro-kernel -----------------------------------------------------------------
template <class Cfg>
__device__ __forceinline__ void fma_tile(const float* As, const float* Bs, int tx, int ty,
                                         float (&acc)[Cfg::TM][Cfg::TN]) {
#pragma unroll
  for (int kk = 0; kk < Cfg::BK; ++kk) {
    float a[Cfg::TM], b[Cfg::TN];
#pragma unroll
    for (int i = 0; i < Cfg::TM / 4; ++i) {
      const float4 v = *reinterpret_cast<const float4*>(As + kk * Cfg::LDA + i * Cfg::TY * 4 + ty * 4);
      a[4 * i] = v.x;
      a[4 * i + 1] = v.y;
      a[4 * i + 2] = v.z;
      a[4 * i + 3] = v.w;
    }
#pragma unroll
    for (int j = 0; j < Cfg::TN / 4; ++j) {
      const float4 v = *reinterpret_cast<const float4*>(Bs + kk * Cfg::LDB + j * Cfg::TX * 4 + tx * 4);
      b[4 * j] = v.x;
      b[4 * j + 1] = v.y;
      b[4 * j + 2] = v.z;
      b[4 * j + 3] = v.w;
    }
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i)
#pragma unroll
      for (int j = 0; j < Cfg::TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// ---- the main loop -------------------------------------------------------------------------
// Runs `ktiles` k-tiles from the loaders' current position. As and Bs hold two buffers each
// (2 * A_TILE and 2 * B_TILE floats). Block-uniform control flow only (it has barriers).
template <class Cfg, class LA, class LB>
__device__ __forceinline__ void mainloop(LA& la, LB& lb, int ktiles, float* As, float* Bs, int tx, int ty,
                                         float (&acc)[Cfg::TM][Cfg::TN]) {
  if (ktiles <= 0) return;
  float ra[LA::REGS], rb[LB::REGS];
  la.load(ra);
  lb.load(rb);
  la.store(ra, As);
  lb.store(rb, Bs);
  __syncthreads();
  for (int kt = 0; kt < ktiles; ++kt) {
    const int cur = kt & 1;
    const bool more = kt + 1 < ktiles;
    if (more) {  // fetch the next tile while this one is multiplied
      la.advance();
      lb.advance();
      la.load(ra);
      lb.load(rb);
    }
    fma_tile<Cfg>(As + cur * Cfg::A_TILE, Bs + cur * Cfg::B_TILE, tx, ty, acc);
    if (more) {  // the other buffer was last read before the previous barrier
      la.store(ra, As + (cur ^ 1) * Cfg::A_TILE);
      lb.store(rb, Bs + (cur ^ 1) * Cfg::B_TILE);
    }
    __syncthreads();
  }
}

// ---- the fused activation of a forward epilogue --------------------------------------------
// The value a forward stores: v = acc + bias, rounded once to FP32 by the add, then, when
// `relu`, fmaxf(v, 0): the same operation on the same FP32 value as relu_forward (relu.cu)
// applied to the unfused output, so the fused output is bit for bit the unfused one.
__device__ __forceinline__ float epilogue(float v, bool relu) { return relu ? fmaxf(v, 0.0f) : v; }

// ---- the epilogue: a thread's micro-tile into a row-major C ----------------------------------
// out[m * ld + n] = act(acc + (bias ? bias[n] : 0)) for this thread's rows m = m0 + row_of(ty, i) < M
// and columns n = n0 + col_of(tx, j) < N, act = fused_relu when `relu`, else the identity; float4
// stores where `vec` promises that out and ld allow them (out 16-byte aligned, ld % 4 == 0):
// col_of(tx, 4b .. 4b+3) are 4 consecutive columns.
template <class Cfg>
__device__ __forceinline__ void store_tile(float* out, int ld, int M, int N, int m0, int n0, int tx, int ty,
                                           const float (&acc)[Cfg::TM][Cfg::TN], const float* bias, bool vec,
                                           bool relu = false) {
#pragma unroll
  for (int i = 0; i < Cfg::TM; ++i) {
    const int m = m0 + row_of<Cfg>(ty, i);
    if (m >= M) continue;
    float* row = out + int64_t(m) * ld;
#pragma unroll
    for (int jb = 0; jb < Cfg::TN / 4; ++jb) {
      const int n = n0 + col_of<Cfg>(tx, 4 * jb);
      float v[4];
#pragma unroll
      for (int l = 0; l < 4; ++l) v[l] = epilogue(acc[i][4 * jb + l] + (bias && n + l < N ? bias[n + l] : 0.0f), relu);
      if (vec && n + 3 < N) {
        *reinterpret_cast<float4*>(row + n) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
#pragma unroll
        for (int l = 0; l < 4; ++l)
          if (n + l < N) row[n + l] = v[l];
      }
    }
  }
}

// k-tiles [begin, end) of split `split` when `ktiles` are cut into `splits` equal runs.
__device__ __forceinline__ void split_range(int ktiles, int splits, int split, int& begin, int& end) {
  const int per = (ktiles + splits - 1) / splits;
  begin = min(ktiles, split * per);
  end = min(ktiles, begin + per);
}

}  // namespace alexnet::kernels::tile
