// The pipelined tile engine of the BF16 tensor-core GEMM (gemm_tc.cu version 2): the block
// tile, warps and accumulators of tc_tile.cuh (64 x 64 block tile, k-tiles of 32, 128 threads
// = 4 warps in 2 x 2, each warp 32 x 32 = 2 (m16) x 4 (n8) mma.sync m16n8k16 tiles, the same
// acc[2][4][4], so tc_store and the kernels' epilogue are shared), fed another way:
//
//   global -> shared  16-byte cp.async (common/async_copy.h), 8 BF16 of an operand's contiguous
//                     dimension per copy, no registers; kStages = 3 shared stages, so the
//                     copies of k-tiles kt+1 and kt+2 are in flight while k-tile kt is multiplied.
//   shared -> regs    ldmatrix.x4 (common/mma_sync.h): one instruction per A fragment (16 x 16)
//                     and one per two B fragments (16 x 8 each); .trans when the operand's tile
//                     has k across rows (m- or n-contiguous in memory).
//
// An operand (AsyncDenseSrc) is BF16 bits, op(X)[mn, k] = X[mn * ld + k] (K_CONTIG) or
// X[k * ld + mn]; it must be 16-byte aligned, with ld and its extent along the contiguous
// dimension (K, or MNmax) multiples of 8 (the dispatcher checks): then every 16-byte chunk of
// a row starts 16-byte aligned and lies wholly inside the operand or wholly outside, where
// the copy reads nothing and zero-fills its 16 bytes (cp.async's src-size 0). The other
// dimension is arbitrary (rows mn >= MNmax, or k >= K, are zero).
//
// Shared layout of one operand's stage (padding, not a swizzle):
//   K_CONTIG:  [64 mn][32 k + 8]  rows of 80 bytes   (ldmatrix reads 8 rows of 16 bytes
//   else:      [32 k][64 mn + 8]  rows of 144 bytes   at one column: 5r resp. 9r mod 8
//   distinct 16-byte bank quads for r = 0..7, so each 8 x 8 matrix is one conflict-free
//   wavefront; a warp's 32 cp.async stores cover each quad 4 times, the minimum for 512 bytes).
// Padding keeps the address arithmetic a multiply-add and costs 16 bytes per row (25% resp.
// 12.5%): 3 stages of A and B are at most 30 KB, under the 48 KB of static shared memory. An
// XOR swizzle would save that space but needs the same XOR in every cp.async and ldmatrix address.
//
// The pipeline (one barrier per k-tile), for tiles kt0..kt1-1, stage = tile index mod 3:
//   prologue:  copy tiles kt0, kt0+1; commit each (an empty group when past kt1)
//   tile kt:   wait until at most 1 group is pending (this thread's copies of kt have landed);
//              __syncthreads (everyone's have; every warp is done with tile kt-1's stage);
//              copy tile kt+2 into that stage; commit; ldmatrix + mma over tile kt.
// The mma run in the same order as tc_mainloop's (k-tiles, then k-steps of 16), on the same
// values, so each accumulator receives the same sums in the same order as version 1.
#pragma once

#include <cstdint>

#include "common/async_copy.h"
#include "common/mma_sync.h"
#include "kernels/tc_tile.cuh"

namespace alexnet::kernels::tc {

constexpr int kStages = 3;
static_assert(kBM == kBN, "one tile geometry serves A and B");

// One stage of an operand's shared tile (uint16 BF16 bits).
template <bool K_CONTIG>
struct AsyncTile {
  static constexpr int ROWS = K_CONTIG ? kBM : kBK;
  static constexpr int COLS = K_CONTIG ? kBK : kBM;  // along the operand's contiguous dimension
  static constexpr int LD = COLS + 8;                // 16 bytes of padding per row
  static constexpr int SIZE = ROWS * LD;
  static constexpr int CHUNKS = ROWS * COLS / 8;     // 16-byte copies per stage
  static_assert(CHUNKS % kThreads == 0 && (LD * 2) % 16 == 0 && (SIZE * 2) % 16 == 0, "16-byte rows and stages");

  // The address of the row of an 8 x 8 matrix whose top-left element is (mn, k) of the tile
  // that ldmatrix lane `r` (0..7) supplies: rows along mn when K_CONTIG (read plain), along k
  // otherwise (read with .trans).
  __device__ __forceinline__ static const uint16_t* row(const uint16_t* t, int mn, int k, int r) {
    return K_CONTIG ? t + (mn + r) * LD + k : t + (k + r) * LD + mn;
  }
  __device__ __forceinline__ static void load(uint32_t (&v)[4], const uint16_t* p) {
    if (K_CONTIG) mma::ldmatrix_x4(v, p);
    else mma::ldmatrix_x4_trans(v, p);
  }
};

template <bool K_CONTIG_>
struct AsyncDenseSrc {
  static constexpr bool K_CONTIG = K_CONTIG_;
  using Tile = AsyncTile<K_CONTIG>;
  const uint16_t* __restrict__ X;
  int ld, MNmax, K, mn0;
};

// This thread's 16-byte copies of an operand's k-tiles, one tile after another from k-tile
// kt0: chunk c = threadIdx.x + 128 j of a stage is row c / (COLS / 8), elements
// 8 (c % (COLS / 8)).. of it (consecutive threads on consecutive 16 bytes of a row: a warp
// reads 8 rows x 64 bytes (K_CONTIG) or 4 rows x 128). What does not change from tile to
// tile is worked out once: each chunk's source advances by one k-tile per copy, and whether
// it lies inside the operand is one comparison of the tile's k. (The source of a chunk
// outside may point past the operand; cp.async with src-size 0 does not read it.)
template <class Src>
struct AsyncCopier {
  using Tile = typename Src::Tile;
  static constexpr bool K_CONTIG = Src::K_CONTIG;
  static constexpr int N = Tile::CHUNKS / kThreads, PER_ROW = Tile::COLS / 8;
  const uint16_t* src[N];
  int dst[N];      // offset in the stage
  int klimit[N];   // inside while the tile's k0 < klimit (the chunk's row or column inside)
  int64_t step;    // elements from one k-tile to the next
  int k0;

  __device__ __forceinline__ AsyncCopier(const Src& s, int kt0) : k0(kt0 * kBK) {
    step = K_CONTIG ? kBK : int64_t(kBK) * s.ld;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int c = threadIdx.x + kThreads * j, r = c / PER_ROW, e = 8 * (c % PER_ROW);
      const int gmn = s.mn0 + (K_CONTIG ? r : e), dk = K_CONTIG ? e : r;  // dk: the chunk's k in the tile
      src[j] = s.X + (K_CONTIG ? int64_t(gmn) * s.ld + dk : int64_t(dk) * s.ld + gmn) + k0 * (step / kBK);
      dst[j] = r * Tile::LD + e;
      klimit[j] = gmn < s.MNmax ? s.K - dk : INT32_MIN;
    }
  }

  // Copies the next k-tile into the stage `t` (zero-filling the chunks outside the operand).
  __device__ __forceinline__ void copy(uint16_t* t) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const bool inside = k0 < klimit[j];
      async_copy_16(t + dst[j], src[j], inside ? 16 : 0);  // outside: nothing read
      src[j] += step;
    }
    k0 += kBK;
  }
};

// The A fragment (rows m0..m0+15, k0..k0+15) of mma.m16n8k16 in one ldmatrix.x4: matrix i
// is the quarter (rows 8 (i & 1), columns 8 (i >> 1)), i.e. registers a0..a3.
template <class Tile>
__device__ __forceinline__ void frag_a(const uint16_t* t, int m0, int k0, int lane, uint32_t (&a)[4]) {
  const int i = lane >> 3;
  Tile::load(a, Tile::row(t, m0 + 8 * (i & 1), k0 + 8 * (i >> 1), lane & 7));
}

// The B fragments of columns n0..n0+7 (b0) and n0+8..n0+15 (b1), k0..k0+15, in one
// ldmatrix.x4: matrix i is (columns 8 (i >> 1), k 8 (i & 1)), i.e. b0[0], b0[1], b1[0], b1[1].
template <class Tile>
__device__ __forceinline__ void frag_b2(const uint16_t* t, int n0, int k0, int lane, uint32_t (&b0)[2],
                                        uint32_t (&b1)[2]) {
  const int i = lane >> 3;
  uint32_t v[4];
  Tile::load(v, Tile::row(t, n0 + 8 * (i >> 1), k0 + 8 * (i & 1), lane & 7));
  b0[0] = v[0];
  b0[1] = v[1];
  b1[0] = v[2];
  b1[1] = v[3];
}

// The block's product over k-tiles [kt0, kt1), as tc_mainloop<kBF16>. As and Bs hold kStages
// stages of SA's and SB's tiles.
template <class SA, class SB>
__device__ __forceinline__ void tc_async_mainloop(const SA& la, const SB& lb, int kt0, int kt1, uint16_t* As,
                                                  uint16_t* Bs, float (&acc)[2][4][4]) {
  using TA = typename SA::Tile;
  using TB = typename SB::Tile;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  AsyncCopier<SA> ca(la, kt0);
  AsyncCopier<SB> cb(lb, kt0);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (kt0 + s < kt1) {
      ca.copy(As + s * TA::SIZE);
      cb.copy(Bs + s * TB::SIZE);
    }
    async_commit();
  }
  int rs = 0;  // the stage read in this iteration; the one written is the one before it
  for (int kt = kt0; kt < kt1; ++kt) {
    async_wait_pending<kStages - 2>();
    __syncthreads();
    const int ws = rs == 0 ? kStages - 1 : rs - 1;
    if (kt + kStages - 1 < kt1) {  // k-tile kt + 2, the copiers' next
      ca.copy(As + ws * TA::SIZE);
      cb.copy(Bs + ws * TB::SIZE);
    }
    async_commit();
    const uint16_t* at = As + rs * TA::SIZE;
    const uint16_t* bt = Bs + rs * TB::SIZE;
#pragma unroll
    for (int k0 = 0; k0 < kBK; k0 += 16) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) frag_a<TA>(at, wm + 16 * mi, k0, lane, a[mi]);
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) frag_b2<TB>(bt, wn + 16 * nj, k0, lane, b[2 * nj], b[2 * nj + 1]);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma::mma_bf16_m16n8k16(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
    }
    rs = rs == kStages - 1 ? 0 : rs + 1;
  }
  async_wait_pending<0>();  // only empty groups remain; leave none behind
}

}  // namespace alexnet::kernels::tc
