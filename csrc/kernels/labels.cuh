// Labels on the device, one place for the kernels that read them (softmax_xent.cu, topk.cu).
// Device code; included by .cu files only (the launchers are in softmax_xent.cuh, topk.cuh).
//
// A label is good when 0 <= label < classes. Two ways a bad one is dealt with:
//   - checked now (first_bad_label): a one-block scan finds the first bad row, the host reads
//     it back (a stream synchronization) and raises before the op's kernels are launched;
//   - recorded (record_bad_label): the same scan, but the result stays on the device: an int64
//     pair (row + 1, label) written only while its first word is still 0, so it keeps the first
//     bad label met since the caller zeroed it. Nothing is read back; the op's kernels still run,
//     and they read each label through label_or_bad, which never indexes with a bad one: the
//     row's loss is NaN (so the batch's mean loss is NaN and a training step skips its update)
//     and it counts as not among the top k.
// Threads: one block of kLabelThreads; thread t scans rows t, t + kLabelThreads, ... and stops at
// its first bad one (rows ascend); the block minimum is the first bad row (a shared-memory tree).
#pragma once
#include <climits>
#include <cstdint>

namespace alexnet::kernels::label_guard {

constexpr int kLabelThreads = 256;

// The row's label, or -1 when it is outside [0, classes).
template <typename L>
__device__ __forceinline__ int label_or_bad(const L* labels, int64_t row, int64_t classes) {
  const int64_t v = int64_t(labels[row]);
  return v >= 0 && v < classes ? int(v) : -1;
}

// The first row whose label is bad, or INT_MAX; every thread of the block gets it.
template <typename L>
__device__ int block_first_bad(const L* __restrict__ labels, int64_t n, int64_t classes) {
  __shared__ int best[kLabelThreads];
  int mine = INT_MAX;
  for (int64_t i = threadIdx.x; i < n; i += kLabelThreads) {
    if (label_or_bad(labels, i, classes) < 0) {
      mine = int(i);
      break;  // rows ascend: this is the thread's first
    }
  }
  best[threadIdx.x] = mine;
  __syncthreads();
  for (int half = kLabelThreads / 2; half > 0; half >>= 1) {
    if (int(threadIdx.x) < half) best[threadIdx.x] = min(best[threadIdx.x], best[threadIdx.x + half]);
    __syncthreads();
  }
  return best[0];
}

}  // namespace alexnet::kernels::label_guard
