// SGEMM for the fully connected layers (paper section 3.5: fc6 9216->4096, fc7 4096->4096,
// fc8 4096->1000), with the transposes their backward pass needs, plus column sums (bias
// gradient) and the split-K second pass shared with conv.cu.
//
// Math:    C[m, n] = act(sum_k op(A)[m, k] * op(B)[k, n] (+ bias[n])), act = max(0, .) when the
//          caller fuses a ReLU (tile::epilogue, in the last pass: the tile's store or the split-K
//          reduce), else the identity. FP32 FFMA, k ascending per
//          thread (version 1) or per k-tile/split (version 2). For a linear layer with
//          x (N, I), w (O, I), dy (N, O):
//            forward   y  = x w^T + b     gemm(no, trans_b)   M=N, N=O, K=I
//            data      dx = dy w          gemm(no, no)        M=N, N=I, K=O
//            weight    dw = dy^T x        gemm(trans_a, no)   M=O, N=I, K=N
//            bias      db = column sums of dy (FP32 sums; dy float or BF16 bits, widened exactly)
//          splitk_reduce and column sums take the storage type of activations (common/storage.cuh):
//          splitk_reduce writes float or BF16 (rounded once), column sums read either.
// Layout:  row-major, C's leading dimension is N; A and B leading dimensions are given.
//
// version 1: one thread per C element, a direct k loop (16 x 16 thread blocks).
// version 2: the tile engine of gemm_tile.cuh: block tile BM x 128 x BK=8 (BM = 128, 64 or
//            32 by M), 8x8 (or 4x8) outputs per thread, double-buffered shared tiles,
//            float4 global loads when the operand's contiguous dimension is a multiple of 4
//            and the pointer is 16-byte aligned (else guarded scalar loads), float4 stores
//            when N % 4 == 0. Edges guarded: any M, N, K. The transposes are template flags
//            (the contiguous direction of each operand picks the loader's thread mapping).
//            Split-K: when the output has too few tiles to fill the GPU (fc layers at batch
//            128 have 32 tiles of 128x128 for 132 SMs), blockIdx.z takes a contiguous run of
//            k-tiles and writes a partial C to the workspace; splitk_reduce sums the
//            partials in split order and adds the bias (deterministic, no atomics).
// Threads: version 2 grid (ceil(N/128), ceil(M/BM), splits), Config::THREADS threads.
// Constraints: M, N, K < 2^31, M * N * splits floats of workspace when splits > 1.
#include "kernels/gemm.cuh"
#include "kernels/gemm_tile.cuh"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/launch.h"
#include "common/storage.cuh"

namespace alexnet::kernels {
namespace {

using namespace tile;

// ---- version 1: one thread per output ---------------------------------------------------
__global__ void gemm_v1(bool ta, bool tb, int M, int N, int K, const float* __restrict__ A, int lda,
                        const float* __restrict__ B, int ldb, float* __restrict__ C, const float* __restrict__ bias,
                        bool relu) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const int m = blockIdx.y * blockDim.y + threadIdx.y;
  if (m >= M || n >= N) return;
  float s = 0.0f;
  for (int k = 0; k < K; ++k) {
    const float a = ta ? A[int64_t(k) * lda + m] : A[int64_t(m) * lda + k];
    const float b = tb ? B[int64_t(n) * ldb + k] : B[int64_t(k) * ldb + n];
    s = fmaf(a, b, s);
  }
  C[int64_t(m) * N + n] = epilogue(s + (bias ? bias[n] : 0.0f), relu);
}

// ---- version 2: tiled, register-blocked, split-K ----------------------------------------
template <class Cfg, bool TA, bool TB>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    gemm_v2(int M, int N, int K, const float* __restrict__ A, int lda, const float* __restrict__ B, int ldb,
            float* __restrict__ C, const float* __restrict__ bias, float* __restrict__ work, bool vec_a, bool vec_b,
            bool vec_c, bool relu) {
  __shared__ __align__(16) float As[2 * Cfg::A_TILE];
  __shared__ __align__(16) float Bs[2 * Cfg::B_TILE];
  const int t = threadIdx.x, tx = t % Cfg::TX, ty = t / Cfg::TX;
  const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
  const int splits = gridDim.z, split = blockIdx.z;
  int kt0, kt1;
  split_range((K + Cfg::BK - 1) / Cfg::BK, splits, split, kt0, kt1);

  DenseTile<Cfg, Cfg::BM, !TA> la(A, lda, M, K, m0, kt0 * Cfg::BK, vec_a);
  DenseTile<Cfg, Cfg::BN, TB> lb(B, ldb, N, K, n0, kt0 * Cfg::BK, vec_b);
  float acc[Cfg::TM][Cfg::TN] = {};
  mainloop<Cfg>(la, lb, kt1 - kt0, As, Bs, tx, ty, acc);

  float* out = splits > 1 ? work + int64_t(split) * M * N : C;
  const float* bs = splits > 1 ? nullptr : bias;
  store_tile<Cfg>(out, N, M, N, m0, n0, tx, ty, acc, bs, vec_c, relu && splits == 1);
}

// ---- column sums -------------------------------------------------------------------------
// X is float or uint16_t (BF16 bits, widened exactly by storage::load); the sums are FP32.
template <class T>
__global__ void column_sums_v1(const T* __restrict__ X, float* __restrict__ out, int rows, int cols) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0.0f;
  for (int r = 0; r < rows; ++r) s += storage::load(X, int64_t(r) * cols + c);
  out[c] = s;
}

// 32 columns x 8 row-slices per block: thread (x, y) sums rows y, y+8, ... of column x
// (a warp reads 32 consecutive elements), then thread y == 0 adds the 8 partials in order.
template <class T>
__global__ void column_sums_v2(const T* __restrict__ X, float* __restrict__ out, int rows, int cols) {
  __shared__ float part[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < cols)
    for (int r = threadIdx.y; r < rows; r += 8) s += storage::load(X, int64_t(r) * cols + c);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float t = 0.0f;
#pragma unroll
    for (int y = 0; y < 8; ++y) t += part[y][threadIdx.x];
    out[c] = t;
  }
}

// out is float or uint16_t (BF16 bits): the FP32 value rounded once on store (storage::store).
template <class T>
__global__ void splitk_reduce_kernel(const float* __restrict__ work, int splits, int64_t n, T* __restrict__ out,
                                     const float* __restrict__ bias, int bias_len, bool relu) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int k = 0; k < splits; ++k) s += work[int64_t(k) * n + i];
    storage::store(out, i, epilogue(s + (bias ? bias[i % bias_len] : 0.0f), relu));
  }
}

// ---- dispatch ------------------------------------------------------------------------------
template <class Cfg, bool TA, bool TB>
void launch_v2(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, const float* bias,
               float* work, int splits, bool relu, cudaStream_t stream) {
  const bool vec_a = aligned16(A) && lda % 4 == 0 && (TA || K % 4 == 0);
  const bool vec_b = aligned16(B) && ldb % 4 == 0 && (!TB || K % 4 == 0);
  float* out = splits > 1 ? work : C;
  const bool vec_c = aligned16(out) && N % 4 == 0;
  const dim3 grid(ceil_div(N, Cfg::BN), ceil_div(M, Cfg::BM), unsigned(splits));
  auto kernel = gemm_v2<Cfg, TA, TB>;
  LAUNCH(kernel, grid, dim3(Cfg::THREADS), 0, stream, M, N, K, A, lda, B, ldb, C, bias, work, vec_a, vec_b, vec_c,
         relu);
}

template <class Cfg>
void launch_v2_trans(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
                     const float* bias, float* work, int splits, bool relu, cudaStream_t stream) {
  if (!ta && !tb) launch_v2<Cfg, false, false>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
  else if (!ta && tb) launch_v2<Cfg, false, true>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
  else if (ta && !tb) launch_v2<Cfg, true, false>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
  else launch_v2<Cfg, true, true>(M, N, K, A, lda, B, ldb, C, bias, work, splits, relu, stream);
}

}  // namespace

int device_sm_count() {
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return std::max(1, sms);
}

int balanced_splits(int64_t tiles, int ktiles, int64_t slots, int min_ktiles, int max_n) {
  tiles = std::max<int64_t>(1, tiles);
  slots = std::max<int64_t>(1, slots);
  const int limit = std::max(1, std::min(max_n, ktiles / std::max(1, min_ktiles)));
  auto cost = [&](int n) { return double((n * tiles + slots - 1) / slots) * double((ktiles + n - 1) / n); };
  double best = cost(1);
  for (int n = 2; n <= limit; ++n) best = std::min(best, cost(n));
  for (int n = 1; n <= limit; ++n)
    if (cost(n) <= best * 1.03) return n;
  return 1;
}

namespace {
template <class Cfg>
int gemm_slots() {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemm_v2<Cfg, false, false>, Cfg::THREADS, 0));
  return std::max(1, per_sm) * device_sm_count();
}
}  // namespace

SplitPlan gemm_plan(int M, int N, int K, int version, int splits) {
  check_version("gemm", version, kGemmVersions);
  SplitPlan plan;
  if (version == 1 || M <= 0 || N <= 0) return plan;
  const Tile t = pick_tile(M, false);
  const int64_t tiles = int64_t(ceil_div(M, tile_bm(t))) * ceil_div(N, tile_bn(t));
  const int ktiles = int(ceil_div(K, tile_bk(t)));
  int s = splits;
  if (s <= 0) {
    // Whole waves of blocks; at least 32 k-tiles (256 terms) per split.
    const int64_t slots = t == Tile::k32 ? gemm_slots<T32>() : t == Tile::k64 ? gemm_slots<T64>() : gemm_slots<T128>();
    s = balanced_splits(tiles, ktiles, slots, 32, 1024);
  }
  s = std::max(1, std::min({s, ktiles, 1024}));
  plan.splits = s;
  plan.workspace = s > 1 ? int64_t(s) * M * N : 0;
  return plan;
}

void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
          const float* bias, float* work, int64_t work_floats, int version, int splits, cudaStream_t stream,
          bool relu) {
  version = pick_version("gemm", version, kGemmVersions, 2);
  if (M <= 0 || N <= 0) return;
  if (version == 1) {
    const dim3 block(16, 16);
    LAUNCH(gemm_v1, dim3(ceil_div(N, 16), ceil_div(M, 16)), block, 0, stream, ta, tb, M, N, K, A, lda, B, ldb, C, bias,
           relu);
    return;
  }
  const SplitPlan plan = gemm_plan(M, N, K, version, splits);
  if (plan.workspace > work_floats)
    throw std::invalid_argument("gemm: the workspace holds " + std::to_string(work_floats) + " floats, " +
                                std::to_string(plan.workspace) + " needed");
  switch (pick_tile(M, false)) {
    case Tile::k8:  // not picked: gemm has no T8 kernels
    case Tile::k32: launch_v2_trans<T32>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, relu, stream); break;
    case Tile::k64: launch_v2_trans<T64>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, relu, stream); break;
    case Tile::k128: launch_v2_trans<T128>(ta, tb, M, N, K, A, lda, B, ldb, C, bias, work, plan.splits, relu, stream); break;
  }
  if (plan.splits > 1) splitk_reduce(work, plan.splits, int64_t(M) * N, C, bias, N, stream, relu);
}

template <class T>
void splitk_reduce(const float* work, int splits, int64_t n, T* out, const float* bias, int bias_len,
                   cudaStream_t stream, bool relu) {
  if (n <= 0) return;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 4096);
  auto kernel = splitk_reduce_kernel<T>;
  LAUNCH(kernel, dim3(unsigned(blocks)), dim3(256), 0, stream, work, splits, n, out, bias, bias_len, relu);
}

template <class T>
void column_sums(const T* X, float* out, int rows, int cols, int version, cudaStream_t stream) {
  version = pick_version("column_sums", version, kGemmVersions, 2);
  if (cols <= 0) return;
  if (version == 1) {
    auto kernel = column_sums_v1<T>;
    LAUNCH(kernel, dim3(ceil_div(cols, 128)), dim3(128), 0, stream, X, out, rows, cols);
  } else {
    auto kernel = column_sums_v2<T>;
    LAUNCH(kernel, dim3(ceil_div(cols, 32)), dim3(32, 8), 0, stream, X, out, rows, cols);
  }
}

// The storage types: float (every precision) and uint16_t (BF16 bits, precision bf16).
template void splitk_reduce<float>(const float*, int, int64_t, float*, const float*, int, cudaStream_t, bool);
template void splitk_reduce<uint16_t>(const float*, int, int64_t, uint16_t*, const float*, int, cudaStream_t, bool);
template void column_sums<float>(const float*, float*, int, int, int, cudaStream_t);
template void column_sums<uint16_t>(const uint16_t*, float*, int, int, int, cudaStream_t);

}  // namespace alexnet::kernels
