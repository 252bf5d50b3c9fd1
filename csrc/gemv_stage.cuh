// The tensor-core GEMV's staged input (quant_gemv_tc.cu kStage): each block writes the M rows of x it
// reads into shared memory before its K loop, after one or both of
//   - the RMSNorm before q|k|v and gate|up (x is then the residual stream): the decode step needs no
//     RMSNorm kernel, and no kernel boundary (~1 us each on the critical path);
//   - the act-order permutation of the weight's input features (x[:, perm], what exlsp's GPTQ
//     checkpoints have on every linear): no gather kernel before the GEMV.
// Every block reads the whole rows (8 KB each at hidden 4096, L2 hits) and, where it applies, the
// norm weight and its slice of perm; the weights' first loads are already in flight (issued before
// pdl_wait), so this overlaps them. The sums follow rms_norm_kernel's order (elementwise_math.cuh
// rms::), and each element is x * inv_rms * weight rounded to T as that kernel stores it: the GEMV
// sees the bits that the RMSNorm kernel, then the gather, would have given it.
#pragma once

#include <cstdint>

#include "dtype_utils.cuh"
#include "elementwise_math.cuh"
#include "kernels.h"

namespace exlsp {
namespace gemv_stage {

constexpr int kMaxRows = 8;
constexpr size_t kMaxBytes = 48 * 1024;  // of staged rows; the launcher opts in past the 48 KB default

// A staged row holds the block's K slice [k0, k1) plus one 16-byte vector of padding, so that the
// rows a warp reads at the same k fall into different banks.
__host__ __device__ constexpr int row_vectors(int slice) { return slice / 8 + 1; }
__host__ __device__ constexpr size_t smem_bytes(int M, int slice) { return (size_t)M * row_vectors(slice) * 16; }

// rows[m][k - k0] = (rmsnorm(x[m]) * weight)[perm[k]] (or without the norm, or k for perm[k]) for
// m < M <= kMaxRows, k in [k0, k1), by every thread of the block (whole warps); ends with a
// __syncthreads. With a norm, K <= rms::kThreads * 8 * rms::kMaxVecs.
template <typename T>
__device__ void stage_rows(const T* __restrict__ x, const GemvInput& in, int M, int K, int k0, int k1,
                           uint4* rows) {
  __shared__ float warp_sums[kMaxRows][rms::kWarps];
  __shared__ float inv[kMaxRows];
  const T* weight = static_cast<const T*>(in.norm_weight);
  if (weight) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    // Warp w of the norm kernel's block of rms::kThreads is played by warp w % warps of this one.
    for (int item = warp; item < M * rms::kWarps; item += warps) {
      const int m = item / rms::kWarps, vw = item % rms::kWarps;
      const T* row = x + (size_t)m * K;
      float sumsq = 0.f;
#pragma unroll
      for (int i = 0; i < rms::kMaxVecs; ++i) {
        const int col = (vw * 32 + lane + i * rms::kThreads) * 8;
        if (col < K) {
          float v[8];
          load8_as_float(row + col, v);
#pragma unroll
          for (int j = 0; j < 8; ++j) sumsq += v[j] * v[j];
        }
      }
      sumsq = rms::warp_sum(sumsq);
      if (lane == 0) warp_sums[m][vw] = sumsq;
    }
    __syncthreads();
    if ((int)threadIdx.x < M) inv[threadIdx.x] = rms::inv_rms(warp_sums[threadIdx.x], K, in.norm_eps);
    __syncthreads();
  }
  const int vecs = (k1 - k0) / 8;
  for (int idx = threadIdx.x; idx < M * vecs; idx += blockDim.x) {
    const int m = idx / vecs, c = idx % vecs, k = k0 + c * 8;
    const T* row = x + (size_t)m * K;
    float v[8];
    if (in.perm) {
      int src[8];
      const int4* p = reinterpret_cast<const int4*>(in.perm + k);
      const int4 lo = p[0], hi = p[1];
      src[0] = lo.x, src[1] = lo.y, src[2] = lo.z, src[3] = lo.w;
      src[4] = hi.x, src[5] = hi.y, src[6] = hi.z, src[7] = hi.w;
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = to_float(row[src[j]]);
      if (weight) {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = v[j] * inv[m] * to_float(weight[src[j]]);
      }
    } else {
      load8_as_float(row + k, v);
      if (weight) {
        float w[8];
        load8_as_float(weight + k, w);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = v[j] * inv[m] * w[j];
      }
    }
    store8_from_float(reinterpret_cast<T*>(rows + m * row_vectors(k1 - k0) + c), v);  // exact without a norm
  }
  __syncthreads();
}

}  // namespace gemv_stage
}  // namespace exlsp
