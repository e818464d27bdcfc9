// The ReLU's arithmetic, one place for relu.cu (the elementwise kernels, as common/elementwise.cuh's
// template argument) and for every kernel that folds the backward of the ReLU before it into its own
// (relu_input: pool.cu, dropout.cu, lrn_pool.cu), so that a folded backward is relu_backward of the
// unfolded result bit for bit. Device code; included by .cu files only.
//
//   forward:  y  = max(0, x)
//   backward: dx = dy where y > 0, else +0 (y <= 0, -0 or NaN: the gradient at 0 is taken as 0)
#pragma once

namespace alexnet::kernels {

// (a named namespace: nvcc wants kernel template arguments with linkage)
struct ReluMath {
  static __device__ __forceinline__ float forward(float x) { return fmaxf(x, 0.0f); }
  static __device__ __forceinline__ float backward(float dy, float y) { return y > 0.0f ? dy : 0.0f; }
};

}  // namespace alexnet::kernels
