// Launchers of relu.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of relu_forward and relu_backward: 1..kReluVersions (common/launch.h).
inline constexpr int kReluVersions = 2;
// y = max(0, x) over n elements. version 0 = the dispatcher's choice.
void relu_forward(const float* x, float* y, int64_t n, int version, cudaStream_t stream);
// dx = dy where y > 0, else 0.
void relu_backward(const float* dy, const float* y, float* dx, int64_t n, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
