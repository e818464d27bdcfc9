// The tile engine of the tensor-core kernels (gemm_tc.cu, and conv.cu's tensor-core
// forward): a 64 x 64 block tile of FP32 accumulators, k-tiles of 32, 128 threads = 4 warps
// in 2 x 2, each warp 32 x 32 = 2 (m16) x 4 (n8) mma.sync tiles (common/mma_sync.h).
//
// An operand is a *source*: it stages one k-tile of op(X) (rows mn0..mn0+63 of the product,
// k0..k0+31) into each thread's registers and says which dimension is contiguous in memory
// and what its elements are in memory:
//   using Mem;                                           float or uint16_t (BF16 bits)
//   static constexpr bool K_CONTIG;                      consecutive threads on consecutive k
//   __device__ void load(int k0, Mem (&r)[kPer]) const;  element j of this thread: tile_pos
// (0 outside the operand). tc_mainloop stores the registers into shared tiles As[m][k] and
// Bs[n][k] (k-contiguous rows padded by 16 bytes, so every fragment register is one 32-bit
// shared load and the 32 lanes of a load hit 32 banks), converting as it stores (Tc::stage:
// TF32 with cvt.rna; at BF16 a float operand, the FP32 master weights, to nearest even, BF16
// bits as they are), then runs the mma.sync of each k-step; the next k-tile's loads are
// issued before the current tile's mma (one tile in flight), and converted only after it.
#pragma once

#include "common/mma_sync.h"
#include "common/storage.cuh"
#include "kernels/gemm.cuh"

namespace alexnet::kernels::tc {

using mma::Coord;

constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 128;
constexpr int kPer = kBM * kBK / kThreads;  // elements of each operand a thread stages per k-tile

// What differs between the precisions: the element of an operand in memory (In; at BF16 a
// source may also hold float, which stage rounds), in shared memory (S), the k of one
// instruction, and how a fragment register is read from a shared tile.
template <Precision P>
struct Tc;

template <>
struct Tc<Precision::kTF32> {
  using In = float;
  using S = uint32_t;
  static constexpr int KS = 8, LDS = kBK + 4;  // row pitch 36 words: rows 4 banks apart
  __device__ __forceinline__ static S stage(In v) { return mma::to_tf32(v); }
  // Register r of the A (rows row0..row0+15) or B (columns col0..col0+7) fragment at k0.
  __device__ __forceinline__ static uint32_t a(const S* As, int row0, int k0, int lane, int r) {
    const mma::Coord p = mma::tf32_a(lane, r);
    return As[(row0 + p.row) * LDS + k0 + p.col];
  }
  __device__ __forceinline__ static uint32_t b(const S* Bs, int col0, int k0, int lane, int r) {
    const mma::Coord p = mma::tf32_b(lane, r);
    return Bs[(col0 + p.col) * LDS + k0 + p.row];
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma::mma_tf32_m16n8k8(d, a, b, d);
  }
};

template <>
struct Tc<Precision::kBF16> {
  using In = uint16_t;
  using S = uint16_t;
  static constexpr int KS = 16, LDS = kBK + 8;  // row pitch 20 words: 8 rows x 4 words hit 32 banks
  __device__ __forceinline__ static S stage(In v) { return v; }
  // An FP32 operand (the master weights): rounded to nearest even here, as bf16_bits does.
  __device__ __forceinline__ static S stage(float v) { return storage::narrow<uint16_t>(v); }
  // A register holds elements 2r and 2r+1 of the fragment: adjacent k, one 32-bit load.
  __device__ __forceinline__ static uint32_t a(const S* As, int row0, int k0, int lane, int r) {
    const mma::Coord p = mma::bf16_a(lane, 2 * r);
    return *reinterpret_cast<const uint32_t*>(As + (row0 + p.row) * LDS + k0 + p.col);
  }
  __device__ __forceinline__ static uint32_t b(const S* Bs, int col0, int k0, int lane, int r) {
    const mma::Coord p = mma::bf16_b(lane, 2 * r);
    return *reinterpret_cast<const uint32_t*>(Bs + (col0 + p.col) * LDS + k0 + p.row);
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma::mma_bf16_m16n8k16(d, a, b, d);
  }
};

// Element e (0 <= e < kBM * kBK) of a k-tile of an operand with `MN` rows of op():
// (mn, k) within the tile, consecutive e along the operand's contiguous dimension.
template <int MN, bool K_CONTIG>
__device__ __forceinline__ void tile_pos(int e, int& mn, int& k) {
  mn = K_CONTIG ? e / kBK : e % MN;
  k = K_CONTIG ? e % kBK : e / MN;
}

// A dense operand: op(X)[mn, k] = X[mn * ld + k] when K_CONTIG_, else X[k * ld + mn], for
// rows mn0.. of MNmax (and k < K); 0 outside.
template <class In, int MN, bool K_CONTIG_>
struct DenseSrc {
  using Mem = In;
  static constexpr bool K_CONTIG = K_CONTIG_;
  const In* __restrict__ X;
  int ld, MNmax, K, mn0;
  __device__ __forceinline__ void load(int k0, In (&r)[kPer]) const {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      int mn, k;
      tile_pos<MN, K_CONTIG>(threadIdx.x + kThreads * j, mn, k);
      const int gm = mn0 + mn, gk = k0 + k;
      r[j] = gm < MNmax && gk < K ? X[K_CONTIG ? int64_t(gm) * ld + gk : int64_t(gk) * ld + gm] : In(0);
    }
  }
};

template <Precision P, int MN, bool K_CONTIG, class Mem>
__device__ __forceinline__ void store_tile(const Mem (&r)[kPer], typename Tc<P>::S* tile) {
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    int mn, k;
    tile_pos<MN, K_CONTIG>(threadIdx.x + kThreads * j, mn, k);
    tile[mn * Tc<P>::LDS + k] = Tc<P>::stage(r[j]);
  }
}


// The block's product over k-tiles [kt0, kt1): acc[mi][ni] is the mma tile (mi, ni) of this
// thread's warp (tc_store gives each element's place in the block tile).
template <Precision P, class SA, class SB>
__device__ __forceinline__ void tc_mainloop(const SA& la, const SB& lb, int kt0, int kt1, typename Tc<P>::S* As,
                                            typename Tc<P>::S* Bs, float (&acc)[2][4][4]) {
  using T = Tc<P>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  typename SA::Mem ra[kPer];
  typename SB::Mem rb[kPer];
  if (kt0 < kt1) {
    la.load(kt0 * kBK, ra);
    lb.load(kt0 * kBK, rb);
  }
  for (int kt = kt0; kt < kt1; ++kt) {
    store_tile<P, kBM, SA::K_CONTIG>(ra, As);
    store_tile<P, kBN, SB::K_CONTIG>(rb, Bs);
    __syncthreads();
    if (kt + 1 < kt1) {  // the next tile's loads are in flight during this tile's mma
      la.load((kt + 1) * kBK, ra);
      lb.load((kt + 1) * kBK, rb);
    }
#pragma unroll
    for (int k0 = 0; k0 < kBK; k0 += T::KS) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int r = 0; r < 4; ++r) a[mi][r] = T::a(As, wm + 16 * mi, k0, lane, r);
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int r = 0; r < 2; ++r) b[ni][r] = T::b(Bs, wn + 8 * ni, k0, lane, r);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) T::mma(acc[mi][ni], a[mi], b[ni]);
    }
    __syncthreads();
  }
}

// f(m, n, v) for each of this thread's accumulators v (a reference into acc), (m, n) its place in
// the 64 x 64 block tile (rows: the product's M, columns: its N).
template <class Acc, class F>
__device__ __forceinline__ void tc_each(Acc& acc, F&& f) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const Coord p = mma::acc(lane, i);
        f((warp >> 1) * 32 + 16 * mi + p.row, (warp & 1) * 32 + 8 * ni + p.col, acc[mi][ni][i]);
      }
}

// acc[.][.][i] = f(m, n, acc[.][.][i]): an epilogue step before the store that reads memory
// (conv_tc.cu's relu_input fold), with no store between its loads, so they are all in flight at once.
template <class F>
__device__ __forceinline__ void tc_map(float (&acc)[2][4][4], F&& f) {
  tc_each(acc, [&](int m, int n, float& v) { v = f(m, n, v); });
}

// The epilogue: out(m, n, v) for each of this thread's accumulators.
template <class Out>
__device__ __forceinline__ void tc_store(const float (&acc)[2][4][4], Out&& out) {
  tc_each(acc, [&](int m, int n, const float& v) { out(m, n, v); });
}

}  // namespace alexnet::kernels::tc
