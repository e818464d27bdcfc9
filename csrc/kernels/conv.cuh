// Launchers of conv.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>

#include "common/cuda_common.h"
#include "kernels/gemm.cuh"

namespace alexnet::kernels {

// Numbered versions of every conv2d direction: 1..kConvVersions (common/launch.h).
inline constexpr int kConvVersions = 2;
// conv2d_backward_filter has its own count: 1..kConvFilterVersions (its version 3 lives in
// conv_wgrad.cu; registered as "conv2d_backward_filter"). Versions 1 and 2 are those of
// kConvVersions, so a version of the whole backward op is also one of its filter kernel.
inline constexpr int kConvFilterVersions = 3;

// The geometry of one grouped convolution (checked by the caller):
// x (N, C, H, W), w (K, C/groups, R, S), y (N, K, P, Q) with
// P = (H + 2*pad - R)/stride + 1, Q = (W + 2*pad - S)/stride + 1.
struct ConvShape {
  int N, C, H, W, K, R, S, stride, pad, groups, P, Q;
};

// y = conv(x, w) + b (b may be null); with `relu`, y = max(0, conv(x, w) + b) in the kernel's
// epilogue, bit for bit relu_forward of the unfused y (every version). version 1: direct loops;
// 2: implicit GEMM; 0: the best.
void conv2d_forward(const float* x, const float* w, const float* b, float* y, const ConvShape& s, int version,
                    cudaStream_t stream, bool relu = false);

// Numbered versions of conv2d_forward_tc and of the tensor-core backward (conv_tc.cuh): 1..kConvTcVersions.
inline constexpr int kConvTcVersions = 1;

// conv2d_forward on tensor cores at p (kTF32: x, w float; kBF16: x uint16 BF16 bit patterns, w
// BF16 bits too, or float when `w_fp32`: the FP32 master weights, rounded to nearest even as they
// are staged); b float; y's storage T is float, or uint16_t (BF16 bits, p == kBF16 only: the FP32
// epilogue value rounded once to nearest even). `relu` as conv2d_forward's.
// version 1: mma.sync implicit GEMM; 0: the best (1).
template <class T>
void conv2d_forward_tc(Precision p, const void* x, const void* w, const float* b, T* y, const ConvShape& s,
                       int version, cudaStream_t stream, bool relu = false, bool w_fp32 = false);

// dx = the gradient of the forward pass with respect to x (every element written). With `relu_x`
// (not null: relu_input, x the ReLU's output, shaped as dx) dx = that where relu_x > 0, else +0,
// in the kernels' store: bit for bit relu_backward(dx, relu_x) (every version).
void conv2d_backward_data(const float* dy, const float* w, float* dx, const ConvShape& s, int version,
                          cudaStream_t stream, const float* relu_x = nullptr);

// The split of backward_filter's reduction over N*P*Q; `splits` > 0 forces the count.
SplitPlan conv2d_backward_filter_plan(const ConvShape& s, int version, int splits);

// dw = the gradient with respect to w; `work` holds the plan's workspace floats.
// version 1: direct loops; 2: implicit GEMM (tile engine); 3: conv_wgrad.cu; 0: the best.
void conv2d_backward_filter(const float* dy, const float* x, float* dw, float* work, int64_t work_floats,
                            const ConvShape& s, int version, int splits, cudaStream_t stream);

// db[k] = sum over n, p, q of dy[n, k, p, q] in FP32; dy is (N, K, PQ), float or uint16_t (BF16
// bits: the stored values, widened exactly).
template <class T>
void conv2d_backward_bias(const T* dy, float* db, int N, int K, int PQ, int version, cudaStream_t stream);

}  // namespace alexnet::kernels
