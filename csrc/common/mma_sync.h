// Warp-level matrix multiply-accumulate on tensor cores: the two mma.sync instructions the
// tensor-core kernels use, and the ldmatrix that loads their 16-bit fragments from shared
// memory, behind one device-function interface for both builds.
//
//   mma_bf16_m16n8k16  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
//   mma_tf32_m16n8k8   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//   ldmatrix_x4        ldmatrix.sync.aligned.m8n8.x4.shared.b16
//   ldmatrix_x4_trans  ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16
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
// ldmatrix (PTX ISA, "Warp-level matrix load instruction: ldmatrix"), .m8n8.x4 .b16: four 8 x 8
// matrices of 16-bit elements, one 32-bit register per matrix in every lane. Lane 8i + j
// supplies the shared-memory address of row j of matrix i (8 contiguous elements, 16 bytes,
// 16-byte aligned; rows may lie anywhere). Lane l receives in r[i] two elements of matrix i:
//   plain:   row l / 4, columns 2 (l % 4) (low 16 bits) and 2 (l % 4) + 1 (high 16 bits)
//   .trans:  column l / 4, rows 2 (l % 4) (low) and 2 (l % 4) + 1 (high): the matrix
//            transposed, i.e. the rows in memory are read as its columns
// (ldsm_elem below). The four lanes of a group therefore hold one row (plain) or one column
// (.trans) of each matrix: exactly the pairs of a BF16 A register (row g, columns 2t, 2t+1)
// or B register (column g, rows 2t, 2t+1) of mma.m16n8k16 when the matrices are its 8 x 8
// quarters (A: r[0..3] = rows 0-7 / 8-15 x columns 0-7 / 8-15 in the order a0..a3 above; B:
// r[0], r[1] = k 0-7, 8-15). A k-contiguous tile feeds A or B with the plain form, a tile
// stored with k across rows (m- or n-contiguous) with .trans.
//
// Under nvcc the bodies are inline PTX (sm_80 and later); under ALEXNET_EMU (csrc/emu) each
// instruction is a warp-collective operation (emu::warp_compute): the last lane to arrive
// rebuilds A and B from the 32 lanes' registers by the layout above, computes every lane's
// D, and checks that all lanes are at the same instruction (call site). ldmatrix likewise:
// the last lane reads every matrix row from the address its lane supplied and fills every
// lane's registers by ldsm_elem; a row address that is not 16-byte aligned is an error.
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
// ldmatrix: the element of an 8 x 8 matrix (row = the address's lane j of the matrix, col =
// the element in that row) that lane `lane` receives in half h (0 low, 1 high) of its register.
__host__ __device__ __forceinline__ constexpr Coord ldsm_elem(int lane, int h, bool trans) {
  return trans ? Coord{2 * (lane & 3) + h, lane >> 2} : Coord{lane >> 2, 2 * (lane & 3) + h};
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

// r[i] = this lane's register of matrix i; `row` = the row this lane addresses (shared memory).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
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

// The 32 lane records of one warp operation (Lane or LdsmLane); an error unless all lanes
// are at the same call site.
template <class R>
void gather(void* const* records, const R* (&L)[32], const char* what) {
  for (int l = 0; l < 32; ++l) L[l] = static_cast<const R*>(records[l]);
  for (int l = 1; l < 32; ++l)
    if (L[l]->site != L[0]->site || std::strcmp(L[l]->file, L[0]->file) != 0)
      emu::kernel_fail(std::string(what) + ": the lanes of a warp are at different instructions (lane 0 at " +
                       L[0]->file + ":" + std::to_string(L[0]->site / 1000) + ", lane " + std::to_string(l) + " at " +
                       L[l]->file + ":" + std::to_string(L[l]->site / 1000) + ")");
}

// The warp's operation, run by the last lane to arrive: rebuild A (16 x K) and B (K x 8)
// from the lanes' registers, then D = C + A B for every lane, k in order, in FP32.
template <int K, bool BF16>
void run(void* const* records) {
  const Lane* L[32];
  gather(records, L, "mma.sync");
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

// One lane's part of an ldmatrix: the row it addresses and its destination registers.
struct LdsmLane {
  const unsigned char* row;
  uint32_t* r;
  const char* file;
  int site;
};

// ldmatrix .x4 (.trans when TRANS), run by the last lane: matrix i's row j is at the address of
// lane 8 i + j; every lane's r[i] gets its two elements of matrix i by ldsm_elem.
template <bool TRANS>
void ldsm_run(void* const* records) {
  const LdsmLane* L[32];
  gather(records, L, TRANS ? "ldmatrix.x4.trans" : "ldmatrix.x4");
  for (int l = 0; l < 32; ++l)
    if (reinterpret_cast<uintptr_t>(L[l]->row) % 16 != 0)
      emu::kernel_fail(std::string("ldmatrix: lane ") + std::to_string(l) +
                       "'s row address is not 16-byte aligned (" + L[l]->file + ":" +
                       std::to_string(L[l]->site / 1000) + ")");
  uint32_t R[32][4];
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      uint32_t v = 0;
      for (int h = 0; h < 2; ++h) {
        const Coord e = ldsm_elem(l, h, TRANS);
        uint16_t x;
        std::memcpy(&x, L[8 * i + e.row]->row + 2 * e.col, 2);
        v |= uint32_t(x) << (16 * h);
      }
      R[l][i] = v;
    }
  for (int l = 0; l < 32; ++l) std::memcpy(L[l]->r, R[l], sizeof R[l]);
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

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, std::source_location w = std::source_location::current()) {
  emu_detail::LdsmLane me{static_cast<const unsigned char*>(row), r, w.file_name(), int(w.line() * 1000 + w.column())};
  emu::warp_compute(emu_detail::ldsm_run<false>, &me, "ldmatrix.sync.m8n8.x4");
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row,
                              std::source_location w = std::source_location::current()) {
  emu_detail::LdsmLane me{static_cast<const unsigned char*>(row), r, w.file_name(), int(w.line() * 1000 + w.column())};
  emu::warp_compute(emu_detail::ldsm_run<true>, &me, "ldmatrix.sync.m8n8.x4.trans");
}

#endif

}  // namespace alexnet::mma
