// Tensor-core GEMM for the fully connected layers at TF32 and BF16: the same products as
// gemm.cu's FP32 versions (forward y = x w^T + b, data dx = dy w, weight dw = dy^T x, with
// the same transposes and the same split-K), on mma.sync through common/mma_sync.h.
//
// Math:    C[m, n] = sum_k op(A)[m, k] * op(B)[k, n] (+ bias[n]), op as in gemm.cuh; with `relu`,
//          max(0, that) in the last pass (tile::epilogue, as gemm.cu).
//          TF32: A and B are FP32 in memory; each element is rounded with cvt.rna.tf32.f32
//          when it is staged into shared memory. BF16: A and B are BF16 in memory (uint16
//          bit patterns), staged as they are; or B is FP32 (the master weights of the forward
//          and data GEMMs), each element rounded to nearest even as it is staged (no pass of
//          its own). Products are exact in FP32, accumulation is FP32 (mma.sync, k in steps of
//          16 (BF16) or 8 (TF32) per instruction). C's storage T: FP32, or BF16 at BF16 (the
//          FP32 epilogue value rounded once to nearest even on store: storage::store, in the
//          tile's store or in splitk_reduce; split partials are FP32).
// Layout:  row-major, C's leading dimension N; lda and ldb as in gemm.cuh.
//
// version 1: the tile engine of tc_tile.cuh: block tile 64 (m) x 64 (n) x 32 (k), 128
//            threads = 4 warps in 2 x 2, each warp 32 x 32 = 2 (m16) x 4 (n8) mma tiles (32
//            FP32 accumulators per thread); global -> registers -> shared with one k-tile in
//            flight; guarded scalar loads, coalesced along each operand's contiguous
//            dimension (the transposes are template flags). Split-K exactly as gemm.cu
//            version 2: blockIdx.z takes a contiguous run of k-tiles and writes a partial C to
//            the workspace; splitk_reduce adds them in split order (deterministic) with the bias.
// version 2: BF16 only, the same block tile, warps, split-K and epilogue (store_block) on the
//            pipelined engine of tc_tile_async.cuh: 16-byte cp.async global -> shared (no
//            registers, three stages: two k-tiles in flight), padded shared rows, fragments by
//            ldmatrix.x4 (.trans for an operand with k across its shared rows). A and B must
//            be 16-byte aligned, lda, ldb and the extents along A's and B's contiguous
//            dimensions multiples of 8 (gemm_tc_unsupported; for the linear layers: the
//            input and output features); the other dimensions are arbitrary. Each
//            accumulator gets the same mma in the same order as in version 1, so with the
//            same splits C is the same.
// Threads: grid (ceil(N/64), ceil(M/64), splits), 128 threads. Edges guarded: any M, N, K.
// Constraints: M, N, K < 2^31; M * N * splits floats of workspace when splits > 1.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/launch.h"
#include "common/storage.cuh"
#include "kernels/gemm.cuh"
#include "kernels/gemm_tile.cuh"
#include "kernels/tc_tile.cuh"
#include "kernels/tc_tile_async.cuh"

namespace alexnet::kernels {
namespace {

using namespace tc;

// The epilogue of every version: block (m0, n0)'s accumulators into C (+ bias, ReLU; C's storage T:
// the FP32 value rounded once on store for BF16), or, when the reduction is split (gridDim.z > 1),
// into split blockIdx.z's FP32 partial in `work` (splitk_reduce adds them, the bias and the ReLU).
template <class T>
__device__ __forceinline__ void store_block(const float (&acc)[2][4][4], int M, int N, int m0, int n0,
                                            T* __restrict__ C, const float* __restrict__ bias,
                                            float* __restrict__ work, bool relu) {
  const int splits = gridDim.z, split = blockIdx.z;
  float* part = work + int64_t(split) * M * N;  // used only when splits > 1
  const float* bs = splits > 1 ? nullptr : bias;
  tc_store(acc, [&](int dm, int dn, float v) {
    const int m = m0 + dm, n = n0 + dn;
    if (m >= M || n >= N) return;
    const float e = tile::epilogue(v + (bs ? bs[n] : 0.0f), relu && splits == 1);
    if (splits > 1) part[int64_t(m) * N + n] = e;
    else storage::store(C, int64_t(m) * N + n, e);
  });
}

template <Precision P, bool TA, bool TB, class MB, class T>
__global__ void __launch_bounds__(kThreads)
    gemm_tc_v1(int M, int N, int K, const typename Tc<P>::In* __restrict__ A, int lda, const MB* __restrict__ B,
               int ldb, T* __restrict__ C, const float* __restrict__ bias, float* __restrict__ work, bool relu) {
  using In = typename Tc<P>::In;
  __shared__ __align__(16) typename Tc<P>::S As[kBM * Tc<P>::LDS];
  __shared__ __align__(16) typename Tc<P>::S Bs[kBN * Tc<P>::LDS];
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int splits = gridDim.z, split = blockIdx.z;
  int kt0, kt1;
  tile::split_range((K + kBK - 1) / kBK, splits, split, kt0, kt1);
  const DenseSrc<In, kBM, !TA> la{A, lda, M, K, m0};
  const DenseSrc<MB, kBN, TB> lb{B, ldb, N, K, n0};
  float acc[2][4][4] = {};
  tc_mainloop<P>(la, lb, kt0, kt1, As, Bs, acc);
  store_block(acc, M, N, m0, n0, C, bias, work, relu);
}

template <Precision P, bool TA, bool TB, class MB, class T>
void launch_tc(int M, int N, int K, const void* A, int lda, const void* B, int ldb, T* C, const float* bias,
               float* work, int splits, bool relu, cudaStream_t stream) {
  using In = typename Tc<P>::In;
  const dim3 grid(ceil_div(N, kBN), ceil_div(M, kBM), unsigned(splits));
  auto kernel = gemm_tc_v1<P, TA, TB, MB, T>;
  LAUNCH(kernel, grid, dim3(kThreads), 0, stream, M, N, K, static_cast<const In*>(A), lda,
         static_cast<const MB*>(B), ldb, C, bias, work, relu);
}

template <Precision P, class MB, class T>
void launch_tc_trans(bool ta, bool tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb, T* C,
                     const float* bias, float* work, int splits, bool relu, cudaStream_t stream) {
  if (!ta && !tb) launch_tc<P, false, false, MB>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
  else if (!ta && tb) launch_tc<P, false, true, MB>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
  else if (ta && !tb) launch_tc<P, true, false, MB>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
  else launch_tc<P, true, true, MB>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
}

// Version 2 (BF16 only): tc_tile_async.cuh's engine, the same grid, split and epilogue.
// The launch bound's 4 blocks per SM: without it ptxas (13.0) holds the kernel to 72
// registers (7 blocks, as many as its 30 KB of shared memory allow) and spills one register
// in one of the transposes; with it, about 95 registers (5 blocks) and no spill.
template <bool TA, bool TB, class T>
__global__ void __launch_bounds__(kThreads, 4)
    gemm_tc_v2(int M, int N, int K, const uint16_t* __restrict__ A, int lda, const uint16_t* __restrict__ B, int ldb,
               T* __restrict__ C, const float* __restrict__ bias, float* __restrict__ work, bool relu) {
  using SA = AsyncDenseSrc<!TA>;
  using SB = AsyncDenseSrc<TB>;
  __shared__ __align__(16) uint16_t As[kStages * SA::Tile::SIZE];
  __shared__ __align__(16) uint16_t Bs[kStages * SB::Tile::SIZE];
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  int kt0, kt1;
  tile::split_range((K + kBK - 1) / kBK, gridDim.z, blockIdx.z, kt0, kt1);
  const SA la{static_cast<const uint16_t*>(A), lda, M, K, m0};
  const SB lb{static_cast<const uint16_t*>(B), ldb, N, K, n0};
  float acc[2][4][4] = {};
  tc_async_mainloop(la, lb, kt0, kt1, As, Bs, acc);
  store_block(acc, M, N, m0, n0, C, bias, work, relu);
}

template <bool TA, bool TB, class T>
void launch_tc_v2(int M, int N, int K, const void* A, int lda, const void* B, int ldb, T* C, const float* bias,
                  float* work, int splits, bool relu, cudaStream_t stream) {
  const dim3 grid(ceil_div(N, kBN), ceil_div(M, kBM), unsigned(splits));
  auto kernel = gemm_tc_v2<TA, TB, T>;
  LAUNCH(kernel, grid, dim3(kThreads), 0, stream, M, N, K, static_cast<const uint16_t*>(A), lda,
         static_cast<const uint16_t*>(B), ldb, C, bias, work, relu);
}

template <class T>
void launch_tc_v2_trans(bool ta, bool tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb,
                        T* C, const float* bias, float* work, int splits, bool relu, cudaStream_t stream) {
  if (!ta && !tb) launch_tc_v2<false, false, T>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
  else if (!ta && tb) launch_tc_v2<false, true, T>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
  else if (ta && !tb) launch_tc_v2<true, false, T>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
  else launch_tc_v2<true, true, T>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
}

// Blocks of `version` resident on the whole GPU at once (the BF16 forward kernel's occupancy).
int tc_slots(int version) {
  int per_sm = 0;
  if (version == 2)
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemm_tc_v2<false, true, float>, kThreads, 0));
  else
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, gemm_tc_v1<Precision::kBF16, false, true, uint16_t, float>, kThreads, 0));
  return std::max(1, per_sm) * device_sm_count();
}

}  // namespace

SplitPlan gemm_tc_plan(int M, int N, int K, int version, int splits) {
  check_version("gemm_tc", version, kGemmTcBF16Versions);  // the longer list; gemm_tc checks the precision's
  SplitPlan plan;
  if (M <= 0 || N <= 0) return plan;
  const int64_t tiles = int64_t(ceil_div(M, kBM)) * ceil_div(N, kBN);
  const int ktiles = int(ceil_div(K, kBK));
  // Whole waves of blocks; at least 16 k-tiles (512 terms) per split.
  int s = splits > 0 ? splits : balanced_splits(tiles, ktiles, tc_slots(version == 0 ? 1 : version), 16, 1024);
  s = std::max(1, std::min({s, ktiles, 1024}));
  plan.splits = s;
  plan.workspace = s > 1 ? int64_t(s) * M * N : 0;
  return plan;
}

std::string gemm_tc_unsupported(int version, bool ta, bool tb, int M, int N, int K, const void* A, int lda,
                                const char* a, const void* B, int ldb, const char* b) {
  if (version != 2) return "";
  const std::string need = "version 2 (16-byte cp.async) needs 16-byte aligned operands with rows of a multiple of "
                           "8 elements: ";
  const int ea = ta ? M : K, eb = tb ? K : N;  // the extents along the contiguous dimensions
  if (lda % 8) return need + a + " has rows of " + std::to_string(lda) + " elements";
  if (ldb % 8) return need + b + " has rows of " + std::to_string(ldb) + " elements";
  if (ea % 8) return need + "the product uses " + std::to_string(ea) + " elements of each row of " + a;
  if (eb % 8) return need + "the product uses " + std::to_string(eb) + " elements of each row of " + b;
  if (!aligned(A, 16)) return need + a + " is not 16-byte aligned";
  if (!aligned(B, 16)) return need + b + " is not 16-byte aligned";
  return "";
}

template <class T>
void gemm_tc(Precision p, bool ta, bool tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb,
             T* C, const float* bias, float* work, int64_t work_floats, int version, int splits,
             cudaStream_t stream, bool relu, bool b_fp32) {
  constexpr bool kBF16Out = std::is_same_v<T, uint16_t>;
  if (p == Precision::kFP32) throw std::invalid_argument("gemm_tc: fp32 runs on gemm(), not on tensor cores");
  if (p != Precision::kBF16 && (kBF16Out || b_fp32))
    throw std::invalid_argument("gemm_tc: BF16 storage of C and FP32 B are for precision bf16");
  version = pick_version("gemm_tc", version, gemm_tc_versions(p), 1);
  if (version == 2 && b_fp32)
    throw std::invalid_argument("gemm_tc: version 2 copies BF16 operands as they are (cp.async): B must be BF16 "
                                "bits, not FP32");
  const std::string why = gemm_tc_unsupported(version, ta, tb, M, N, K, A, lda, "A", B, ldb, "B");
  if (!why.empty()) throw std::invalid_argument("gemm_tc: " + why);
  if (M <= 0 || N <= 0) return;
  const SplitPlan plan = gemm_tc_plan(M, N, K, version, splits);
  if (plan.workspace > work_floats)
    throw std::invalid_argument("gemm_tc: the workspace holds " + std::to_string(work_floats) + " floats, " +
                                std::to_string(plan.workspace) + " needed");
  if (version == 2) {
    launch_tc_v2_trans(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, relu, stream);
  } else {
    if constexpr (!kBF16Out) {
      if (p == Precision::kTF32)
        launch_tc_trans<Precision::kTF32, float>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, relu,
                                                 stream);
    }
    if (p == Precision::kBF16) {
      if (b_fp32)
        launch_tc_trans<Precision::kBF16, float>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, relu,
                                                 stream);
      else
        launch_tc_trans<Precision::kBF16, uint16_t>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits,
                                                    relu, stream);
    }
  }
  if (plan.splits > 1) splitk_reduce(work, plan.splits, int64_t(M) * N, C, bias, N, stream, relu);
}

// C's storage types: float (TF32, BF16) and uint16_t (BF16 bits; precision bf16 only).
template void gemm_tc<float>(Precision, bool, bool, int, int, int, const void*, int, const void*, int, float*,
                             const float*, float*, int64_t, int, int, cudaStream_t, bool, bool);
template void gemm_tc<uint16_t>(Precision, bool, bool, int, int, int, const void*, int, const void*, int, uint16_t*,
                                const float*, float*, int64_t, int, int, cudaStream_t, bool, bool);

}  // namespace alexnet::kernels
