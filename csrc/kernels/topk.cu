// Top-k correct count for evaluation, on the device (no copy of the logits to the host).
//
// Math:    correct[n] = #{j : z[n,j] > z[n, label[n]]} < k   (ties count in the label's favour;
//          a NaN compares false, as in the reference);  out = sum_n correct[n] (int64).
// Layout:  logits (N, classes) float32; labels (N,) int32 or int64 (template L), checked by
//          first_bad_label (none bad) or record_bad_label (bad rows never count: labels.cuh);
//          out: one int64 of device memory.
// Threads: out is zeroed (cudaMemsetAsync) and each correct row adds 1 with an integer
//          atomicAdd: integer addition is associative, so the count is deterministic.
//
// version 1: one thread per row walks its row (the simple oracle; a row per thread is
//            uncoalesced, fine for the 1000 x 128 of evaluation).
// version 2: one warp per row (8 rows per 256-thread block): the lanes read 4 x 32 consecutive
//            logits per step (coalesced, four loads in flight) and count with __ballot_sync +
//            __popc; the warp stops as soon as k logits rank ahead (the count is warp-uniform).
#include "kernels/topk.cuh"

#include <climits>
#include <stdexcept>
#include <string>

#include "common/launch.h"
#include "kernels/labels.cuh"

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;

template <typename L>
__global__ void topk_v1(const float* __restrict__ logits, const L* __restrict__ labels, int64_t N, int classes,
                        int64_t k, unsigned long long* __restrict__ out) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float* z = logits + n * classes;
  const int label = label_guard::label_or_bad(labels, n, classes);
  if (label < 0) return;  // a bad label (recorded by the caller's scan) is never counted
  const float target = z[label];
  int64_t ahead = 0;
  for (int j = 0; j < classes && ahead < k; ++j) ahead += z[j] > target;
  if (ahead < k) atomicAdd(out, 1ull);
}

template <typename L>
__global__ void topk_v2(const float* __restrict__ logits, const L* __restrict__ labels, int64_t N, int classes,
                        int64_t k, unsigned long long* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (n >= N) return;  // whole warps leave together
  const float* z = logits + n * classes;
  const int label = label_guard::label_or_bad(labels, n, classes);
  if (label < 0) return;  // the whole warp (one row) leaves together
  const float target = z[label];
  int64_t ahead = 0;
  // 128 logits per step: the four loads are issued before any of them is needed
  for (int j0 = 0; j0 < classes && ahead < k; j0 += 128) {
    float v[4];
    for (int u = 0; u < 4; ++u) {
      const int j = j0 + 32 * u + lane;
      v[u] = j < classes ? z[j] : target;  // padding never ranks ahead
    }
    for (int u = 0; u < 4; ++u) ahead += __popc(__ballot_sync(0xffffffffu, v[u] > target));
  }
  if (lane == 0 && ahead < k) atomicAdd(out, 1ull);
}

}  // namespace

void topk_correct(const float* logits, const void* labels, bool labels64, int64_t N, int64_t classes, int64_t k,
                  int64_t* out, int version, cudaStream_t stream) {
  version = pick_version("topk_correct", version, kTopkVersions, 2);
  if (k < 1) throw std::invalid_argument("topk_correct: k must be >= 1, got " + std::to_string(k));
  if (classes > INT_MAX) throw std::invalid_argument("topk_correct: too many classes");
  CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(int64_t), stream));
  if (N == 0) return;
  auto* o = reinterpret_cast<unsigned long long*>(out);
  const int c = int(classes);
  if (version == 1) {
    const dim3 grid(unsigned((N + kThreads - 1) / kThreads));
    if (labels64)
      LAUNCH(topk_v1<int64_t>, grid, dim3(kThreads), 0, stream, logits, static_cast<const int64_t*>(labels), N, c, k, o);
    else
      LAUNCH(topk_v1<int32_t>, grid, dim3(kThreads), 0, stream, logits, static_cast<const int32_t*>(labels), N, c, k, o);
  } else {
    const int rows_per_block = kThreads / 32;
    const dim3 grid(unsigned((N + rows_per_block - 1) / rows_per_block));
    if (labels64)
      LAUNCH(topk_v2<int64_t>, grid, dim3(kThreads), 0, stream, logits, static_cast<const int64_t*>(labels), N, c, k, o);
    else
      LAUNCH(topk_v2<int32_t>, grid, dim3(kThreads), 0, stream, logits, static_cast<const int32_t*>(labels), N, c, k, o);
  }
}

}  // namespace alexnet::kernels
