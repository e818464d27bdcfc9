// Launchers of lrn_pool.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of lrn_maxpool_forward and lrn_maxpool_backward: 1..kLrnPoolVersions.
inline constexpr int kLrnPoolVersions = 2;

// LRN across channels of x (N, C, H, W), then max pooling of its output, in one kernel:
// lrn_y, scale (N, C, H, W) = lrn_forward(x) and y_pool (N, C, P, Q) = maxpool_forward(lrn_y),
// bit for bit. `a` as in lrn_forward (the coefficient applied to the sum). T is the storage
// type of x, y_pool and lrn_y: float, or uint16_t (BF16 bits; common/storage.cuh); scale is
// float. std::invalid_argument on an even LRN size or a pooling window larger than the map.
template <class T>
void lrn_maxpool_forward(const T* x, T* y_pool, T* lrn_y, float* scale, int64_t N, int64_t C, int64_t H, int64_t W,
                         int size, double a, double beta, double k, int pool_size, int pool_stride, int version,
                         cudaStream_t stream);

// dx = lrn_backward(maxpool_backward(dy_pool, lrn_y), x, lrn_y, scale), bit for bit (with BF16
// storage the pooled gradient is rounded to BF16 in between, as the two ops store it); with
// relu_input, also dx = 0 where x <= 0 (x is a ReLU's output: relu_backward folded in).
template <class T>
void lrn_maxpool_backward(const T* dy_pool, const T* x, const T* lrn_y, const float* scale, T* dx, int64_t N,
                          int64_t C, int64_t H, int64_t W, int size, double a, double beta, int pool_size,
                          int pool_stride, bool relu_input, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
