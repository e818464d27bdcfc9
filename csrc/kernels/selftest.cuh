// Launchers of selftest.cu: small kernels that exercise the CUDA features the engine
// relies on, so that the emulator's semantics are tested (and, on a GPU, compared with
// the hardware's).
#pragma once
#include <cstdint>
#include "common/cuda_common.h"

namespace alexnet::kernels::selftest {
// Threads with linear id >= live return at once; the others store, __syncthreads, read a
// neighbour's value: out[t] = (t + 1) % live + 1 for t < live. counts[0..2] get
// __syncthreads_count/and/or of (t % 3 == 0) over the live threads (from thread 0).
void barrier(float* out, int* counts, int threads, int live, cudaStream_t s);
// One warp per block of 32 * warps threads; lane l of warp w: v = in[32w + l]. Lanes not
// in `active` return at once; the others call the collective with `mask` (normally
// active == mask; the tests break that on purpose). op: 0 shfl, 1 up, 2 down, 3 xor (arg[32w+l] per lane,
// `width`), 4 ballot, 5 any, 6 all (predicate in != 0), 7 syncwarp (out = in).
void warp(const int* in, const int* arg, int* out, int warps, int op, unsigned mask, unsigned active, int width,
          cudaStream_t s);
// Tree sum of x[0..n) (n a power of two <= 1024) in one block; with sync = false the
// __syncthreads between tree levels is left out (a deliberate race).
void tree_sum(const float* x, float* out, int n, bool sync, cudaStream_t s);
// Threads 0..split-1 wait at one __syncthreads, the rest at another.
void divergent_barrier(float* out, int threads, int split, cudaStream_t s);
// blocks x threads threads, each doing `reps` atomicAdd(int) +1, atomicAdd(float) +1,
// atomicMax(int) of its global id, and atomicCAS increments of a second counter.
// ints[0] = add count, ints[1] = max, ints[2] = CAS count; f[0] = float sum.
void atomics(int* ints, float* f, int blocks, int threads, int reps, cudaStream_t s);
// One warp computes D = A * B + C with nvcuda::wmma. kind: 0 half m16n16k16,
// 1 half m32n8k16, 2 half m8n32k16, 3 bf16 m16n16k16, 4 tf32 m16n16k8, 5 half m32n8k16
// with col_major A and B fragments and C, D in mem_col_major. A (M,K) and B (K,N) are
// float arrays (converted inside), row-major; C and D (M,N) float, row-major for kinds 0-4,
// column-major for kind 5 (pass C^T, receive D^T).
void wmma(const float* a, const float* b, const float* c, float* d, int kind, cudaStream_t s);
// One warp computes D = A B + C with one mma.sync of common/mma_sync.h, its registers
// loaded by the PTX ISA's fragment layouts. kind 0: bf16 m16n8k16 (inputs rounded to bf16),
// 1: tf32 m16n8k8 (inputs rounded with cvt.rna). A (16,K), B (K,8), C and D (16,8) float,
// row-major; K = 16 or 8. variant 0 is the documented mapping; 1-3 put values in the wrong
// registers or lanes on purpose (A registers 1 and 2 swapped, B from the neighbouring group,
// D elements 1 and 2 swapped); 4 has half the warp issue the mma from another line.
void mma(const float* a, const float* b, const float* c, float* d, int kind, int variant, cudaStream_t s);
// One warp runs one ldmatrix.x4 (trans: .x4.trans) over src (64 x 64 uint16, row-major, put in
// shared memory with rows of 72 elements): lane l supplies the address of row rows[l], column
// cols[l] (taken modulo 64, the column at most 56; a multiple of 8 is 16-byte aligned, anything else is an error on
// emu and undefined on a GPU); out[4 l + i] = register i of lane l.
void ldmatrix(const uint16_t* src, const int* rows, const int* cols, uint32_t* out, bool trans, cudaStream_t s);
// One warp: d (16 x 16) = a (16 x 16) b (16 x 16), all float row-major, the inputs rounded to bf16,
// through ldmatrix-loaded fragments and two mma.sync m16n8k16; a stored k-contiguous in shared
// memory (a_kmajor) or m-contiguous, b n-contiguous or k-contiguous (b_kmajor). `wrong` loads a
// with the wrong ldmatrix form.
void ldmatrix_mma(const float* a, const float* b, float* d, bool a_kmajor, bool b_kmajor, bool wrong, cudaStream_t s);
// out[i] = the TF32 register of x[i] (cvt.rna.tf32.f32, as the tensor-core kernels round);
// Python passes an int32 array and views it as uint32.
void tf32(const float* x, uint32_t* out, int n, cudaStream_t s);
// Reverses each block's `per_block` floats through dynamic shared memory; before
// writing, thread 0 records whether the untouched dynamic shared memory reads as NaN
// (poisoned[block] = 1) and whether a static __shared__ array does (poisoned[block] += 2).
// extra_smem asks for that many more bytes of dynamic shared memory (unused).
void dyn_smem_reverse(const float* x, float* y, int* poisoned, int blocks, int per_block, size_t extra_smem,
                      cudaStream_t s);
// out_half[i] = bits of __float2half(x[i]); out_bf16[i] = bits of __float2bfloat16(x[i]);
// back[i] = __half2float(__float2half(x[i])).
void convert(const float* x, uint16_t* out_half, uint16_t* out_bf16, float* back, int n, cudaStream_t s);
// One block of `threads` threads; thread t stores ticket[t] = atomicAdd(counter, 1) as its
// first action. On emu the tickets show the order in which the fibers first ran
// (ALEXNET_EMU_ORDER); on a GPU the order is the hardware's.
void fiber_order(int* ticket, int* counter, int threads, cudaStream_t s);
}  // namespace alexnet::kernels::selftest
