// The arithmetic of cross-channel LRN, one place for every kernel that computes it
// (lrn.cu, lrn_pool.cu): the parameters as the kernels hold them and each formula with its
// rounding. Device code; included by .cu files only (the launchers are in lrn.cuh).
//
//   scale = k + a * s                     s = the window's sum of squares, summed by the caller
//                                         from the lowest channel up, sq() each term
//   y     = x * scale^-beta
//   t     = dy * y / scale                the backward's cross term, summed over the window
//   dx    = dy * scale^-beta - (2 a beta) * x * (sum of t)
//
// Every product and sum is rounded on its own (__fmul_rn, __fadd_rn: no FMA contraction), k, a,
// -beta and 2*a*beta are rounded to float from doubles on the host, so the kernels are bitwise
// alexnet_cuda.reference's float32 steps up to powf (CUDA: at most 2 ulp).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace alexnet::kernels::lrn_math {

struct LrnParams {
  int C, size, half;
  int64_t HW;
  float a, k, neg_beta, coef;  // coef = 2 * a * beta (double on the host, then rounded)
};

// The kernels' parameters, or std::invalid_argument naming `op` (size even or < 1).
inline LrnParams params(const char* op, int64_t C, int64_t HW, int size, double a, double beta, double k) {
  if (size < 1 || size % 2 == 0)
    throw std::invalid_argument(std::string(op) + ": size must be odd and >= 1, got " + std::to_string(size));
  LrnParams P;
  P.C = int(C);
  P.HW = HW;
  // a window wider than 2C-1 covers every channel; clip so that the tiles stay small
  P.half = size / 2 > int(C) - 1 ? int(C) - 1 : size / 2;
  P.size = 2 * P.half + 1;
  P.a = float(a);
  P.k = float(k);
  P.neg_beta = float(-beta);
  P.coef = float(2.0 * a * beta);
  return P;
}

__device__ __forceinline__ float sq(float v) { return __fmul_rn(v, v); }
__device__ __forceinline__ float fsub_rn(float a, float b) { return __fadd_rn(a, -b); }

// scale from the window's sum of squares s
__device__ __forceinline__ float scale_of(const LrnParams& P, float s) { return __fadd_rn(P.k, __fmul_rn(P.a, s)); }
// y = x * scale^-beta
__device__ __forceinline__ float normalized(const LrnParams& P, float x, float scale) {
  return __fmul_rn(x, powf(scale, P.neg_beta));
}
// t = dy * y / scale, the term the backward sums over the window
__device__ __forceinline__ float cross_term(float dy, float y, float scale) { return __fmul_rn(dy, y) / scale; }
// dy * scale^-beta, the first term of dx
__device__ __forceinline__ float direct_term(const LrnParams& P, float dy, float scale) {
  return __fmul_rn(dy, powf(scale, P.neg_beta));
}
// dx = direct - coef * x * cross
__device__ __forceinline__ float grad(const LrnParams& P, float direct, float x, float cross) {
  return fsub_rn(direct, __fmul_rn(__fmul_rn(P.coef, x), cross));
}

}  // namespace alexnet::kernels::lrn_math
