// Launchers of conv_winograd.cu: the forward and backward-data passes of a 3x3, stride-1
// convolution by Winograd's F(4x4, 3x3) (host code; no CUDA syntax, so the bindings include it
// in both builds). Reached through algorithm="winograd" of conv2d_forward and of
// conv2d_backward's data gradient; the filter gradient stays conv.cu's / conv_wgrad.cu's.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/conv.cuh"

namespace alexnet::kernels {

// Numbered versions of the Winograd forward and backward-data kernels: 1..kConvWinogradVersions
// (registered as conv2d_forward_winograd and conv2d_backward_winograd).
// version 1: four kernels (filter transform, input transform, batched GEMM on gemm_tile.cuh,
// output transform); version 2: the same transforms, the batched GEMM with 16-byte cp.async
// copies and k-tiles of 16; 0: the best (2).
inline constexpr int kConvWinogradVersions = 2;

// Why the Winograd kernels cannot run this geometry ("" when they can): they take R = S = 3,
// stride 1 and padding 0, 1 or 2 (the data gradient is the convolution of dy padded by
// 2 - padding), any groups and sizes.
std::string conv_winograd_unsupported(const ConvShape& s);

// Floats of workspace the forward (data = false) or the backward-data pass (data = true) needs
// for this geometry and version: the transformed filter, input and output tensors.
int64_t conv2d_winograd_workspace(const ConvShape& s, bool data, int version);

// y = conv(x, w) + b (b may be null), `relu` as conv2d_forward's; `work` holds
// conv2d_winograd_workspace(s, false, version) floats.
void conv2d_forward_winograd(const float* x, const float* w, const float* b, float* y, float* work, int64_t work_floats,
                             const ConvShape& s, int version, cudaStream_t stream, bool relu = false);

// dx = the gradient of the forward pass with respect to x; `work` holds
// conv2d_winograd_workspace(s, true, version) floats. `relu_x` as conv2d_backward_data's (applied
// by the output transform, the pass that writes dx).
void conv2d_backward_data_winograd(const float* dy, const float* w, float* dx, float* work, int64_t work_floats,
                                   const ConvShape& s, int version, cudaStream_t stream,
                                   const float* relu_x = nullptr);

}  // namespace alexnet::kernels
