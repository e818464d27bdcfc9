// The ReLU's math as device code (included only by .cu files): the one definition that relu.cu's
// kernels (as common/elementwise.cuh's template argument) and every kernel that folds the backward
// of the ReLU before it into its own share (relu_input / relu_y: conv.cu, conv_tc.cu,
// conv_winograd.cu, pool.cu, dropout.cu, lrn_pool.cu), so a folded backward is relu_backward of
// the unfolded result bit for bit by construction.
//
//   ReluMath::forward(x)       = fmaxf(x, 0)
//   ReluMath::backward(dy, y)  = dy where y > 0, else +0 (y is the ReLU's output). The comparison
//                                is false for y = +0, -0 and NaN, which all give +0; a NaN or
//                                infinite dy where y > 0 passes through unchanged.
//
// The fold in the conv data gradients (conv2d_backward's relu_input): a data-gradient
// kernel whose input x is a ReLU's output stores ReluMath::backward(v, x[i]) instead of v, v the FP32
// gradient it would store at element i, x (same layout as dx, storage T: float or uint16_t BF16
// bits, widened exactly) the ReLU's output as stored.
//   relu_gate(x, i, ok)  the value the select compares with 0: x[i], or 1 (keep v) when x is null
//                        (no fold) or !ok (an element the kernel does not store: no load). A kernel
//                        with several stores per thread loads their gates together first (all the
//                        loads in flight at once, not one round trip per store), then selects.
//   relu_fold(v, x, i)   both for one element.
// The select happens on the FP32 value before the one rounding of a BF16 store; it commutes with
// that rounding (round(+0) = +0, round(v) otherwise), so the folded BF16 dx equals relu_backward of
// the stored dx, as the separate ops give it.
#pragma once

#include "common/storage.cuh"

namespace alexnet::kernels {

// As a struct for common/elementwise.cuh's template argument (a named namespace: nvcc wants
// kernel template arguments with linkage).
struct ReluMath {
  static __device__ __forceinline__ float forward(float x) { return fmaxf(x, 0.0f); }
  static __device__ __forceinline__ float backward(float dy, float y) { return y > 0.0f ? dy : 0.0f; }
};

template <class T>
__device__ __forceinline__ float relu_gate(const T* __restrict__ x, int64_t i, bool ok = true) {
  return x && ok ? storage::load(x, i) : 1.0f;
}

template <class T>
__device__ __forceinline__ float relu_fold(float v, const T* __restrict__ x, int64_t i) {
  return x ? ReluMath::backward(v, relu_gate(x, i)) : v;
}

}  // namespace alexnet::kernels
