// tanh, forward and backward (the saturating unit of the paper's Figure 1, section 3.1).
//
// Math:    y = tanh(x);  dx = dy * (1 - y^2), computed as dy * ((1 - y) * (1 + y)): 1 - y is exact
//          for |y| >= 1/2 (Sterbenz), so the factor keeps its relative precision where y nears +-1,
//          and the expression has no multiply-add a compiler could contract, so every build rounds
//          it as the NumPy reference does (bitwise equal backward). tanhf is CUDA's (at most 2 ulp
//          from the exact value; the emu build uses the host's libm).
// Layout:  any shape, treated as n contiguous elements: FP32, or BF16 storage (uint16 bits; tanhf and
//          the backward product on the widened values, one rounding on store: common/storage.cuh);
//          the backward reads y (the forward output), not x.
// Threads: a grid-stride loop, 256 threads per block (common/elementwise.cuh).
//
// version 1: one element per thread per iteration.
// version 2: four elements per thread per iteration as one vector access (float4 FP32, uint2 BF16);
//            needs all pointers aligned to four elements (the dispatcher picks version 1 otherwise);
//            the n % 4 tail is done by the first threads of the grid.
// Both are the templates of common/elementwise.cuh with the math below; memory-bound: 8 or 12 bytes
// per element (FP32; half in BF16) against one tanhf.
#include "kernels/tanh.cuh"

#include "common/elementwise.cuh"

namespace alexnet::kernels {

// the math, as common/elementwise.cuh's template argument (a named namespace: nvcc wants kernel template
// arguments with linkage)
struct TanhMath {
  static __device__ __forceinline__ float forward(float x) { return tanhf(x); }
  static __device__ __forceinline__ float backward(float dy, float y) { return dy * ((1.0f - y) * (1.0f + y)); }
};

static_assert(kTanhVersions == elementwise::kVersions);

void tanh_forward(const float* x, float* y, int64_t n, int version, cudaStream_t stream) {
  elementwise::forward<TanhMath>("tanh_forward", x, y, n, version, stream);
}
void tanh_forward(const uint16_t* x, uint16_t* y, int64_t n, int version, cudaStream_t stream) {
  elementwise::forward<TanhMath>("tanh_forward", x, y, n, version, stream);
}
void tanh_backward(const float* dy, const float* y, float* dx, int64_t n, int version, cudaStream_t stream) {
  elementwise::backward<TanhMath>("tanh_backward", dy, y, dx, n, version, stream);
}
void tanh_backward(const uint16_t* dy, const uint16_t* y, uint16_t* dx, int64_t n, int version,
                   cudaStream_t stream) {
  elementwise::backward<TanhMath>("tanh_backward", dy, y, dx, n, version, stream);
}

}  // namespace alexnet::kernels
