// Sum of a float32 array: the reduction that proves warp collectives on both builds.
//
// Math:    out = sum_i x[i], accumulated in float32 in a fixed tree order.
// Layout:  n contiguous floats; `work` holds one partial sum per block.
// Threads: two launches. Pass 1: B = min(1024, ceil(n / 1024)) blocks of 256 threads;
//          each thread sums a grid-strided slice, then the block combines its 256
//          values into work[blockIdx.x]. Pass 2: one block of 256 threads sums the B
//          partials into out[0]. No atomics, so the result is bitwise reproducible.
//
// version 1: the block combine is a shared-memory tree with __syncthreads at every level.
// version 2: each warp combines with __shfl_down_sync (no shared memory, no barrier),
//            then warp 0 combines the eight warp sums the same way.
#include "kernels/reduce.cuh"

#include "common/launch.h"

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float thread_sum(const float* __restrict__ x, int64_t n) {
  float s = 0.0f;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) s += x[i];
  return s;
}

// ---- version 1: shared-memory tree ------------------------------------------------
__global__ void reduce_sum_v1(const float* __restrict__ x, float* __restrict__ out, int64_t n) {
  __shared__ float partial[kThreads];
  const int t = threadIdx.x;
  partial[t] = thread_sum(x, n);
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (t < half) partial[t] += partial[t + half];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

// ---- version 2: warp shuffles -------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void reduce_sum_v2(const float* __restrict__ x, float* __restrict__ out, int64_t n) {
  __shared__ float warp_sums[kThreads / 32];
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const float v = warp_sum(thread_sum(x, n));
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const float w = warp_sum(lane < kThreads / 32 ? warp_sums[lane] : 0.0f);
    if (lane == 0) out[blockIdx.x] = w;
  }
}

}  // namespace

void reduce_sum(const float* x, float* out, float* work, int64_t n, int version, cudaStream_t stream) {
  version = pick_version("reduce_sum", version, kReduceVersions, 2);
  int64_t blocks = (n + 4 * kThreads - 1) / (4 * kThreads);
  blocks = blocks < 1 ? 1 : blocks > kReduceMaxBlocks ? kReduceMaxBlocks : blocks;
  auto kernel = version == 1 ? reduce_sum_v1 : reduce_sum_v2;
  LAUNCH(kernel, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, x, work, n);
  LAUNCH(kernel, dim3(1), dim3(kThreads), 0, stream, static_cast<const float*>(work), out, blocks);
}

}  // namespace alexnet::kernels
