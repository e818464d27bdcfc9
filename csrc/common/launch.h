// Host-side helpers shared by every launcher and binding, in both builds: launch geometry,
// pointer alignment and the check of a numbered kernel version. Plain C++ (no CUDA
// syntax), so the bindings include it through the launcher headers and arrays.h.
//
// Kernel versions: each family's launcher header (kernels/<family>.cuh) declares how many
// numbered versions it has, e.g. `inline constexpr int kReluVersions = 2;`, meaning versions
// 1..2, with 0 asking the dispatcher to choose. Its dispatchers check a version with
// pick_version / check_version below, and its binding registers the same constant
// (register_versions, bindings/arrays.h), so the list Python sees is the list the kernels take.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace alexnet {

// ---- launch geometry ----------------------------------------------------------------------
inline unsigned int ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

// Blocks for a grid-stride loop over `work` items at `threads` threads per block: one item per
// thread when that fits, at least one block, at most kMaxGridStrideBlocks.
// Cap 65535*8: ~500x the blocks an H200 holds at once (132 SMs x 8), so no SM idles; the loop does the rest.
inline constexpr int64_t kMaxGridStrideBlocks = 65535 * 8;
inline unsigned grid_stride_blocks(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return unsigned(blocks < 1 ? 1 : blocks > kMaxGridStrideBlocks ? kMaxGridStrideBlocks : blocks);
}

// ---- alignment ----------------------------------------------------------------------------
// p is a multiple of `bytes` (a power of two).
inline bool aligned(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0; }
// Every pointer allows 16-byte (float4) accesses.
template <class... T>
inline bool aligned16(const T*... p) {
  return (aligned(p, 16) && ...);
}

// ---- kernel versions ----------------------------------------------------------------------
// Unless 0 <= version <= count, std::invalid_argument (ValueError in Python) such as
// "relu_forward: no kernel version 9 (have 1, 2; 0 = the dispatcher's choice)".
inline void check_version(const char* op, int version, int count) {
  if (version >= 0 && version <= count) return;
  std::string have;
  for (int v = 1; v <= count; ++v) {
    if (v > 1) have += ", ";
    have += std::to_string(v);
  }
  throw std::invalid_argument(std::string(op) + ": no kernel version " + std::to_string(version) + " (have " + have +
                              "; 0 = the dispatcher's choice)");
}

// check_version, then the version to run: `version`, or `choice` (the dispatcher's) when it is 0.
inline int pick_version(const char* op, int version, int count, int choice) {
  check_version(op, version, count);
  return version == 0 ? choice : version;
}

}  // namespace alexnet
