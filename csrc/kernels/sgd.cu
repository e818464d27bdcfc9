// SGD with momentum and weight decay, in place (paper section 5).
//
// Math:    v = momentum * v - wd_lr * w - lr * dw;   w = w + v
//          with wd_lr = weight_decay * lr computed in double on the host and rounded to float
//          (as the reference's Python scalars), every product and difference rounded on its own
//          (__fmul_rn / __fadd_rn: no FMA contraction), so w and v are bitwise the reference's.
// Layout:  w, dw, v: n contiguous float32 each (any shape); v must not alias w.
// Threads: grid-stride, 256 threads per block. Memory-bound: 12 bytes read, 8 written per element.
//
// version 1: one element per thread per iteration.
// version 2: float4 loads and stores (needs w, dw, v 16-byte aligned; the dispatcher picks
//            version 1 otherwise); the n % 4 tail by the first threads.
// multi:     every parameter tensor of the model in ONE launch. A table of (w, dw, v, n,
//            wd_lr); tensor i owns blocks [first_block_i, first_block_{i+1}), each block
//            updates kMultiChunk consecutive elements of it (float4 when that tensor's three
//            pointers are aligned). A block finds its tensor by binary search over first_block.
//            Up to kSgdParamTensors tensors (AlexNet has 16) the table is a kernel parameter
//            (__grid_constant__: read in place from the parameter space, no copy per thread), so
//            the launch needs no copy at all; beyond that it is copied into device memory first
//            (cudaMemcpyAsync from the caller's host array, which may wait for the stream).
// loss:      an optional argument of every version and of multi: a pointer to one float32 in
//            device memory (the step's loss). When it is given and not finite (NaN or +-inf),
//            every thread returns before it reads or writes anything: the update is skipped and
//            w and v stay bitwise as they were, decided on the device, so the host need not read
//            the loss before it launches the update. nullptr: always update (as before).
#include "kernels/sgd.cuh"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/launch.h"

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kMultiChunk = kThreads * 16;  // elements per block of the multi kernel

// true when the update must be skipped: a loss is given and its exponent bits are all ones (NaN or
// infinity; a bit test, so no compiler flag can fold it away)
__device__ __forceinline__ bool skip_update(const float* loss) {
  return loss != nullptr && (__float_as_uint(*loss) & 0x7f800000u) == 0x7f800000u;
}

__device__ __forceinline__ void step(float& w, float dw, float& v, float lr, float mom, float wd_lr) {
  const float vn = __fadd_rn(__fadd_rn(__fmul_rn(mom, v), -__fmul_rn(wd_lr, w)), -__fmul_rn(lr, dw));
  v = vn;
  w = __fadd_rn(w, vn);
}

// ---- version 1 ------------------------------------------------------------------------
__global__ void sgd_v1(float* __restrict__ w, const float* __restrict__ dw, float* __restrict__ v, int64_t n, float lr,
                       float mom, float wd_lr, const float* loss) {
  if (skip_update(loss)) return;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float wi = w[i], vi = v[i];
    step(wi, dw[i], vi, lr, mom, wd_lr);
    v[i] = vi;
    w[i] = wi;
  }
}

// ---- version 2 ------------------------------------------------------------------------
__device__ __forceinline__ void step4(float4& w, const float4 dw, float4& v, float lr, float mom, float wd_lr) {
  step(w.x, dw.x, v.x, lr, mom, wd_lr);
  step(w.y, dw.y, v.y, lr, mom, wd_lr);
  step(w.z, dw.z, v.z, lr, mom, wd_lr);
  step(w.w, dw.w, v.w, lr, mom, wd_lr);
}

__global__ void sgd_v2(float* __restrict__ w, const float* __restrict__ dw, float* __restrict__ v, int64_t n, float lr,
                       float mom, float wd_lr, const float* loss) {
  if (skip_update(loss)) return;
  const int64_t n4 = n / 4, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  float4* w4 = reinterpret_cast<float4*>(w);
  float4* v4 = reinterpret_cast<float4*>(v);
  const float4* d4 = reinterpret_cast<const float4*>(dw);
  for (int64_t i = first; i < n4; i += stride) {
    float4 wi = w4[i], vi = v4[i];
    step4(wi, d4[i], vi, lr, mom, wd_lr);
    v4[i] = vi;
    w4[i] = wi;
  }
  const int64_t t = n4 * 4 + first;
  if (t < n) {
    float wi = w[t], vi = v[t];
    step(wi, dw[t], vi, lr, mom, wd_lr);
    v[t] = vi;
    w[t] = wi;
  }
}

// ---- multi-tensor ---------------------------------------------------------------------
// The block's share of the multi-tensor update (table: `count` entries, in device or parameter memory).
__device__ __forceinline__ void multi_block(const SgdTensor* __restrict__ table, int count, float lr, float mom,
                                            const float* loss) {
  if (skip_update(loss)) return;
  // the tensor of this block: the last entry with first_block <= blockIdx.x
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table[mid].first_block <= int64_t(blockIdx.x)) lo = mid;
    else hi = mid - 1;
  }
  const SgdTensor T = table[lo];
  const int64_t begin = (int64_t(blockIdx.x) - T.first_block) * kMultiChunk;
  const int64_t end = T.n < begin + kMultiChunk ? T.n : begin + kMultiChunk;
  if (T.vectorized) {
    float4* w4 = reinterpret_cast<float4*>(T.w);
    float4* v4 = reinterpret_cast<float4*>(T.v);
    const float4* d4 = reinterpret_cast<const float4*>(T.dw);
    const int64_t e4 = end / 4;  // begin is a multiple of 4
    for (int64_t i = begin / 4 + threadIdx.x; i < e4; i += kThreads) {
      float4 wi = w4[i], vi = v4[i];
      step4(wi, d4[i], vi, lr, mom, T.wd_lr);
      v4[i] = vi;
      w4[i] = wi;
    }
    const int64_t t = e4 * 4 + threadIdx.x;
    if (t < end) {
      float wi = T.w[t], vi = T.v[t];
      step(wi, T.dw[t], vi, lr, mom, T.wd_lr);
      T.v[t] = vi;
      T.w[t] = wi;
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      float wi = T.w[i], vi = T.v[i];
      step(wi, T.dw[i], vi, lr, mom, T.wd_lr);
      T.v[i] = vi;
      T.w[i] = wi;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    sgd_multi(const SgdTensor* __restrict__ table, int count, float lr, float mom, const float* loss) {
  multi_block(table, count, lr, mom, loss);
}

__global__ void __launch_bounds__(kThreads)
    sgd_multi_param(const __grid_constant__ SgdParamTable table, float lr, float mom, const float* loss) {
  multi_block(table.tensors, table.count, lr, mom, loss);
}

}  // namespace

void sgd_update(float* w, const float* dw, float* v, int64_t n, double lr, double momentum, double wd_lr,
                const float* loss, int version, cudaStream_t stream) {
  const bool al = aligned16(w, dw, v);
  version = pick_version("sgd_update", version, kSgdVersions, al ? 2 : 1);
  if (version == 2 && !al) throw std::invalid_argument("sgd_update: version 2 needs 16-byte aligned w, dw and v");
  if (n == 0) return;
  if (version == 1)
    LAUNCH(sgd_v1, dim3(grid_stride_blocks(n, kThreads)), dim3(kThreads), 0, stream, w, dw, v, n, float(lr),
           float(momentum), float(wd_lr), loss);
  else
    LAUNCH(sgd_v2, dim3(grid_stride_blocks((n + 3) / 4, kThreads)), dim3(kThreads), 0, stream, w, dw, v, n, float(lr),
           float(momentum), float(wd_lr), loss);
}

void sgd_update_multi(SgdTensor* tensors, int count, SgdTensor* device_table, double lr, double momentum,
                      const float* loss, cudaStream_t stream) {
  int64_t blocks = 0;
  for (int i = 0; i < count; ++i) {
    tensors[i].first_block = blocks;
    tensors[i].vectorized = aligned16(tensors[i].w, tensors[i].dw, tensors[i].v);
    blocks += (tensors[i].n + kMultiChunk - 1) / kMultiChunk;
  }
  if (blocks == 0) return;
  if (blocks > 0x7fffffff) throw std::invalid_argument("sgd_update_multi: too many elements for one launch");
  if (count <= kSgdParamTensors) {
    SgdParamTable param{};
    param.count = count;
    std::copy(tensors, tensors + count, param.tensors);
    LAUNCH(sgd_multi_param, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, param, float(lr), float(momentum), loss);
    return;
  }
  if (device_table == nullptr)
    throw std::invalid_argument("sgd_update_multi: more than " + std::to_string(kSgdParamTensors) +
                                " tensors need a device table");
  CUDA_CHECK(cudaMemcpyAsync(device_table, tensors, sizeof(SgdTensor) * size_t(count), cudaMemcpyHostToDevice, stream));
  LAUNCH(sgd_multi, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, static_cast<const SgdTensor*>(device_table), count,
         float(lr), float(momentum), loss);
}

}  // namespace alexnet::kernels
