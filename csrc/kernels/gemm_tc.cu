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

namespace alexnet::kernels {
namespace {

using namespace tc;

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

int tc_slots() {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, gemm_tc_v1<Precision::kBF16, false, true, uint16_t, float>, kThreads, 0));
  return std::max(1, per_sm) * device_sm_count();
}

}  // namespace

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

template <class T>
void gemm_tc(Precision p, bool ta, bool tb, int M, int N, int K, const void* A, int lda, const void* B, int ldb,
             T* C, const float* bias, float* work, int64_t work_floats, int version, int splits,
             cudaStream_t stream, bool relu, bool b_fp32) {
  constexpr bool kBF16Out = std::is_same_v<T, uint16_t>;
  if (p == Precision::kFP32) throw std::invalid_argument("gemm_tc: fp32 runs on gemm(), not on tensor cores");
  if (p != Precision::kBF16 && (kBF16Out || b_fp32))
    throw std::invalid_argument("gemm_tc: BF16 storage of C and FP32 B are for precision bf16");
  version = pick_version("gemm_tc", version, kGemmTcVersions, 1);
  if (M <= 0 || N <= 0) return;
  const SplitPlan plan = gemm_tc_plan(M, N, K, version, splits);
  if (plan.workspace > work_floats)
    throw std::invalid_argument("gemm_tc: the workspace holds " + std::to_string(work_floats) + " floats, " +
                                std::to_string(plan.workspace) + " needed");
  if constexpr (!kBF16Out) {
    if (p == Precision::kTF32) {
      launch_tc_trans<Precision::kTF32, float>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, relu,
                                               stream);
    }
  }
  if (p == Precision::kBF16) {
    if (b_fp32)
      launch_tc_trans<Precision::kBF16, float>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, relu,
                                               stream);
    else
      launch_tc_trans<Precision::kBF16, uint16_t>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, relu,
                                                  stream);
  }
  if (plan.splits > 1) splitk_reduce(work, plan.splits, int64_t(M) * N, C, bias, N, stream, relu);
}

// C's storage types: float (TF32, BF16) and uint16_t (BF16 bits; precision bf16 only).
template void gemm_tc<float>(Precision, bool, bool, int, int, int, const void*, int, const void*, int, float*,
                             const float*, float*, int64_t, int, int, cudaStream_t, bool, bool);
template void gemm_tc<uint16_t>(Precision, bool, bool, int, int, int, const void*, int, const void*, int, uint16_t*,
                                const float*, float*, int64_t, int, int, cudaStream_t, bool, bool);

}  // namespace alexnet::kernels
