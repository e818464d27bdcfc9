// Launchers of transfer.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of transfer_forward and transfer_backward: 1..kTransferVersions (common/launch.h).
inline constexpr int kTransferVersions = 2;
// dst[n, off + k] = src[n, src_off + k] for n < rows, k < width; src rows are `src_width` elements
// long, dst rows `dst_width`. src may be memory of a peer device (read over peer access).
// version 0 = the dispatcher's choice. FP32 or BF16 storage (uint16_t bits, copied as they are).
void transfer_forward(const float* src, float* dst, int64_t rows, int64_t width, int64_t src_width, int64_t src_off,
                      int64_t dst_width, int64_t off, int version, cudaStream_t stream);
void transfer_forward(const uint16_t* src, uint16_t* dst, int64_t rows, int64_t width, int64_t src_width,
                      int64_t src_off, int64_t dst_width, int64_t off, int version, cudaStream_t stream);
// out[n, k] = peer[n, off + k] + local[n, off + k] (local may be null: no second term), n < rows,
// k < width; peer and local rows are `src_width` elements long. peer may be memory of a peer device.
// FP32 or BF16 storage (the sum in FP32, one rounding on store: common/storage.cuh).
void transfer_backward(const float* peer, const float* local, float* out, int64_t rows, int64_t width,
                       int64_t src_width, int64_t off, int version, cudaStream_t stream);
void transfer_backward(const uint16_t* peer, const uint16_t* local, uint16_t* out, int64_t rows, int64_t width,
                       int64_t src_width, int64_t off, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
