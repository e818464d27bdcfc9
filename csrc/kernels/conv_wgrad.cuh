// Launchers of conv_wgrad.cu: version 3 of conv2d_backward_filter (host code; no CUDA
// syntax). conv.cu's conv2d_backward_filter and conv2d_backward_filter_plan dispatch here
// for version 3 (the geometry already checked by them).
#pragma once
#include <cstdint>

#include "kernels/conv.cuh"

namespace alexnet::kernels {

// The split of the N*P*Q reduction and the workspace of version 3: `splits` partial dw
// (when splits > 1) followed by the zero-padded copy of x (when pad > 0).
SplitPlan conv2d_backward_filter_v3_plan(const ConvShape& s, int splits);

// dw with version 3; `work` holds conv2d_backward_filter_v3_plan(s, splits).workspace floats.
void conv2d_backward_filter_v3(const float* dy, const float* x, float* dw, float* work, int64_t work_floats,
                               const ConvShape& s, int splits, cudaStream_t stream);

}  // namespace alexnet::kernels
