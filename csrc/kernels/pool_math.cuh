// Max pooling's geometry and window arithmetic, one place for every kernel that pools
// (pool.cu, lrn_pool.cu). Device code; included by .cu files only (the launchers are in pool.cuh).
//
//   P = (H - size)/stride + 1 windows along a column (Q along a row), no padding; window (p, q)
//   covers rows p*stride .. p*stride + size - 1 and columns q*stride .. q*stride + size - 1.
//   Its maximum and first maximum in row-major order follow np.max / np.argmax: a NaN counts as
//   the maximum, the first NaN wins.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/storage.cuh"

namespace alexnet::kernels::pool_math {

struct PoolGeom {
  int64_t NC;
  int H, W, P, Q, size, stride;
};

// The geometry of pooling x (N, C, H, W), or std::invalid_argument naming `op`.
inline PoolGeom geometry(const char* op, int64_t N, int64_t C, int64_t H, int64_t W, int size, int stride) {
  if (size < 1 || stride < 1)
    throw std::invalid_argument(std::string(op) + ": size and stride must be >= 1, got " + std::to_string(size) + ", " +
                                std::to_string(stride));
  if (size > H || size > W)
    throw std::invalid_argument(std::string(op) + ": size=" + std::to_string(size) +
                                " pooling window is larger than the input x (" + std::to_string(H) + "x" +
                                std::to_string(W) + ")");
  PoolGeom G;
  G.NC = N * C;
  G.H = int(H);
  G.W = int(W);
  G.size = size;
  G.stride = stride;
  G.P = int((H - size) / stride + 1);
  G.Q = int((W - size) / stride + 1);
  return G;
}

// The maximum of a size x size window and the row-major offset r*size+s of its first occurrence
// (np.max / np.argmax: a NaN wins over numbers, the first NaN over later ones); at(r, s) gives the
// window's values as floats.
template <class At>
__device__ __forceinline__ float first_max_of(At at, int size, int& arg) {
  float m = at(0, 0);
  arg = 0;
  for (int r = 0; r < size; ++r)
    for (int s = 0; s < size; ++s) {
      const float v = at(r, s);
      if (v > m || (v != v && m == m)) {
        m = v;
        arg = r * size + s;
      }
    }
  return m;
}

// first_max_of a window in memory of storage type T (float, or BF16 bits: widened); `win` points at
// the window's first element.
template <class T>
__device__ __forceinline__ float window_first_max(const T* __restrict__ win, int row_stride, int size, int& arg) {
  return first_max_of([&](int r, int s) { return storage::load(win, r * row_stride + s); }, size, arg);
}

// Range of windows [lo, hi] along one axis that contain input coordinate h (empty: lo > hi).
__device__ __forceinline__ void covering(int h, int size, int stride, int P, int& lo, int& hi) {
  lo = h - size + 1 <= 0 ? 0 : (h - size + 1 + stride - 1) / stride;
  hi = min(P - 1, h / stride);
}

}  // namespace alexnet::kernels::pool_math
