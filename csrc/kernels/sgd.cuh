// Launchers of sgd.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of sgd_update: 1..kSgdVersions (common/launch.h); sgd_update_multi has one kernel.
inline constexpr int kSgdVersions = 2;

// In place over n float32 elements (the paper's rule):
//   v = momentum*v - wd_lr*w - lr*dw;  w = w + v,   wd_lr = weight_decay * lr (in double, by the caller).
// loss: nullptr, or one float32 of device memory; when it is not finite the kernel writes nothing
// (the update is skipped on the device, without a read by the host).
void sgd_update(float* w, const float* dw, float* v, int64_t n, double lr, double momentum, double wd_lr,
                const float* loss, int version, cudaStream_t stream);

// One entry of the multi-tensor table (plain data; filled on the host, copied to the device).
struct SgdTensor {
  float* w;
  const float* dw;
  float* v;
  int64_t n;
  int64_t first_block;  // filled by sgd_update_multi
  float wd_lr;          // weight_decay_i * lr, rounded from double
  int32_t vectorized;   // filled by sgd_update_multi: 1 when w, dw, v are 16-byte aligned
};
constexpr int kSgdTableWords = int(sizeof(SgdTensor) / 8);  // int64 words per entry

// Up to this many tensors the table travels as a kernel parameter (within the 4 KiB a kernel's
// parameters may take on every architecture we build for).
constexpr int kSgdParamTensors = 64;
struct SgdParamTable {
  SgdTensor tensors[kSgdParamTensors];
  int count;
};
static_assert(sizeof(SgdParamTable) + 32 <= 4096, "the table and the other parameters fit in 4 KiB");

// Updates every tensor of `tensors` (count entries, host memory) with ONE kernel launch. Up to
// kSgdParamTensors: the table is a kernel parameter (nothing is copied; device_table may be
// nullptr). More: it is copied (cudaMemcpyAsync, host buffer reusable on return) into
// device_table (count * kSgdTableWords int64 words of device memory) first.
// loss: as sgd_update's (not finite: nothing is written to any tensor).
void sgd_update_multi(SgdTensor* tensors, int count, SgdTensor* device_table, double lr, double momentum,
                      const float* loss, cudaStream_t stream);
}  // namespace alexnet::kernels
