// Element-wise math computed both by a standalone kernel (elementwise.cu) and by a fused epilogue
// of the tensor-core GEMV (quant_gemv_tc.cu). One definition, so the fused and the unfused decode
// paths produce the same bits (tests/kernels check that they do).
#pragma once

#include "dtype_utils.cuh"

namespace exlsp {

// SwiGLU's activation: silu(gate) * up.
__device__ __forceinline__ float silu_mul(float gate, float up) { return gate / (1.f + __expf(-gate)) * up; }

// RMSNorm's sum of squares, in one order whoever computes it: rms_norm_kernel (elementwise.cu) with
// its block of kThreads, and the tensor-core GEMV's fused norm (quant_gemv_tc.cu) with any number of
// warps. Thread t of kThreads sums the squares of its 8-element vectors t, t + kThreads, ... in order
// (hidden <= kThreads * 8 * kMaxVecs), each warp adds its lanes with warp_sum, and the kWarps sums
// are added in warp order: the fused and the unfused norms give the same bits.
namespace rms {
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxVecs = 4;  // hidden up to 8192

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// 1 / rms of a row from its kWarps warp sums.
__device__ __forceinline__ float inv_rms(const float* warp_sums, int hidden, float eps) {
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  return rsqrtf(total / hidden + eps);
}
}  // namespace rms

// Neox (half-split) rotation of the pair (x1, x2) = elements (i, i + D/2) of one head.
__device__ __forceinline__ void rotate_neox(float x1, float x2, float c, float s, float& y1, float& y2) {
  y1 = x1 * c - x2 * s;
  y2 = x2 * c + x1 * s;
}

}  // namespace exlsp
