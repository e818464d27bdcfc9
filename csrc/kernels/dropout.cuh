// Launchers of dropout.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of dropout_forward and dropout_backward: 1..kDropoutVersions (common/launch.h).
inline constexpr int kDropoutVersions = 2;
// Inverted dropout over n elements, FP32 or BF16 storage (uint16_t bits; FP32 math, one rounding
// on store: common/storage.cuh): mask[i] in {0, 1} from Philox-4x32-10 keyed by
// (seed, offset, start + i) exactly as reference.dropout_mask; y = x * mask * float(1/(1-p)).
// p in [0, 1), start + n <= 2^64 (std::invalid_argument otherwise). version 0 = the dispatcher's choice.
void dropout_forward(const float* x, float* y, uint8_t* mask, int64_t n, double p, uint64_t seed, uint64_t offset,
                     uint64_t start, int version, cudaStream_t stream);
void dropout_forward(const uint16_t* x, uint16_t* y, uint8_t* mask, int64_t n, double p, uint64_t seed,
                     uint64_t offset, uint64_t start, int version, cudaStream_t stream);
// dx = dy * mask * float(1/(1-p)); with relu_y (not null: the output of the ReLU before the dropout,
// i.e. its input x) also dx = 0 where relu_y <= 0 (relu_backward(dx, relu_y) folded in, bit for bit).
void dropout_backward(const float* dy, const uint8_t* mask, float* dx, int64_t n, double p, const float* relu_y,
                      int version, cudaStream_t stream);
void dropout_backward(const uint16_t* dy, const uint8_t* mask, uint16_t* dx, int64_t n, double p,
                      const uint16_t* relu_y, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
