// Launchers of softmax_xent.cu (host code; no CUDA syntax, so the bindings include it in both builds).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels {
// Numbered versions of softmax_cross_entropy: 1..kSoftmaxXentVersions (common/launch.h).
inline constexpr int kSoftmaxXentVersions = 2;
// Scans labels (n entries, int64 when labels64 else int32) on the device. Returns -1 when
// every label is in [0, classes), else the first bad row, with its label in *bad_value.
// work: one int of device memory. Synchronizes `stream` (one 4-byte copy back).
int64_t first_bad_label(const void* labels, bool labels64, int64_t n, int64_t classes, int* work, int64_t* bad_value,
                        cudaStream_t stream);
// loss[0] = mean over rows of -log softmax(logits)[label]; dlogits = (softmax - onehot) / N.
// row_loss: N floats of workspace. Labels must already be in range (first_bad_label).
void softmax_cross_entropy(const float* logits, const void* labels, bool labels64, float* loss, float* dlogits,
                           float* row_loss, int64_t N, int64_t classes, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
