// Softmax cross-entropy: mean loss over the batch and its gradient, in one pass per row;
// and the label check shared with topk.cu.
//
// Math:    m[n] = max_j z[n,j];  s[n] = sum_j exp(z[n,j] - m[n])               (stable)
//          row_loss[n] = log(s[n]) - (z[n, label[n]] - m[n])
//          loss = (sum_n row_loss[n]) / N                      (second pass, fixed order)
//          dz[n,j] = (exp(z[n,j] - m[n]) / s[n] - [j == label[n]]) / N
//          Rounding of dz follows the reference: the division, the subtraction of 1 and the
//          division by N are separate float operations.
// Layout:  logits, dlogits (N, classes) float32; labels (N,) int32 or int64 (template L);
//          row_loss (N,) float32 workspace; loss (1,) float32.
// Threads: one block per row. Reductions are in a fixed order (no atomics), so loss and
//          dlogits are bitwise reproducible run to run.
//
// version 1: 256 threads per row; three passes over the row (max; sum of exp; write), each
//            block reduction a shared-memory tree with __syncthreads at every level.
// version 2: blockDim = min(256, classes rounded up to 32); one pass computes the max and the
//            sum together (online softmax: s is rescaled by exp(m_old - m_new) when the
//            running max grows), the (m, s) pairs are combined with __shfl_xor_sync within
//            each warp and through shared memory across warps; a second pass writes dz.
//            Two reads of the row instead of three.
// The loss pass: one block of 256 threads; thread t sums rows t, t+256, ... in order, then a
// shared-memory tree; loss = total / N.
//
// Labels (labels.cuh): first_bad_label scans them on the device and copies the first bad row
// back (one stream sync), so the binding raises ValueError before any output is written;
// record_bad_label scans them into a device pair and reads nothing back (a training step
// without a host synchronization); the rows it finds bad get row_loss = NaN (so loss is NaN)
// and dz = softmax / N (no one-hot term), and the label itself is never used as an index.
#include "kernels/softmax_xent.cuh"

#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>

#include "common/launch.h"
#include "kernels/labels.cuh"

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;
static_assert(kThreads == label_guard::kLabelThreads, "the label scans run one block of kThreads");

// ---- label check (labels.cuh) -----------------------------------------------------------------
template <typename L>
__global__ void __launch_bounds__(label_guard::kLabelThreads)
    first_bad_label_kernel(const L* __restrict__ y, int64_t n, int64_t classes, int* __restrict__ out) {
  const int best = label_guard::block_first_bad(y, n, classes);
  if (threadIdx.x == 0) out[0] = best;
}

template <typename L>
__global__ void __launch_bounds__(label_guard::kLabelThreads)
    record_bad_label_kernel(const L* __restrict__ y, int64_t n, int64_t classes, int64_t* __restrict__ flag) {
  const int best = label_guard::block_first_bad(y, n, classes);
  if (threadIdx.x == 0 && best != INT_MAX && flag[0] == 0) {
    flag[0] = int64_t(best) + 1;
    flag[1] = int64_t(y[best]);
  }
}

// ---- block reductions (shared-memory tree; `red` has blockDim.x floats) ----------------------
__device__ __forceinline__ float block_tree(float v, float* red, bool is_max) {
  const int t = threadIdx.x;
  red[t] = v;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if (t < half) red[t] = is_max ? fmaxf(red[t], red[t + half]) : red[t] + red[t + half];
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();  // red is reused by the next reduction
  return r;
}

// ---- version 1 -----------------------------------------------------------------------------
template <typename L>
__global__ void __launch_bounds__(kThreads)
    softmax_xent_v1(const float* __restrict__ logits, const L* __restrict__ labels, float* __restrict__ dlogits,
                    float* __restrict__ row_loss, int classes, float n_count) {
  __shared__ float red[kThreads];
  const float* z = logits + int64_t(blockIdx.x) * classes;
  float* dz = dlogits + int64_t(blockIdx.x) * classes;
  const int label = label_guard::label_or_bad(labels, blockIdx.x, classes);

  float m = -INFINITY;
  for (int j = threadIdx.x; j < classes; j += kThreads) m = fmaxf(m, z[j]);
  m = block_tree(m, red, true);
  float s = 0.0f;
  for (int j = threadIdx.x; j < classes; j += kThreads) s += expf(z[j] - m);
  s = block_tree(s, red, false);
  for (int j = threadIdx.x; j < classes; j += kThreads) {
    float d = expf(z[j] - m) / s;
    if (j == label) d = __fadd_rn(d, -1.0f);
    dz[j] = d / n_count;
  }
  if (threadIdx.x == 0) row_loss[blockIdx.x] = label < 0 ? NAN : __fadd_rn(logf(s), -(z[label] - m));
}

// ---- version 2 -----------------------------------------------------------------------------
struct MaxSum {
  float m, s;
};

// Merge two (max, sum of exp(v - max)) summaries.
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  const float fa = a.m == m ? 1.0f : expf(a.m - m), fb = b.m == m ? 1.0f : expf(b.m - m);
  return {m, a.s * fa + b.s * fb};
}

__device__ __forceinline__ MaxSum warp_merge(MaxSum v) {
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = merge(v, other);
  }
  return v;
}

template <typename L>
__global__ void __launch_bounds__(kThreads)
    softmax_xent_v2(const float* __restrict__ logits, const L* __restrict__ labels, float* __restrict__ dlogits,
                    float* __restrict__ row_loss, int classes, float n_count) {
  __shared__ MaxSum warp_part[kThreads / 32];
  __shared__ MaxSum row;
  const float* z = logits + int64_t(blockIdx.x) * classes;
  float* dz = dlogits + int64_t(blockIdx.x) * classes;
  const int label = label_guard::label_or_bad(labels, blockIdx.x, classes);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

  MaxSum acc{-INFINITY, 0.0f};
  for (int j = threadIdx.x; j < classes; j += blockDim.x) {
    const float v = z[j];
    if (v > acc.m) {  // the running max grows: rescale what was summed so far
      acc.s = (acc.m == -INFINITY ? 0.0f : acc.s * expf(acc.m - v)) + 1.0f;
      acc.m = v;
    } else if (v > -INFINITY) {
      acc.s += expf(v - acc.m);
    } else if (v != v) {
      acc.s = v;  // NaN poisons the row, as in the reference
    }
  }
  acc = warp_merge(acc);
  if (lane == 0) warp_part[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    MaxSum v = lane < warps ? warp_part[lane] : MaxSum{-INFINITY, 0.0f};
    v = warp_merge(v);
    if (lane == 0) row = v;
  }
  __syncthreads();
  const float m = row.m, s = row.s;
  for (int j = threadIdx.x; j < classes; j += blockDim.x) {
    float d = expf(z[j] - m) / s;
    if (j == label) d = __fadd_rn(d, -1.0f);
    dz[j] = d / n_count;
  }
  if (threadIdx.x == 0) row_loss[blockIdx.x] = label < 0 ? NAN : __fadd_rn(logf(s), -(z[label] - m));
}

// ---- the mean -------------------------------------------------------------------------------
__global__ void __launch_bounds__(kThreads) mean_rows(const float* __restrict__ row_loss, int64_t n, float n_count,
                                                      float* __restrict__ loss) {
  __shared__ float red[kThreads];
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += row_loss[i];
  s = block_tree(s, red, false);
  if (threadIdx.x == 0) loss[0] = s / n_count;
}

}  // namespace

int64_t first_bad_label(const void* labels, bool labels64, int64_t n, int64_t classes, int* work, int64_t* bad_value,
                        cudaStream_t stream) {
  if (n == 0) return -1;
  if (n > INT_MAX) throw std::invalid_argument("labels: more than 2^31-1 entries");
  if (labels64)
    LAUNCH(first_bad_label_kernel<int64_t>, dim3(1), dim3(kThreads), 0, stream, static_cast<const int64_t*>(labels), n,
           classes, work);
  else
    LAUNCH(first_bad_label_kernel<int32_t>, dim3(1), dim3(kThreads), 0, stream, static_cast<const int32_t*>(labels), n,
           classes, work);
  int row = INT_MAX;
  CUDA_CHECK(cudaMemcpyAsync(&row, work, sizeof(int), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  if (row == INT_MAX) return -1;
  int64_t v64 = 0;
  int32_t v32 = 0;
  if (labels64)
    CUDA_CHECK(cudaMemcpyAsync(&v64, static_cast<const int64_t*>(labels) + row, 8, cudaMemcpyDeviceToHost, stream));
  else
    CUDA_CHECK(cudaMemcpyAsync(&v32, static_cast<const int32_t*>(labels) + row, 4, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  *bad_value = labels64 ? v64 : int64_t(v32);
  return row;
}

void record_bad_label(const void* labels, bool labels64, int64_t n, int64_t classes, int64_t* flag,
                      cudaStream_t stream) {
  if (n == 0) return;
  if (n > INT_MAX) throw std::invalid_argument("labels: more than 2^31-1 entries");
  if (labels64)
    LAUNCH(record_bad_label_kernel<int64_t>, dim3(1), dim3(kThreads), 0, stream, static_cast<const int64_t*>(labels),
           n, classes, flag);
  else
    LAUNCH(record_bad_label_kernel<int32_t>, dim3(1), dim3(kThreads), 0, stream, static_cast<const int32_t*>(labels),
           n, classes, flag);
}

void softmax_cross_entropy(const float* logits, const void* labels, bool labels64, float* loss, float* dlogits,
                           float* row_loss, int64_t N, int64_t classes, int version, cudaStream_t stream) {
  version = pick_version("softmax_cross_entropy", version, kSoftmaxXentVersions, 2);
  if (N < 1 || classes < 1)
    throw std::invalid_argument("softmax_cross_entropy: logits must have at least one row and one class");
  if (N > INT_MAX || classes > INT_MAX) throw std::invalid_argument("softmax_cross_entropy: logits too large");
  const float n_count = float(N);
  const int c = int(classes);
  if (version == 1) {
    if (labels64)
      LAUNCH(softmax_xent_v1<int64_t>, dim3(unsigned(N)), dim3(kThreads), 0, stream, logits,
             static_cast<const int64_t*>(labels), dlogits, row_loss, c, n_count);
    else
      LAUNCH(softmax_xent_v1<int32_t>, dim3(unsigned(N)), dim3(kThreads), 0, stream, logits,
             static_cast<const int32_t*>(labels), dlogits, row_loss, c, n_count);
  } else {
    const int threads = c >= kThreads ? kThreads : (c + 31) / 32 * 32;
    if (labels64)
      LAUNCH(softmax_xent_v2<int64_t>, dim3(unsigned(N)), dim3(threads), 0, stream, logits,
             static_cast<const int64_t*>(labels), dlogits, row_loss, c, n_count);
    else
      LAUNCH(softmax_xent_v2<int32_t>, dim3(unsigned(N)), dim3(threads), 0, stream, logits,
             static_cast<const int32_t*>(labels), dlogits, row_loss, c, n_count);
  }
  LAUNCH(mean_rows, dim3(1), dim3(kThreads), 0, stream, static_cast<const float*>(row_loss), N, n_count, loss);
}

}  // namespace alexnet::kernels
