// Where the towers meet (conv3's input, the inputs of fc6, fc7 and fc8; paper section 3.2, Figure 2),
// the receiving device reads the other tower's output straight from the peer device's memory (peer
// access over NVLink or PCIe, unified addressing) and writes it into its slice of the concatenated
// input, so no separate copy or concatenation pass runs. Backward, the matching kernel reads the
// peer's gradient of that slice and adds it to the local one.
//
// Math:    forward   dst[n, off + k] = src[n, src_off + k]
//          backward  out[n, k] = peer[n, off + k] + local[n, off + k]   (local optional)
//          n < rows, k < width.
// Layout:  every array is `rows` rows of floats. For NCHW maps a row is one image: width =
//          C_tower*H*W, the concatenated row C*H*W, off = c0*H*W (the channel slice starts at c0);
//          for NC features width = F_tower, off = f0. src_off picks a channel range of src (the few
//          boundary channels a tower's LRN needs from its neighbour; 0 for a whole tower). The reads of the peer are coalesced like the
//          local writes: consecutive threads take consecutive floats of a row.
// Threads: 256 per block.
//
// version 1: a grid-stride loop over rows*width elements, one float per thread per iteration
//            (row and column from a division); any width and offset.
// version 2: one block row per image row (blockIdx.y, looping past 65535), threads stride over the
//            row in float4s; needs width, off, the row lengths and every pointer 16-byte aligned
//            (the dispatcher picks version 1 otherwise).
// Both are memory-bound: 8 (forward) or 12 (backward) bytes per element, of which 4 cross the link.
#include "kernels/transfer.cuh"

#include <stdexcept>

#include "common/launch.h"

namespace alexnet::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxRowsPerGrid = 65535;

// ---- version 1 ------------------------------------------------------------------
__global__ void transfer_forward_v1(const float* __restrict__ src, float* __restrict__ dst, int64_t rows,
                                    int64_t width, int64_t src_width, int64_t src_off, int64_t dst_width,
                                    int64_t off) {
  const int64_t n = rows * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, k = i - r * width;
    dst[r * dst_width + off + k] = src[r * src_width + src_off + k];
  }
}

__global__ void transfer_backward_v1(const float* __restrict__ peer, const float* __restrict__ local,
                                     float* __restrict__ out, int64_t rows, int64_t width, int64_t src_width,
                                     int64_t off) {
  const int64_t n = rows * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, k = i - r * width;
    const int64_t j = r * src_width + off + k;
    out[i] = local ? peer[j] + local[j] : peer[j];
  }
}

// ---- version 2 (all counts in float4s) -------------------------------------------
__global__ void transfer_forward_v2(const float4* __restrict__ src, float4* __restrict__ dst, int64_t rows,
                                    int64_t width4, int64_t src_width4, int64_t src_off4, int64_t dst_width4,
                                    int64_t off4) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float4* s = src + r * src_width4 + src_off4;
    float4* d = dst + r * dst_width4 + off4;
    for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < width4; k += int64_t(gridDim.x) * blockDim.x)
      d[k] = s[k];
  }
}

__global__ void transfer_backward_v2(const float4* __restrict__ peer, const float4* __restrict__ local,
                                     float4* __restrict__ out, int64_t rows, int64_t width4, int64_t src_width4,
                                     int64_t off4) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float4* p = peer + r * src_width4 + off4;
    const float4* l = local ? local + r * src_width4 + off4 : nullptr;
    float4* o = out + r * width4;
    for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < width4;
         k += int64_t(gridDim.x) * blockDim.x) {
      float4 v = p[k];
      if (l) {
        const float4 u = l[k];
        v.x += u.x;
        v.y += u.y;
        v.z += u.z;
        v.w += u.w;
      }
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

}  // namespace

void transfer_forward(const float* src, float* dst, int64_t rows, int64_t width, int64_t src_width, int64_t src_off,
                      int64_t dst_width, int64_t off, int version, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  const bool al = aligned16(src, dst) && rows_aligned(width, dst_width, off, src_width, src_off);
  version = pick_version("transfer_forward", version, kTransferVersions, al ? 2 : 1);
  if (version == 2 && !al)
    throw std::invalid_argument("transfer_forward: version 2 needs 16-byte aligned arrays and widths, offset "
                                "and row lengths that are multiples of 4 floats");
  if (version == 1) {
    LAUNCH(transfer_forward_v1, dim3(grid_stride_blocks(rows * width, kThreads)), dim3(kThreads), 0, stream, src, dst,
           rows, width, src_width, src_off, dst_width, off);
  } else {
    LAUNCH(transfer_forward_v2, row_grid(rows, width / 4), dim3(kThreads), 0, stream,
           reinterpret_cast<const float4*>(src), reinterpret_cast<float4*>(dst), rows, width / 4, src_width / 4,
           src_off / 4, dst_width / 4, off / 4);
  }
}

void transfer_backward(const float* peer, const float* local, float* out, int64_t rows, int64_t width,
                       int64_t src_width, int64_t off, int version, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  const bool al = aligned16(peer, out) && (!local || aligned16(local)) && rows_aligned(width, src_width, off);
  version = pick_version("transfer_backward", version, kTransferVersions, al ? 2 : 1);
  if (version == 2 && !al)
    throw std::invalid_argument("transfer_backward: version 2 needs 16-byte aligned arrays and widths, offset "
                                "and row lengths that are multiples of 4 floats");
  if (version == 1) {
    LAUNCH(transfer_backward_v1, dim3(grid_stride_blocks(rows * width, kThreads)), dim3(kThreads), 0, stream, peer,
           local, out, rows, width, src_width, off);
  } else {
    LAUNCH(transfer_backward_v2, row_grid(rows, width / 4), dim3(kThreads), 0, stream,
           reinterpret_cast<const float4*>(peer), reinterpret_cast<const float4*>(local), reinterpret_cast<float4*>(out),
           rows, width / 4, src_width / 4, off / 4);
  }
}

}  // namespace alexnet::kernels
