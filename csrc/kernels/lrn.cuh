// Launchers of lrn.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of lrn_forward and lrn_backward: 1..kLrnVersions (common/launch.h).
inline constexpr int kLrnVersions = 2;
// Cross-channel LRN of x (N, C, H, W), HW = H*W: scale = k + a * (window sum of x^2),
// y = x * scale^-beta. `a` is the coefficient applied to the sum (alpha, or alpha/size for
// the cuda-convnet/Caffe/PyTorch convention; the caller decides). size odd (else
// std::invalid_argument). version 0 = the dispatcher's choice. x, y FP32 or BF16 storage (uint16_t
// bits; FP32 math, one rounding on store: common/storage.cuh); scale always FP32.
void lrn_forward(const float* x, float* y, float* scale, int64_t N, int64_t C, int64_t HW, int size, double a,
                 double beta, double k, int version, cudaStream_t stream);
void lrn_forward(const uint16_t* x, uint16_t* y, float* scale, int64_t N, int64_t C, int64_t HW, int size, double a,
                 double beta, double k, int version, cudaStream_t stream);
// dx = dy * scale^-beta - 2*a*beta * x * (window sum of dy*y/scale).
void lrn_backward(const float* dy, const float* x, const float* y, const float* scale, float* dx, int64_t N, int64_t C,
                  int64_t HW, int size, double a, double beta, int version, cudaStream_t stream);
void lrn_backward(const uint16_t* dy, const uint16_t* x, const uint16_t* y, const float* scale, uint16_t* dx, int64_t N,
                  int64_t C, int64_t HW, int size, double a, double beta, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
