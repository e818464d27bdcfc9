// Launchers of tanh.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of tanh_forward and tanh_backward: 1..kTanhVersions (common/launch.h).
inline constexpr int kTanhVersions = 2;
// y = tanh(x) over n elements of FP32 or BF16 storage (uint16_t: BF16 bits; the math
// in FP32, one rounding on store; common/storage.cuh). version 0 = the dispatcher's choice.
void tanh_forward(const float* x, float* y, int64_t n, int version, cudaStream_t stream);
void tanh_forward(const uint16_t* x, uint16_t* y, int64_t n, int version, cudaStream_t stream);
// dx = dy * (1 - y^2), y the forward's output.
void tanh_backward(const float* dy, const float* y, float* dx, int64_t n, int version, cudaStream_t stream);
void tanh_backward(const uint16_t* dy, const uint16_t* y, uint16_t* dx, int64_t n, int version,
                   cudaStream_t stream);
}  // namespace alexnet::kernels
