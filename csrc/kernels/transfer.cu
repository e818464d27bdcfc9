// Where the towers meet (conv3's input, the inputs of fc6, fc7 and fc8; paper section 3.2, Figure 2),
// the receiving device reads the other tower's output straight from the peer device's memory (peer
// access over NVLink or PCIe, unified addressing) and writes it into its slice of the concatenated
// input, so no separate copy or concatenation pass runs. Backward, the matching kernel reads the
// peer's gradient of that slice and adds it to the local one.
//
// Math:    forward   dst[n, off + k] = src[n, src_off + k]
//          backward  out[n, k] = peer[n, off + k] + local[n, off + k]   (local optional)
//          n < rows, k < width.
// Storage: FP32, or BF16 (uint16 bits, T = uint16_t; common/storage.cuh), one storage for every
//          array of a call. The forward and a backward without `local` copy the elements as they
//          are (bitwise, no widening); the backward's sum adds the widened values in FP32 and rounds
//          once on store, so the BF16 op is round_bf16(the FP32 op on the widened inputs).
// Layout:  every array is `rows` rows of elements. For NCHW maps a row is one image: width =
//          C_tower*H*W, the concatenated row C*H*W, off = c0*H*W (the channel slice starts at c0);
//          for NC features width = F_tower, off = f0. src_off picks a channel range of src (the few
//          boundary channels a tower's LRN needs from its neighbour; 0 for a whole tower). The reads of the peer are coalesced like the
//          local writes: consecutive threads take consecutive floats of a row.
// Threads: 256 per block.
//
// version 1: a grid-stride loop over rows*width elements, one element per thread per iteration
//            (row and column from a division); any width and offset.
// version 2: one block row per image row (blockIdx.y, looping past 65535), threads stride over the
//            row in vectors of four elements (storage::Vec4: float4 FP32, uint2 BF16); needs width,
//            off, the row lengths multiples of 4 elements and every pointer aligned to four elements
//            (16 bytes FP32, 8 BF16; the dispatcher picks version 1 otherwise).
// Both are memory-bound: 8 (forward) or 12 (backward) bytes per element, of which 4 cross the link
// (FP32; half of each in BF16).
#include "kernels/transfer.cuh"

#include <stdexcept>

#include "common/launch.h"
#include "common/storage.cuh"

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxRowsPerGrid = 65535;

// ---- version 1 ------------------------------------------------------------------
template <class T>
__global__ void transfer_forward_v1(const T* __restrict__ src, T* __restrict__ dst, int64_t rows, int64_t width,
                                    int64_t src_width, int64_t src_off, int64_t dst_width, int64_t off) {
  const int64_t n = rows * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, k = i - r * width;
    dst[r * dst_width + off + k] = src[r * src_width + src_off + k];
  }
}

template <class T>
__global__ void transfer_backward_v1(const T* __restrict__ peer, const T* __restrict__ local, T* __restrict__ out,
                                     int64_t rows, int64_t width, int64_t src_width, int64_t off) {
  const int64_t n = rows * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, k = i - r * width;
    const int64_t j = r * src_width + off + k;
    if (local)
      storage::store(out, i, storage::load(peer, j) + storage::load(local, j));
    else
      out[i] = peer[j];
  }
}

// ---- version 2 (all counts in vectors of four elements) ----------------------------
// v + u by element in FP32; BF16: widened, added, rounded once.
__device__ __forceinline__ float4 add4(float4 v, const float4& u) {
  v.x += u.x;
  v.y += u.y;
  v.z += u.z;
  v.w += u.w;
  return v;
}
__device__ __forceinline__ uint2 add4(const uint2& v, const uint2& u) {
  float a[4], b[4];
  storage::Vec4<uint16_t>::widen(v, a);
  storage::Vec4<uint16_t>::widen(u, b);
  for (int e = 0; e < 4; ++e) a[e] += b[e];
  return storage::Vec4<uint16_t>::narrow(a);
}

template <class T>
__global__ void transfer_forward_v2(const T* __restrict__ src, T* __restrict__ dst, int64_t rows, int64_t width4,
                                    int64_t src_width4, int64_t src_off4, int64_t dst_width4, int64_t off4) {
  using V = typename storage::Vec4<T>::type;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const V* s = reinterpret_cast<const V*>(src) + r * src_width4 + src_off4;
    V* d = reinterpret_cast<V*>(dst) + r * dst_width4 + off4;
    for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < width4; k += int64_t(gridDim.x) * blockDim.x)
      d[k] = s[k];
  }
}

template <class T>
__global__ void transfer_backward_v2(const T* __restrict__ peer, const T* __restrict__ local, T* __restrict__ out,
                                     int64_t rows, int64_t width4, int64_t src_width4, int64_t off4) {
  using V = typename storage::Vec4<T>::type;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const V* p = reinterpret_cast<const V*>(peer) + r * src_width4 + off4;
    const V* l = local ? reinterpret_cast<const V*>(local) + r * src_width4 + off4 : nullptr;
    V* o = reinterpret_cast<V*>(out) + r * width4;
    for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < width4;
         k += int64_t(gridDim.x) * blockDim.x) {
      V v = p[k];  // without local: copied as it is
      if (l) v = add4(v, l[k]);
      o[k] = v;
    }
  }
}

// The version-2 geometry: x blocks over a row's float4s, y blocks over the rows.
dim3 row_grid(int64_t rows, int64_t width4) {
  const int64_t x = (width4 + kThreads - 1) / kThreads;
  return dim3(unsigned(x < 1 ? 1 : x > 1024 ? 1024 : x), unsigned(rows < kMaxRowsPerGrid ? rows : kMaxRowsPerGrid));
}

bool rows_aligned(int64_t width, int64_t row, int64_t off) { return width % 4 == 0 && row % 4 == 0 && off % 4 == 0; }
bool rows_aligned(int64_t width, int64_t row, int64_t off, int64_t row2, int64_t off2) {
  return rows_aligned(width, row, off) && row2 % 4 == 0 && off2 % 4 == 0;
}

template <class T>
void forward(const T* src, T* dst, int64_t rows, int64_t width, int64_t src_width, int64_t src_off, int64_t dst_width,
             int64_t off, int version, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  const bool al = storage::aligned_vec4(src, dst) && rows_aligned(width, dst_width, off, src_width, src_off);
  version = pick_version("transfer_forward", version, kTransferVersions, al ? 2 : 1);
  if (version == 2 && !al)
    throw std::invalid_argument("transfer_forward: version 2 needs " + std::to_string(4 * sizeof(T)) +
                                "-byte aligned arrays and widths, offset and row lengths that are multiples of 4 "
                                "elements");
  if (version == 1) {
    LAUNCH(transfer_forward_v1<T>, dim3(grid_stride_blocks(rows * width, kThreads)), dim3(kThreads), 0, stream, src,
           dst, rows, width, src_width, src_off, dst_width, off);
  } else {
    LAUNCH(transfer_forward_v2<T>, row_grid(rows, width / 4), dim3(kThreads), 0, stream, src, dst, rows, width / 4,
           src_width / 4, src_off / 4, dst_width / 4, off / 4);
  }
}

template <class T>
void backward(const T* peer, const T* local, T* out, int64_t rows, int64_t width, int64_t src_width, int64_t off,
              int version, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  const bool al = storage::aligned_vec4(peer, out) && (!local || storage::aligned_vec4(local)) &&
                  rows_aligned(width, src_width, off);
  version = pick_version("transfer_backward", version, kTransferVersions, al ? 2 : 1);
  if (version == 2 && !al)
    throw std::invalid_argument("transfer_backward: version 2 needs " + std::to_string(4 * sizeof(T)) +
                                "-byte aligned arrays and widths, offset and row lengths that are multiples of 4 "
                                "elements");
  if (version == 1) {
    LAUNCH(transfer_backward_v1<T>, dim3(grid_stride_blocks(rows * width, kThreads)), dim3(kThreads), 0, stream, peer,
           local, out, rows, width, src_width, off);
  } else {
    LAUNCH(transfer_backward_v2<T>, row_grid(rows, width / 4), dim3(kThreads), 0, stream, peer, local, out, rows,
           width / 4, src_width / 4, off / 4);
  }
}

}  // namespace

void transfer_forward(const float* src, float* dst, int64_t rows, int64_t width, int64_t src_width, int64_t src_off,
                      int64_t dst_width, int64_t off, int version, cudaStream_t stream) {
  forward(src, dst, rows, width, src_width, src_off, dst_width, off, version, stream);
}
void transfer_forward(const uint16_t* src, uint16_t* dst, int64_t rows, int64_t width, int64_t src_width,
                      int64_t src_off, int64_t dst_width, int64_t off, int version, cudaStream_t stream) {
  forward(src, dst, rows, width, src_width, src_off, dst_width, off, version, stream);
}
void transfer_backward(const float* peer, const float* local, float* out, int64_t rows, int64_t width,
                       int64_t src_width, int64_t off, int version, cudaStream_t stream) {
  backward(peer, local, out, rows, width, src_width, off, version, stream);
}
void transfer_backward(const uint16_t* peer, const uint16_t* local, uint16_t* out, int64_t rows, int64_t width,
                       int64_t src_width, int64_t off, int version, cudaStream_t stream) {
  backward(peer, local, out, rows, width, src_width, off, version, stream);
}

}  // namespace alexnet::kernels
