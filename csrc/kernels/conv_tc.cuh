// Launchers of conv_tc.cu: conv2d backward-data and backward-filter on tensor cores (host code;
// no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>

#include "kernels/conv.cuh"

namespace alexnet::kernels {

// Versions 1..kConvTcVersions (conv.cuh), as conv2d_forward_tc. At p = kTF32 dy, w and x are
// float; at kBF16 uint16 BF16 bit patterns, w also float when `w_fp32` (the FP32 master weights,
// rounded to nearest even as they are staged). dw is float. version 0: the best (1).

// dx = the gradient of the forward pass with respect to x (every element written). dx's storage
// T: float, or uint16_t (BF16 bits, p == kBF16 only: the FP32 sum rounded once to nearest even).
// `relu_x` as conv2d_backward_data's, in dx's storage (the ReLU's output as stored): the select on
// the FP32 sum before its rounding, bit for bit relu_backward of the unfused dx.
template <class T>
void conv2d_backward_data_tc(Precision p, const void* dy, const void* w, T* dx, const ConvShape& s, int version,
                             cudaStream_t stream, bool w_fp32 = false, const T* relu_x = nullptr);

// The split of backward_filter_tc's reduction over N*P*Q; `splits` > 0 forces the count.
SplitPlan conv2d_backward_filter_tc_plan(const ConvShape& s, int version, int splits);

// dw = the gradient with respect to w; `work` holds the plan's workspace floats.
void conv2d_backward_filter_tc(Precision p, const void* dy, const void* x, float* dw, float* work,
                               int64_t work_floats, const ConvShape& s, int version, int splits,
                               cudaStream_t stream);

}  // namespace alexnet::kernels
