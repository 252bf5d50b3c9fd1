// Element-wise math computed both by a standalone kernel (elementwise.cu) and by a fused epilogue
// of the tensor-core GEMV (quant_gemv_tc.cu). One definition, so the fused and the unfused decode
// paths produce the same bits (tests/kernels check that they do).
#pragma once

#include "dtype_utils.cuh"

namespace exlsp {

// SwiGLU's activation: silu(gate) * up.
__device__ __forceinline__ float silu_mul(float gate, float up) { return gate / (1.f + __expf(-gate)) * up; }

// Neox (half-split) rotation of the pair (x1, x2) = elements (i, i + D/2) of one head.
__device__ __forceinline__ void rotate_neox(float x1, float x2, float c, float s, float& y1, float& y2) {
  y1 = x1 * c - x2 * s;
  y2 = x2 * c + x1 * s;
}

}  // namespace exlsp
