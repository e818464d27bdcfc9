// Self-test kernels: each uses one CUDA feature the engine relies on (barriers with
// early exits, barrier reductions, the four shuffles, votes, atomics across blocks,
// wmma tiles, the mma.sync fragment layouts, ldmatrix, dynamic shared memory, half/bfloat16 conversions) in a way whose result
// Python can compute independently. tests/test_emu.py runs them on emu (in every fiber
// order) and on cuda when a GPU is present; the deliberate race and the divergent
// barrier are for the emulator's error paths.
//
// Thread mapping is stated per kernel; all are tiny and not tuned.
#include "kernels/selftest.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/launch.h"
#include "common/mma_sync.h"

namespace alexnet::kernels::selftest {
namespace {

// One block of `threads`; t >= live returns before the barrier.
__global__ void barrier_kernel(float* out, int* counts, int live) {
  __shared__ float vals[1024];
  const int t = threadIdx.x;
  if (t >= live) return;
  vals[t] = float(t + 1);
  __syncthreads();
  out[t] = vals[(t + 1) % live];
  const int c = __syncthreads_count(t % 3 == 0);
  const int a = __syncthreads_and(t % 3 == 0);
  const int o = __syncthreads_or(t % 3 == 0);
  if (t == 0) {
    counts[0] = c;
    counts[1] = a;
    counts[2] = o;
  }
}

// One warp per block.
__global__ void warp_kernel(const int* in, const int* arg, int* out, int op, unsigned mask, unsigned active, int width) {
  const int lane = threadIdx.x, i = blockIdx.x * 32 + lane;
  if (!((active >> lane) & 1u)) return;
  const int v = in[i];
  int r = 0;
  switch (op) {
    case 0: r = __shfl_sync(mask, v, arg[i], width); break;
    case 1: r = __shfl_up_sync(mask, v, unsigned(arg[i]), width); break;
    case 2: r = __shfl_down_sync(mask, v, unsigned(arg[i]), width); break;
    case 3: r = __shfl_xor_sync(mask, v, arg[i], width); break;
    case 4: r = int(__ballot_sync(mask, v != 0)); break;
    case 5: r = __any_sync(mask, v != 0); break;
    case 6: r = __all_sync(mask, v != 0); break;
    default: __syncwarp(mask); r = v; break;
  }
  out[i] = r;
}

// One block of n threads.
__global__ void tree_sum_kernel(const float* x, float* out, int n, bool sync) {
  __shared__ float s[1024];
  const int t = threadIdx.x;
  s[t] = x[t];
  __syncthreads();
  for (int half = n / 2; half > 0; half >>= 1) {
    if (t < half) s[t] += s[t + half];
    if (sync) __syncthreads();
  }
  if (t == 0) out[0] = s[0];
}

__global__ void divergent_kernel(float* out, int split) {
  if (int(threadIdx.x) < split) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// blocks x threads; global id g.
__global__ void atomics_kernel(int* ints, float* f, int reps) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  for (int r = 0; r < reps; ++r) {
    atomicAdd(&ints[0], 1);
    atomicAdd(&f[0], 1.0f);
    int old = ints[2], seen;
    while ((seen = atomicCAS(&ints[2], old, old + 1)) != old) old = seen;
  }
  atomicMax(&ints[1], g);
}

// COL = false: A, B staged row-major, C read and D written row-major (ld = their widths).
// COL = true: A and B staged column-major (col_major fragments), C and D column-major in
// memory (mem_col_major): c holds C^T and d receives D^T, row-major.
template <int M, int N, int K, class T, class In, bool COL = false>
__device__ void wmma_tile(const float* a, const float* b, const float* c, float* d, In* sa, In* sb) {
  using namespace nvcuda;
  using LA = typename std::conditional<COL, wmma::col_major, wmma::row_major>::type;
  const int lane = threadIdx.x;
  for (int i = lane; i < M * K; i += 32) sa[COL ? (i % K) * M + i / K : i] = In(a[i]);  // a[m*K + k]
  for (int i = lane; i < K * N; i += 32) sb[COL ? (i % N) * K + i / N : i] = In(b[i]);  // b[k*N + n]
  __syncwarp();
  wmma::fragment<wmma::matrix_a, M, N, K, T, LA> fa;
  wmma::fragment<wmma::matrix_b, M, N, K, T, LA> fb;
  wmma::fragment<wmma::accumulator, M, N, K, float> fc;
  const auto mem = COL ? wmma::mem_col_major : wmma::mem_row_major;
  wmma::load_matrix_sync(fa, sa, COL ? M : K);
  wmma::load_matrix_sync(fb, sb, COL ? K : N);
  wmma::load_matrix_sync(fc, c, COL ? M : N, mem);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, COL ? M : N, mem);
}

// One warp.
__global__ void wmma_kernel(const float* a, const float* b, const float* c, float* d, int kind) {
  __shared__ __align__(32) __half ha[512], hb[512];
  __shared__ __align__(32) __nv_bfloat16 ba[256], bb[256];
  __shared__ __align__(32) float ta[128], tb[128];
  using nvcuda::wmma::precision::tf32;
  switch (kind) {
    case 0: wmma_tile<16, 16, 16, __half>(a, b, c, d, ha, hb); break;
    case 1: wmma_tile<32, 8, 16, __half>(a, b, c, d, ha, hb); break;
    case 2: wmma_tile<8, 32, 16, __half>(a, b, c, d, ha, hb); break;
    case 3: wmma_tile<16, 16, 16, __nv_bfloat16>(a, b, c, d, ba, bb); break;
    case 5: wmma_tile<32, 8, 16, __half, __half, true>(a, b, c, d, ha, hb); break;
    default: {
      const int lane = threadIdx.x;
      // TF32 inputs are rounded explicitly, as the programming guide requires.
      for (int i = lane; i < 128; i += 32) {
        ta[i] = nvcuda::wmma::__float_to_tf32(a[i]);
        tb[i] = nvcuda::wmma::__float_to_tf32(b[i]);
      }
      __syncwarp();
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, tf32, nvcuda::wmma::row_major> fa;
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8, tf32, nvcuda::wmma::row_major> fb;
      nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float> fc;
      nvcuda::wmma::load_matrix_sync(fa, ta, 8);
      nvcuda::wmma::load_matrix_sync(fb, tb, 16);
      nvcuda::wmma::load_matrix_sync(fc, c, 16, nvcuda::wmma::mem_row_major);
      nvcuda::wmma::mma_sync(fc, fa, fb, fc);
      nvcuda::wmma::store_matrix_sync(d, fc, 16, nvcuda::wmma::mem_row_major);
    }
  }
}

// One warp: D = A B + C with one mma.sync (common/mma_sync.h). Each lane fills its registers
// by the PTX ISA's fragment layouts, written out here from the ISA's figures on their own
// (not through mma_sync.h's coordinate functions, which they check); g = lane >> 2, t = lane & 3.
// A (16 x K), B (K x 8), C and D (16 x 8) row-major floats.
// variant 0: the documented mapping; 1: A's registers 1 and 2 swapped; 2: B loaded by the
// lane of the neighbouring group (lane ^ 4); 3: D's elements 1 and 2 stored swapped;
// 4: lanes 16-31 issue the instruction from a different line (an error on emu).
template <bool BF16>
__device__ void mma_tile(const float* A, const float* B, const float* C, float* D, int variant) {
  constexpr int K = BF16 ? 16 : 8;
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  const int bg = variant == 2 ? ((lane ^ 4) >> 2) : g;
  auto a_ = [&](int r, int k) { return A[r * K + k]; };
  auto b_ = [&](int k, int n) { return B[n + 8 * k]; };
  uint32_t a[4], b[2];
  if (BF16) {
    a[0] = mma::pack_bf16(a_(g, 2 * t), a_(g, 2 * t + 1));
    a[1] = mma::pack_bf16(a_(g + 8, 2 * t), a_(g + 8, 2 * t + 1));
    a[2] = mma::pack_bf16(a_(g, 2 * t + 8), a_(g, 2 * t + 9));
    a[3] = mma::pack_bf16(a_(g + 8, 2 * t + 8), a_(g + 8, 2 * t + 9));
    b[0] = mma::pack_bf16(b_(2 * t, bg), b_(2 * t + 1, bg));
    b[1] = mma::pack_bf16(b_(2 * t + 8, bg), b_(2 * t + 9, bg));
  } else {
    a[0] = mma::to_tf32(a_(g, t));
    a[1] = mma::to_tf32(a_(g + 8, t));
    a[2] = mma::to_tf32(a_(g, t + 4));
    a[3] = mma::to_tf32(a_(g + 8, t + 4));
    b[0] = mma::to_tf32(b_(t, bg));
    b[1] = mma::to_tf32(b_(t + 4, bg));
  }
  if (variant == 1) {
    const uint32_t x = a[1];
    a[1] = a[2];
    a[2] = x;
  }
  float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
  float d[4];
  if (variant == 4 && lane >= 16) {
    if (BF16) mma::mma_bf16_m16n8k16(d, a, b, c);
    else mma::mma_tf32_m16n8k8(d, a, b, c);
  } else {
    if (BF16) mma::mma_bf16_m16n8k16(d, a, b, c);
    else mma::mma_tf32_m16n8k8(d, a, b, c);
  }
  const int e1 = variant == 3 ? 2 : 1, e2 = variant == 3 ? 1 : 2;
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[e1];
  D[(g + 8) * 8 + 2 * t] = d[e2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

__global__ void mma_kernel(const float* a, const float* b, const float* c, float* d, int kind, int variant) {
  if (kind == 0) mma_tile<true>(a, b, c, d, variant);
  else mma_tile<false>(a, b, c, d, variant);
}

// One warp: src (64 x 64 uint16, row-major) goes to shared memory in rows of 72 elements;
// lane l addresses row rows[l] at column cols[l] (a multiple of 8 for a valid address; both
// taken modulo 64, the column at most 56) and
// out[4 l + i] = its register i after one ldmatrix.x4 (trans: .x4.trans).
__global__ void ldmatrix_kernel(const uint16_t* src, const int* rows, const int* cols, uint32_t* out, bool trans) {
  __shared__ __align__(16) uint16_t s[64 * 72];
  const int lane = threadIdx.x;
  for (int i = lane; i < 64 * 64; i += 32) s[(i / 64) * 72 + i % 64] = src[i];
  __syncwarp();
  uint32_t r[4];
  const int c = cols[lane] & 63;  // kept inside the tile whatever the caller passes
  const uint16_t* p = s + (rows[lane] & 63) * 72 + (c > 56 ? 56 : c);
  if (trans) mma::ldmatrix_x4_trans(r, p);
  else mma::ldmatrix_x4(r, p);
  for (int i = 0; i < 4; ++i) out[4 * lane + i] = r[i];
}

// One warp: D (16 x 16) = A (16 x 16) B (16 x 16) with two mma.sync m16n8k16 (columns 0-7 and
// 8-15), A and B rounded to bf16 into shared tiles with rows of 24 elements: A as [m][k]
// (a_kmajor) or [k][m], B as [n][k] (b_kmajor) or [k][n]. Fragments by ldmatrix.x4, plain
// for a k-major tile and .trans for the other, the row addresses written out here from the
// ISA's layouts on their own (not through tc_tile_async.cuh): with i = lane / 8, j = lane % 8,
// A's matrix i is its quarter (rows 8 (i & 1), k 8 (i >> 1)) (registers a0..a3), B's matrix i
// is (k 8 (i & 1), columns 8 (i >> 1)) (b0, b1 of columns 0-7, then of 8-15). `wrong` reads A
// with the other form (plain for .trans and back), which must give a wrong D.
__global__ void ldmatrix_mma_kernel(const float* A, const float* B, float* D, bool a_kmajor, bool b_kmajor,
                                    bool wrong) {
  __shared__ __align__(16) uint16_t sa[16 * 24], sb[16 * 24];
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3, i = lane >> 3, j = lane & 7;
  for (int e = lane; e < 256; e += 32) {
    const int r = e / 16, c = e % 16;  // A[r][c] = A(m = r, k = c), B[r][c] = B(k = r, n = c)
    sa[a_kmajor ? r * 24 + c : c * 24 + r] = __bfloat16_as_ushort(__float2bfloat16_rn(A[e]));
    sb[b_kmajor ? c * 24 + r : r * 24 + c] = __bfloat16_as_ushort(__float2bfloat16_rn(B[e]));
  }
  __syncwarp();
  const int am = 8 * (i & 1), ak = 8 * (i >> 1), bk = 8 * (i & 1), bn = 8 * (i >> 1);
  const uint16_t* pa = a_kmajor ? sa + (am + j) * 24 + ak : sa + (ak + j) * 24 + am;
  const uint16_t* pb = b_kmajor ? sb + (bn + j) * 24 + bk : sb + (bk + j) * 24 + bn;
  uint32_t a[4], bv[4];
  if (a_kmajor != wrong) mma::ldmatrix_x4(a, pa);
  else mma::ldmatrix_x4_trans(a, pa);
  if (b_kmajor) mma::ldmatrix_x4(bv, pb);
  else mma::ldmatrix_x4_trans(bv, pb);
  for (int nt = 0; nt < 2; ++nt) {
    const uint32_t b[2] = {bv[2 * nt], bv[2 * nt + 1]};
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma::mma_bf16_m16n8k16(d, a, b, d);
    const int c = 8 * nt + 2 * t;
    D[g * 16 + c] = d[0];
    D[g * 16 + c + 1] = d[1];
    D[(g + 8) * 16 + c] = d[2];
    D[(g + 8) * 16 + c + 1] = d[3];
  }
}

__global__ void tf32_kernel(const float* x, uint32_t* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = mma::to_tf32(x[i]);
}

// Blocks of per_block threads; thread t of block b moves x[b*per_block + t].
__global__ void dyn_smem_kernel(const float* x, float* y, int* poisoned, int per_block) {
  DYNAMIC_SHARED(float, buf);
  __shared__ float untouched[4];
  const int t = threadIdx.x, base = blockIdx.x * per_block;
  if (t == 0) poisoned[blockIdx.x] = (buf[per_block - 1] != buf[per_block - 1]) + 2 * (untouched[3] != untouched[3]);
  __syncthreads();
  buf[t] = x[base + t];
  if (t == 0) untouched[0] = 0.0f;
  __syncthreads();
  y[base + t] = buf[per_block - 1 - t];
  untouched[t & 3] = y[base];  // a data-dependent write, so the compiler cannot fold the read above
}

__global__ void convert_kernel(const float* x, uint16_t* oh, uint16_t* ob, float* back, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const __half h = __float2half(x[i]);
  const __nv_bfloat16 b = __float2bfloat16(x[i]);
  oh[i] = __half_as_ushort(h);
  ob[i] = __bfloat16_as_ushort(b);
  back[i] = __half2float(h);
}

// One block; each thread takes the next ticket from a counter before anything else.
__global__ void order_kernel(int* ticket, int* counter) { ticket[threadIdx.x] = atomicAdd(counter, 1); }

}  // namespace

void barrier(float* out, int* counts, int threads, int live, cudaStream_t s) {
  if (threads < 1 || threads > 1024 || live < 1 || live > threads)
    throw std::invalid_argument("selftest.barrier: need 1 <= live <= threads <= 1024");
  LAUNCH(barrier_kernel, dim3(1), dim3(unsigned(threads)), 0, s, out, counts, live);
}

void warp(const int* in, const int* arg, int* out, int warps, int op, unsigned mask, unsigned active, int width,
          cudaStream_t s) {
  LAUNCH(warp_kernel, dim3(unsigned(warps)), dim3(32), 0, s, in, arg, out, op, mask, active, width);
}

void tree_sum(const float* x, float* out, int n, bool sync, cudaStream_t s) {
  if (n < 1 || n > 1024 || (n & (n - 1))) throw std::invalid_argument("selftest.tree_sum: n must be a power of two <= 1024");
  LAUNCH(tree_sum_kernel, dim3(1), dim3(unsigned(n)), 0, s, x, out, n, sync);
}

void divergent_barrier(float* out, int threads, int split, cudaStream_t s) {
  LAUNCH(divergent_kernel, dim3(1), dim3(unsigned(threads)), 0, s, out, split);
}

void atomics(int* ints, float* f, int blocks, int threads, int reps, cudaStream_t s) {
  LAUNCH(atomics_kernel, dim3(unsigned(blocks)), dim3(unsigned(threads)), 0, s, ints, f, reps);
}

void wmma(const float* a, const float* b, const float* c, float* d, int kind, cudaStream_t s) {
  if (kind < 0 || kind > 5) throw std::invalid_argument("selftest.wmma: kind must be 0..5");
  LAUNCH(wmma_kernel, dim3(1), dim3(32), 0, s, a, b, c, d, kind);
}

void mma(const float* a, const float* b, const float* c, float* d, int kind, int variant, cudaStream_t s) {
  if (kind < 0 || kind > 1 || variant < 0 || variant > 4)
    throw std::invalid_argument("selftest.mma: kind must be 0..1 and variant 0..4");
  LAUNCH(mma_kernel, dim3(1), dim3(32), 0, s, a, b, c, d, kind, variant);
}

void ldmatrix(const uint16_t* src, const int* rows, const int* cols, uint32_t* out, bool trans, cudaStream_t s) {
  LAUNCH(ldmatrix_kernel, dim3(1), dim3(32), 0, s, src, rows, cols, out, trans);
}

void ldmatrix_mma(const float* a, const float* b, float* d, bool a_kmajor, bool b_kmajor, bool wrong, cudaStream_t s) {
  LAUNCH(ldmatrix_mma_kernel, dim3(1), dim3(32), 0, s, a, b, d, a_kmajor, b_kmajor, wrong);
}

void tf32(const float* x, uint32_t* out, int n, cudaStream_t s) {
  if (n == 0) return;
  LAUNCH(tf32_kernel, dim3(ceil_div(n, 128)), dim3(128), 0, s, x, out, n);
}

void dyn_smem_reverse(const float* x, float* y, int* poisoned, int blocks, int per_block, size_t extra_smem,
                      cudaStream_t s) {
  LAUNCH(dyn_smem_kernel, dim3(unsigned(blocks)), dim3(unsigned(per_block)), size_t(per_block) * sizeof(float) + extra_smem,
         s, x, y, poisoned, per_block);
}

void fiber_order(int* ticket, int* counter, int threads, cudaStream_t s) {
  if (threads < 1 || threads > 1024) throw std::invalid_argument("selftest.fiber_order: need 1 <= threads <= 1024");
  LAUNCH(order_kernel, dim3(1), dim3(unsigned(threads)), 0, s, ticket, counter);
}

void convert(const float* x, uint16_t* oh, uint16_t* ob, float* back, int n, cudaStream_t s) {
  if (n == 0) return;
  LAUNCH(convert_kernel, dim3(ceil_div(n, 128)), dim3(128), 0, s, x, oh, ob, back, n);
}

}  // namespace alexnet::kernels::selftest
