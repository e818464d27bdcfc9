// Tensor-core GEMM for the fully connected layers at TF32 and BF16: the same products as
// gemm.cu's FP32 versions (forward y = x w^T + b, data dx = dy w, weight dw = dy^T x, with
// the same transposes and the same split-K), on mma.sync through common/mma_sync.h.
//
// Math:    C[m, n] = sum_k op(A)[m, k] * op(B)[k, n] (+ bias[n]), op as in gemm.cuh.
//          TF32: A and B are FP32 in memory; each element is rounded with cvt.rna.tf32.f32
//          when it is staged into shared memory. BF16: A and B are BF16 in memory (uint16
//          bit patterns), staged as they are. Products are exact in FP32, accumulation is
//          FP32 (mma.sync, k in steps of 16 (BF16) or 8 (TF32) per instruction), C is FP32.
// Layout:  row-major, C's leading dimension N; lda and ldb as in gemm.cuh.
//
// version 1: block tile 64 (m) x 64 (n) x 32 (k), 128 threads = 4 warps in 2 x 2, each warp
//            32 x 32 = 2 (m16) x 4 (n8) mma tiles, 32 FP32 accumulators per thread.
//            Global -> registers -> shared memory with the next k-tile's loads issued before
//            the current tile's mma (one tile in flight); guarded scalar loads, coalesced
//            along the operand's contiguous dimension (the transposes are template flags).
//            Shared tiles are stored k-contiguous per row of A and per column of B
//            (As[m][k], Bs[n][k]) with a pad of 16 bytes per row, so each fragment register
//            is one 32-bit shared load and the 32 lanes of a load hit 32 different banks.
//            Fragments are read through mma_sync.h's coordinate functions.
//            Split-K exactly as gemm.cu version 2: blockIdx.z takes a contiguous run of
//            k-tiles and writes a partial C to the workspace, splitk_reduce adds them in
//            split order (deterministic) with the bias.
// Threads: grid (ceil(N/64), ceil(M/64), splits), 128 threads. Edges guarded: any M, N, K.
// Constraints: M, N, K < 2^31; M * N * splits floats of workspace when splits > 1.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/launch.h"
#include "common/mma_sync.h"
#include "kernels/gemm.cuh"
#include "kernels/gemm_tile.cuh"

namespace alexnet::kernels {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 128;
constexpr int kPer = kBM * kBK / kThreads;  // elements of each operand a thread stages per k-tile

// What differs between the precisions: the element in memory (In), in shared memory (S),
// the k of one instruction, and how a fragment register is read from a shared tile.
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

// op(X)[mn, k] for the rows mn0.. of one k-tile at k0, or 0 outside (MN x K): X[mn * ld + k]
// when K_CONTIG, else X[k * ld + mn].
template <class In, int MN, bool K_CONTIG>
__device__ __forceinline__ void load_tile(const In* __restrict__ X, int ld, int MNmax, int K, int mn0, int k0,
                                          In (&r)[kPer]) {
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    int mn, k;
    tile_pos<MN, K_CONTIG>(threadIdx.x + kThreads * j, mn, k);
    const int gm = mn0 + mn, gk = k0 + k;
    r[j] = gm < MNmax && gk < K ? X[K_CONTIG ? int64_t(gm) * ld + gk : int64_t(gk) * ld + gm] : In(0);
  }
}

template <Precision P, int MN, bool K_CONTIG>
__device__ __forceinline__ void store_tile(const typename Tc<P>::In (&r)[kPer], typename Tc<P>::S* tile) {
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    int mn, k;
    tile_pos<MN, K_CONTIG>(threadIdx.x + kThreads * j, mn, k);
    tile[mn * Tc<P>::LDS + k] = Tc<P>::stage(r[j]);
  }
}

template <Precision P, bool TA, bool TB>
__global__ void __launch_bounds__(kThreads)
    gemm_tc_v1(int M, int N, int K, const typename Tc<P>::In* __restrict__ A, int lda,
               const typename Tc<P>::In* __restrict__ B, int ldb, float* __restrict__ C,
               const float* __restrict__ bias, float* __restrict__ work) {
  using T = Tc<P>;
  __shared__ __align__(16) typename T::S As[kBM * T::LDS];
  __shared__ __align__(16) typename T::S Bs[kBN * T::LDS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int splits = gridDim.z, split = blockIdx.z;
  int kt0, kt1;
  tile::split_range((K + kBK - 1) / kBK, splits, split, kt0, kt1);

  typename T::In ra[kPer], rb[kPer];
  float acc[2][4][4] = {};
  if (kt0 < kt1) {
    load_tile<typename T::In, kBM, !TA>(A, lda, M, K, m0, kt0 * kBK, ra);
    load_tile<typename T::In, kBN, TB>(B, ldb, N, K, n0, kt0 * kBK, rb);
  }
  for (int kt = kt0; kt < kt1; ++kt) {
    store_tile<P, kBM, !TA>(ra, As);
    store_tile<P, kBN, TB>(rb, Bs);
    __syncthreads();
    if (kt + 1 < kt1) {  // the next tile's loads are in flight during this tile's mma
      load_tile<typename T::In, kBM, !TA>(A, lda, M, K, m0, (kt + 1) * kBK, ra);
      load_tile<typename T::In, kBN, TB>(B, ldb, N, K, n0, (kt + 1) * kBK, rb);
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

  float* out = splits > 1 ? work + int64_t(split) * M * N : C;
  const float* bs = splits > 1 ? nullptr : bias;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const mma::Coord p = mma::acc(lane, i);
        const int m = m0 + wm + 16 * mi + p.row, n = n0 + wn + 8 * ni + p.col;
        if (m < M && n < N) out[int64_t(m) * N + n] = acc[mi][ni][i] + (bs ? bs[n] : 0.0f);
      }
}

template <Precision P, bool TA, bool TB>
void launch_tc(int M, int N, int K, const void* A, int lda, const void* B, int ldb, float* C, const float* bias,
               float* work, int splits, cudaStream_t stream) {
  using In = typename Tc<P>::In;
  const dim3 grid(ceil_div(N, kBN), ceil_div(M, kBM), unsigned(splits));
  auto kernel = gemm_tc_v1<P, TA, TB>;
  LAUNCH(kernel, grid, dim3(kThreads), 0, stream, M, N, K, static_cast<const In*>(A), lda,
         static_cast<const In*>(B), ldb, C, bias, work);
}

template <Precision P>
void launch_tc_trans(bool ta, bool tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb, float* C,
                     const float* bias, float* work, int splits, cudaStream_t stream) {
  if (!ta && !tb) launch_tc<P, false, false>(M, N, K, A, lda, B, ldb, C, bias, work, splits, stream);
  else if (!ta && tb) launch_tc<P, false, true>(M, N, K, A, lda, B, ldb, C, bias, work, splits, stream);
  else if (ta && !tb) launch_tc<P, true, false>(M, N, K, A, lda, B, ldb, C, bias, work, splits, stream);
  else launch_tc<P, true, true>(M, N, K, A, lda, B, ldb, C, bias, work, splits, stream);
}

int tc_slots() {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemm_tc_v1<Precision::kBF16, false, true>,
                                                           kThreads, 0));
  return std::max(1, per_sm) * device_sm_count();
}

}  // namespace

const char* precision_name(Precision p) {
  return p == Precision::kTF32 ? "tf32" : p == Precision::kBF16 ? "bf16" : "fp32";
}

SplitPlan gemm_tc_plan(int M, int N, int K, int version, int splits) {
  check_version("gemm_tc", version, kGemmTcVersions);
  SplitPlan plan;
  if (M <= 0 || N <= 0) return plan;
  const int64_t tiles = int64_t(ceil_div(M, kBM)) * ceil_div(N, kBN);
  const int ktiles = int(ceil_div(K, kBK));
  // Whole waves of blocks; at least 16 k-tiles (512 terms) per split.
  int s = splits > 0 ? splits : balanced_splits(tiles, ktiles, tc_slots(), 16, 1024);
  s = std::max(1, std::min({s, ktiles, 1024}));
  plan.splits = s;
  plan.workspace = s > 1 ? int64_t(s) * M * N : 0;
  return plan;
}

void gemm_tc(Precision p, bool ta, bool tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb,
             float* C, const float* bias, float* work, int64_t work_floats, int version, int splits,
             cudaStream_t stream) {
  if (p == Precision::kFP32) throw std::invalid_argument("gemm_tc: fp32 runs on gemm(), not on tensor cores");
  version = pick_version("gemm_tc", version, kGemmTcVersions, 1);
  if (M <= 0 || N <= 0) return;
  const SplitPlan plan = gemm_tc_plan(M, N, K, version, splits);
  if (plan.workspace > work_floats)
    throw std::invalid_argument("gemm_tc: the workspace holds " + std::to_string(work_floats) + " floats, " +
                                std::to_string(plan.workspace) + " needed");
  if (p == Precision::kTF32)
    launch_tc_trans<Precision::kTF32>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, stream);
  else
    launch_tc_trans<Precision::kBF16>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, stream);
  if (plan.splits > 1) splitk_reduce(work, plan.splits, int64_t(M) * N, C, bias, N, stream);
}

}  // namespace alexnet::kernels
