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
// The same scan, without a read back: when a label is bad and flag (two int64 of device memory)
// is still (0, 0), writes (first bad row + 1, its label) there. Launches one kernel; no sync.
void record_bad_label(const void* labels, bool labels64, int64_t n, int64_t classes, int64_t* flag,
                      cudaStream_t stream);
// loss[0] = mean over rows of -log softmax(logits)[label]; dlogits = (softmax - onehot) / N.
// row_loss: N floats of workspace. A row whose label is out of range gets a NaN loss (see
// record_bad_label); first_bad_label checks them before, when the caller needs an error now.
void softmax_cross_entropy(const float* logits, const void* labels, bool labels64, float* loss, float* dlogits,
                           float* row_loss, int64_t N, int64_t classes, int version, cudaStream_t stream);
}  // namespace alexnet::kernels
