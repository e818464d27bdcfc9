// Launchers of pool.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of maxpool_forward and maxpool_backward: 1..kPoolVersions (common/launch.h).
inline constexpr int kPoolVersions = 2;
// y (N, C, P, Q) = max over size x size windows of x (N, C, H, W) at the given stride, no
// padding; P = (H - size)/stride + 1. std::invalid_argument when size > H or W. FP32 or BF16
// storage (uint16_t bits; compared in FP32: common/storage.cuh).
void maxpool_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int size, int stride,
                     int version, cudaStream_t stream);
void maxpool_forward(const uint16_t* x, uint16_t* y, int64_t N, int64_t C, int64_t H, int64_t W, int size, int stride,
                     int version, cudaStream_t stream);
// dx (N, C, H, W): each dy goes to the first maximum (row-major) of its window in x;
// overlapping windows add up (in FP32; BF16 dx rounds once). Deterministic (a gather, no atomics).
// relu_input: x is a ReLU's output and that ReLU's backward is folded in: dx = 0 where x <= 0
// (relu_backward(dx, x), bit for bit).
void maxpool_backward(const float* dy, const float* x, float* dx, int64_t N, int64_t C, int64_t H, int64_t W, int size,
                      int stride, bool relu_input, int version, cudaStream_t stream);
void maxpool_backward(const uint16_t* dy, const uint16_t* x, uint16_t* dx, int64_t N, int64_t C, int64_t H, int64_t W,
                      int size, int stride, bool relu_input, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
