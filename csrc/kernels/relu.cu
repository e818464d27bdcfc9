// ReLU, forward and backward (paper section 3.1).
//
// Math:    y = max(0, x);  dx = dy if y > 0 else 0  (the gradient at 0 is taken as 0)
// Layout:  any shape, treated as n contiguous elements: FP32, or BF16 storage (uint16 bits; the
//          math on the widened values, one rounding on store: common/storage.cuh). max and the
//          select are exact, so BF16 relu is bitwise round_bf16(FP32 relu) = FP32 relu of the values.
// Threads: a grid-stride loop, 256 threads per block (common/elementwise.cuh).
//
// version 1: one element per thread per iteration.
// version 2: four elements per thread per iteration as one vector access (float4 FP32, uint2
//            BF16); needs all pointers aligned to four elements (the dispatcher picks version 1
//            otherwise); the n % 4 tail is done by the first threads of the grid.
// Both are the templates of common/elementwise.cuh with ReluMath (kernels/relu_math.cuh); memory-bound: 8
// (forward) or 12 (backward) bytes per element in FP32, 4 or 6 in BF16.
#include "kernels/relu.cuh"

#include "common/elementwise.cuh"
#include "kernels/relu_math.cuh"

namespace alexnet::kernels {

// The math (ReluMath) is in kernels/relu_math.cuh, shared with the epilogues that fold the
// ReLU's backward into conv2d_backward's data gradient (relu_input).

static_assert(kReluVersions == elementwise::kVersions);

void relu_forward(const float* x, float* y, int64_t n, int version, cudaStream_t stream) {
  elementwise::forward<ReluMath>("relu_forward", x, y, n, version, stream);
}
void relu_forward(const uint16_t* x, uint16_t* y, int64_t n, int version, cudaStream_t stream) {
  elementwise::forward<ReluMath>("relu_forward", x, y, n, version, stream);
}
void relu_backward(const float* dy, const float* y, float* dx, int64_t n, int version, cudaStream_t stream) {
  elementwise::backward<ReluMath>("relu_backward", dy, y, dx, n, version, stream);
}
void relu_backward(const uint16_t* dy, const uint16_t* y, uint16_t* dx, int64_t n, int version,
                   cudaStream_t stream) {
  elementwise::backward<ReluMath>("relu_backward", dy, y, dx, n, version, stream);
}

}  // namespace alexnet::kernels
