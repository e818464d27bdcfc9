// Launchers of topk.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of topk_correct: 1..kTopkVersions (common/launch.h).
inline constexpr int kTopkVersions = 2;
// out[0] (int64, device) = number of rows whose label is among the top k logits (only
// strictly greater logits rank ahead). Labels must be in range (see first_bad_label).
void topk_correct(const float* logits, const void* labels, bool labels64, int64_t N, int64_t classes, int64_t k,
                  int64_t* out, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
