// Warp-level matrix multiply-accumulate on tensor cores: the two mma.sync instructions the
// tensor-core kernels use, behind one device-function interface for both builds.
//
//   mma_bf16_m16n8k16  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
//   mma_tf32_m16n8k8   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//
// D (16 x 8, FP32) = A (16 x K) * B (K x 8) + C (16 x 8, FP32), K = 16 (BF16) or 8 (TF32).
// All 32 lanes of a warp call the same instruction together; each holds a fixed part of A,
// B, C and D in registers, as the PTX ISA's fragment-layout figures ("Matrix Fragments for
// mma.m16n8k16 with floating point type", "... for mma.m16n8k8", .bf16 and .tf32) define.
// With g = lane >> 2 (the group) and t = lane & 3 (the thread in its group):
//
//   BF16 A, 4 registers of 2 bf16 (element 2r in the low 16 bits of register r, 2r+1 high):
//     element i (0..7): row g + 8 * ((i >> 1) & 1), column 2t + (i & 1) + 8 * (i >> 2)
//   BF16 B, 2 registers of 2 bf16, element i (0..3): row (k) 2t + (i & 1) + 8 * (i >> 1), column g
//   TF32 A, 4 registers, element i: row g + 8 * (i & 1), column t + 4 * (i >> 1)
//   TF32 B, 2 registers, element i: row (k) t + 4 * i, column g
//   C and D, 4 floats, element i: row g + 8 * (i >> 1), column 2t + (i & 1)
//
// The coordinate functions below state these once; the kernels load and store their
// fragments through them, and the emu body places every lane's registers through them.
// (tests/test_mma.py loads by the PTX formulas written out independently in a self-test
// kernel, so a wrong line here fails there, on emu and on a GPU alike.)
//
// Rounding: BF16 inputs are bf16 already (pack_bf16 rounds to nearest even). TF32 inputs
// are FP32 registers that the kernel rounds with to_tf32 (cvt.rna.tf32.f32: to nearest,
// ties away from zero, low 13 bits zero); the products are exact in FP32 and accumulate in
// FP32. The emu body sums D = C + sum_k A B in k order in FP32; the hardware's order and
// internal precision inside one instruction are not specified, so tests compare with a
// bound on FP32 rounding, not bits.
//
// Under nvcc the bodies are inline PTX (sm_80 and later); under ALEXNET_EMU (csrc/emu) each
// instruction is a warp-collective operation (emu::warp_compute): the last lane to arrive
// rebuilds A and B from the 32 lanes' registers by the layout above, computes every lane's
// D, and checks that all lanes are at the same instruction (call site).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#if defined(ALEXNET_EMU)
#include <mma.h>

#include <cstring>
#include <source_location>
#include <string>
#endif

namespace alexnet::mma {

struct Coord {
  int row, col;
};

__host__ __device__ __forceinline__ constexpr Coord bf16_a(int lane, int i) {
  return {(lane >> 2) + 8 * ((i >> 1) & 1), 2 * (lane & 3) + (i & 1) + 8 * (i >> 2)};
}
__host__ __device__ __forceinline__ constexpr Coord bf16_b(int lane, int i) {
  return {2 * (lane & 3) + (i & 1) + 8 * (i >> 1), lane >> 2};
}
__host__ __device__ __forceinline__ constexpr Coord tf32_a(int lane, int i) {
  return {(lane >> 2) + 8 * (i & 1), (lane & 3) + 4 * (i >> 1)};
}
__host__ __device__ __forceinline__ constexpr Coord tf32_b(int lane, int i) { return {(lane & 3) + 4 * i, lane >> 2}; }
__host__ __device__ __forceinline__ constexpr Coord acc(int lane, int i) {
  return {(lane >> 2) + 8 * (i >> 1), 2 * (lane & 3) + (i & 1)};
}

// Two floats rounded to bf16 (nearest even), `lo` in bits 0..15: one BF16 A or B register.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}

#if !defined(ALEXNET_EMU)

// cvt.rna.tf32.f32: the TF32 register of an FP32 value.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                  const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

#else  // ALEXNET_EMU

// cvt.rna.tf32.f32 (csrc/emu/mma.h has the rounding).
inline uint32_t to_tf32(float x) { return emu::float_to_tf32_bits(x); }

namespace emu_detail {

// One lane's operands of one instruction, published to the warp.
struct Lane {
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
  float* d;
  const char* file;
  int site;  // line * 1000 + column of the call
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A BF16 register holds two bf16; element h (0 low, 1 high) as a float.
inline float bf16_half(uint32_t r, int h) { return bits_to_float(h ? (r & 0xffff0000u) : (r << 16)); }
// A TF32 register: the instruction reads the 19 bits of TF32; the kernels clear the other 13
// with to_tf32 before they get here, so this masking never changes their values.
inline float tf32_reg(uint32_t r) { return bits_to_float(r & 0xffffe000u); }

// The warp's operation, run by the last lane to arrive: rebuild A (16 x K) and B (K x 8)
// from the lanes' registers, then D = C + A B for every lane, k in order, in FP32.
template <int K, bool BF16>
void run(void* const* records) {
  const Lane* L[32];
  for (int l = 0; l < 32; ++l) L[l] = static_cast<const Lane*>(records[l]);
  for (int l = 1; l < 32; ++l)
    if (L[l]->site != L[0]->site || std::strcmp(L[l]->file, L[0]->file) != 0)
      emu::kernel_fail(std::string("mma.sync: the lanes of a warp are at different instructions (lane 0 at ") +
                       L[0]->file + ":" + std::to_string(L[0]->site / 1000) + ", lane " + std::to_string(l) + " at " +
                       L[l]->file + ":" + std::to_string(L[l]->site / 1000) + ")");
  float A[16][K], B[K][8];
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 2 * K / 4; ++i) {  // 8 A elements per lane (BF16), 4 (TF32)
      const Coord p = BF16 ? bf16_a(l, i) : tf32_a(l, i);
      A[p.row][p.col] = BF16 ? bf16_half(L[l]->a[i >> 1], i & 1) : tf32_reg(L[l]->a[i]);
    }
    for (int i = 0; i < K / 4; ++i) {  // 4 B elements per lane (BF16), 2 (TF32)
      const Coord p = BF16 ? bf16_b(l, i) : tf32_b(l, i);
      B[p.row][p.col] = BF16 ? bf16_half(L[l]->b[i >> 1], i & 1) : tf32_reg(L[l]->b[i]);
    }
  }
  float D[32][4];
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      const Coord p = acc(l, i);
      float s = L[l]->c[i];
      for (int k = 0; k < K; ++k) s += A[p.row][k] * B[k][p.col];
      D[l][i] = s;
    }
  for (int l = 0; l < 32; ++l) std::memcpy(L[l]->d, D[l], sizeof D[l]);  // d may be the same array as c
}

}  // namespace emu_detail

inline void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                              std::source_location w = std::source_location::current()) {
  emu_detail::Lane me{a, b, c, d, w.file_name(), int(w.line() * 1000 + w.column())};
  emu::warp_compute(emu_detail::run<16, true>, &me, "mma.sync.m16n8k16.bf16");
}

inline void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                             std::source_location w = std::source_location::current()) {
  emu_detail::Lane me{a, b, c, d, w.file_name(), int(w.line() * 1000 + w.column())};
  emu::warp_compute(emu_detail::run<8, false>, &me, "mma.sync.m16n8k8.tf32");
}

#endif

}  // namespace alexnet::mma
