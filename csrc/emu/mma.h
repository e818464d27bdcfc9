// Stand-in for <mma.h> (nvcuda::wmma) in the emu build, emulated by meaning: every lane
// holds the whole tile. That is sound because the API leaves the mapping of elements to
// lanes unspecified; code that touches frag.x[i] for all i < num_elements sees every
// element exactly once per lane. load/store/mma are warp-collective: each starts with a
// full-warp __syncwarp, so every lane of the warp must call them (as on the GPU).
//
// Shapes: half and bfloat16 with m16n16k16, m32n8k16, m8n32k16 (float accumulator);
// precision::tf32 with m16n16k8. mma_sync multiplies in float, summing k in order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cuda_bf16.h"
#include "cuda_fp16.h"

namespace emu {
// cvt.rna.tf32.f32 on the bits: add half a TF32 unit in the last place to the magnitude and
// clear the low 13 bits (ties away from zero; a carry may reach the next binade or infinity).
// Infinity and NaN pass unchanged.
inline uint32_t float_to_tf32_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7f800000u) != 0x7f800000u) x = (x + 0x1000u) & 0xffffe000u;
  return x;
}
}  // namespace emu

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

template <class T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };

template <class Use, int M, int N, int K> struct tile_dims;
template <int M, int N, int K> struct tile_dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct tile_dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct tile_dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert((M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16) ||
                    (M == 16 && N == 16 && K == 8),
                "wmma shape not supported (m16n16k16, m32n8k16, m8n32k16, m16n16k8 for tf32)");
  using element_type = typename storage<T>::type;
  static constexpr int rows = tile_dims<Use, M, N, K>::rows, cols = tile_dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];  // row-major tile
};

template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = typename fragment<Use, M, N, K, T, L>::element_type(v);
}

template <class Use, int M, int N, int K, class T, class L, class P>
inline void load_tile(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm, bool col) {
  __syncwarp();
  using F = fragment<Use, M, N, K, T, L>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = typename F::element_type(col ? p[size_t(c) * ldm + r] : p[size_t(r) * ldm + c]);
}

template <class Use, int M, int N, int K, class T, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, row_major>& f, const P* p, unsigned ldm) {
  load_tile(f, p, ldm, false);
}
template <class Use, int M, int N, int K, class T, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, col_major>& f, const P* p, unsigned ldm) {
  load_tile(f, p, ldm, true);
}
template <int M, int N, int K, class T, class P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const P* p, unsigned ldm, layout_t l) {
  load_tile(f, p, ldm, l == mem_col_major);
}
template <int M, int N, int K, class T, class P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t l) {
  __syncwarp();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) {
      P v = P(f.x[r * N + c]);
      if (l == mem_col_major) p[size_t(c) * ldm + r] = v;
      else p[size_t(r) * ldm + c] = v;
    }
}

template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c) {
  __syncwarp();
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = float(c.x[i * N + j]);
      for (int k = 0; k < K; ++k) s += float(a.x[i * K + k]) * float(b.x[k * N + j]);
      out[i * N + j] = s;
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = typename fragment<accumulator, M, N, K, TC, void>::element_type(out[i]);
}

// Round to the 10-bit mantissa of TF32, to nearest with ties away from zero (cvt.rna).
inline float __float_to_tf32(float f) {
  const uint32_t x = emu::float_to_tf32_bits(f);
  std::memcpy(&f, &x, 4);
  return f;
}

}  // namespace wmma
}  // namespace nvcuda
