// Launchers of reduce.cu.
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of reduce_sum: 1..kReduceVersions (common/launch.h).
inline constexpr int kReduceVersions = 2;
// Partial sums need this many floats of workspace.
constexpr int kReduceMaxBlocks = 1024;
// out[0] = sum of x[0..n); work holds kReduceMaxBlocks floats. Deterministic: the
// summation order depends only on n (and the version), never on timing.
void reduce_sum(const float* x, float* out, float* work, int64_t n, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
