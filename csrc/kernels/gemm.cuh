// Launchers of gemm.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include <string>

#include "common/cuda_common.h"

namespace alexnet::kernels {

// Numbered versions of gemm and column_sums (the linear layers): 1..kGemmVersions (common/launch.h).
inline constexpr int kGemmVersions = 2;

// How a reduction is cut across blocks: `splits` partial results, each a full output, summed
// afterwards in split order by a second pass (deterministic, no atomics); `workspace` floats
// hold them (0 when splits == 1).
struct SplitPlan {
  int splits = 1;
  int64_t workspace = 0;
};

// How many splits of a reduction of `ktiles` k-tiles keep the GPU busiest when each split
// is `tiles` blocks and `slots` blocks fit on the whole GPU at once (SMs x resident blocks
// per SM). The time of a launch of equal blocks goes as waves x work per block, i.e.
// ceil(n * tiles / slots) * ceil(ktiles / n); the smallest n within 3% of the best is taken
// (fewer partials to add up), with at least `min_ktiles` k-tiles per split and n <= max_n.
// Example (conv2's filter gradient on 132 SMs x 2 blocks): 20 tiles, 11664 k-tiles: 13
// splits (260 blocks, one wave) instead of 14 (280 blocks: a second wave for 16 of them).
int balanced_splits(int64_t tiles, int ktiles, int64_t slots, int min_ktiles, int max_n);

// The plan gemm() uses for this shape and version; `splits` > 0 forces the split count
// (clamped to the number of k-tiles), 0 lets the planner choose from the device's SM count.
SplitPlan gemm_plan(int M, int N, int K, int version, int splits);

// C (M x N, row-major, leading dimension N) = op(A) op(B) (+ bias[n] for every row when bias
// is not null), where op(A) is M x K and op(B) is K x N:
//   op(A)[m, k] = trans_a ? A[k * lda + m] : A[m * lda + k]
//   op(B)[k, n] = trans_b ? B[n * ldb + k] : B[k * ldb + n]
// `work` holds at least gemm_plan(M, N, K, version, splits).workspace floats.
// With `relu`, C = max(0, that) in the last pass's epilogue (the tile's store, or splitk_reduce
// when the reduction is split), bit for bit relu_forward of the unfused C (a linear layer
// followed by a ReLU).
// version 1: one thread per output; version 2: shared-memory tiles, register blocking,
// float4 loads, split-K; version 0: the best (2).
void gemm(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
          const float* bias, float* work, int64_t work_floats, int version, int splits, cudaStream_t stream,
          bool relu = false);

// ---- tensor cores (gemm_tc.cu) -------------------------------------------------------------
// The precision of a product's inputs: FP32 (gemm above), TF32 (FP32 in memory, rounded with
// cvt.rna by the kernel) or BF16 (uint16 bit patterns in memory); accumulation is FP32.
enum class Precision { kFP32 = 0, kTF32 = 1, kBF16 = 2 };

// Numbered versions of gemm_tc: 1..kGemmTcVersions at TF32, 1..kGemmTcBF16Versions at BF16
// (version 2 is BF16 only); gemm_tc_versions(p) is the count at p.
inline constexpr int kGemmTcVersions = 1;
inline constexpr int kGemmTcBF16Versions = 2;
inline constexpr int gemm_tc_versions(Precision p) {
  return p == Precision::kBF16 ? kGemmTcBF16Versions : kGemmTcVersions;
}

// gemm_tc's plan, as gemm_plan for gemm.
SplitPlan gemm_tc_plan(int M, int N, int K, int version, int splits);

// Why gemm_tc `version` cannot take these operands, "" when it can (version 0 is the
// dispatcher's choice, which takes any). Version 2 copies 16-byte chunks of rows: A and B
// must be 16-byte aligned, lda and ldb multiples of 8 elements, and so the extents along
// their contiguous dimensions (op(A): M if trans_a else K; op(B): K if trans_b else N).
// `a` and `b` name the operands in the message.
std::string gemm_tc_unsupported(int version, bool trans_a, bool trans_b, int M, int N, int K, const void* A, int lda,
                                const char* a, const void* B, int ldb, const char* b);

// gemm() on tensor cores at precision p (kTF32 or kBF16). A is float (TF32) or uint16 BF16 bit
// patterns (BF16); B likewise, or float at BF16 too when `b_fp32` (FP32 master weights: each
// element rounded to nearest even as it is staged, no separate conversion pass). bias and work
// are float. C is the output's storage T: float, or uint16_t (BF16 bits, p == kBF16 only): the
// FP32 sum (+ bias, ReLU) rounded once to nearest even on store, in the tile's store or, when
// the reduction is split, in splitk_reduce. `work` holds at least gemm_tc_plan(...).workspace
// floats; `relu` as gemm's. version 1: mma.sync tiles of 64 x 64 x 32, split-K; version 2 (BF16
// only, BF16 B only): the same tiles fed by 16-byte cp.async (3 stages) and ldmatrix, for operands
// gemm_tc_unsupported accepts (std::invalid_argument otherwise); version 0: 1 (version 2 is not
// measured on a GPU yet).
template <class T>
void gemm_tc(Precision p, bool trans_a, bool trans_b, int M, int N, int K, const void* A, int lda, const void* B,
             int ldb, T* C, const float* bias, float* work, int64_t work_floats, int version, int splits,
             cudaStream_t stream, bool relu = false, bool b_fp32 = false);

// out[c] = sum_r X[r * cols + c] (column sums, e.g. a linear layer's bias gradient), in a fixed order,
// in FP32. X is float or uint16_t (BF16 bits: the stored values, widened exactly).
// version 1: one thread per column; version 2: 32 x 8 thread blocks with a shared-memory combine.
template <class T>
void column_sums(const T* X, float* out, int rows, int cols, int version, cudaStream_t stream);

// out[i] = sum_{s < splits} work[s * n + i] (+ bias[i % bias_len] when bias is not null),
// summed in split order: the second pass of every split reduction; `relu` takes max(0, .) of
// each sum as gemm's fused ReLU does. out is float, or uint16_t (BF16 bits): the FP32 result
// rounded once to nearest even.
template <class T>
void splitk_reduce(const float* work, int splits, int64_t n, T* out, const float* bias, int bias_len,
                   cudaStream_t stream, bool relu = false);

// Multiprocessor count of the current device (the emu build reports its OS threads).
int device_sm_count();

}  // namespace alexnet::kernels
