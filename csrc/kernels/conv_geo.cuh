// The geometry of a grouped convolution as the conv kernels see it (conv.cu's FP32 versions,
// conv_tc.cu's tensor-core backward), and the stride phases of the backward-data GEMM.
// Derived once on the host (make_geo, which checks the 32-bit offset limits); the symbols
// of conv.cu's header comment: Cg = C/groups, Kg = K/groups, st the stride.
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>

#include "kernels/conv.cuh"

namespace alexnet::kernels {

// The geometry as the kernels see it (derived once on the host).
struct Geo {
  int N, C, H, W, K, R, S, st, pad, groups, P, Q;
  int Cg, Kg, HW, PQ, RS, CRS, NPQ, CHW, KPQ;
};

inline Geo make_geo(const ConvShape& s) {
  Geo d{s.N, s.C, s.H, s.W, s.K, s.R, s.S, s.stride, s.pad, s.groups, s.P, s.Q, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  if (s.N < 0 || s.C < 1 || s.H < 1 || s.W < 1 || s.K < 1 || s.R < 1 || s.S < 1 || s.stride < 1 || s.pad < 0 ||
      s.groups < 1 || s.C % s.groups || s.K % s.groups || s.P < 1 || s.Q < 1)
    throw std::invalid_argument("conv2d: invalid geometry");
  const int64_t lim = std::numeric_limits<int>::max();
  const int64_t Cg = s.C / s.groups, N = s.N;
  // Offsets inside x, y and w are 32-bit in the kernels.
  if (N * s.C * s.H * s.W > lim || N * s.K * s.P * s.Q > lim || int64_t(s.K) * Cg * s.R * s.S > lim)
    throw std::invalid_argument("conv2d: a tensor has more than 2^31-1 elements (not supported by these kernels)");
  d.Cg = int(Cg);
  d.Kg = s.K / s.groups;
  d.HW = s.H * s.W;
  d.PQ = s.P * s.Q;
  d.RS = s.R * s.S;
  d.CRS = d.Cg * d.RS;
  d.NPQ = s.N * d.PQ;
  d.CHW = s.C * d.HW;
  d.KPQ = s.K * d.PQ;
  return d;
}

// ---- backward data: one residue class of (h, w) modulo the stride ---------------------------
struct Phase {
  int ph, pw;    // the residue class: h = ph + h'*st, w = pw + w'*st
  int Hph, Wph;  // how many h', w'
  int r0, s0;    // first contributing tap: r = r0 + i*st (i < Rp), s = s0 + j*st (j < Sp)
  int Rp, Sp;    // (clamped to >= 1 for the digit arithmetic; kdim says when there are none)
  int dp, dq;    // p = h' + dp - i, q = w' + dq - j
  int kdim, ncols;
  __device__ __forceinline__ Phase(const Geo& d, int phase) {
    ph = phase / d.st;
    pw = phase - ph * d.st;
    Hph = ph < d.H ? (d.H - ph + d.st - 1) / d.st : 0;
    Wph = pw < d.W ? (d.W - pw + d.st - 1) / d.st : 0;
    r0 = (ph + d.pad) % d.st;
    s0 = (pw + d.pad) % d.st;
    const int rp = r0 < d.R ? (d.R - r0 + d.st - 1) / d.st : 0;
    const int sp = s0 < d.S ? (d.S - s0 + d.st - 1) / d.st : 0;
    kdim = d.Kg * rp * sp;
    Rp = max(rp, 1);
    Sp = max(sp, 1);
    dp = (ph + d.pad - r0) / d.st;
    dq = (pw + d.pad - s0) / d.st;
    ncols = d.N * Hph * Wph;
  }
};

}  // namespace alexnet::kernels
