// The tensor-core GEMV's staged input (quant_gemv_tc.cu kStage): each block writes the M rows of x it
// reads into shared memory before its K loop, after one or both of
//   - the RMSNorm before q|k|v and gate|up (x is then the residual stream): the decode step needs no
//     RMSNorm kernel, and no kernel boundary, before those GEMVs;
//   - the act-order permutation of the weight's input features (x[:, perm], what exlsp's GPTQ
//     checkpoints have on every linear): no gather kernel before the GEMV.
// What no kernel of the step writes (the norm weight, the block's slice of perm) is copied in before
// pdl_wait, with the first weight loads; after it, the rows arrive in one copy, and the norm and the
// gather read shared memory only: one L2 round trip, as the unstaged K loop's first x load.
// The sums follow rms_norm_kernel's order (elementwise_math.cuh rms::), and each element is
// x * inv_rms * weight rounded to T as that kernel stores it: the GEMV sees the bits that the RMSNorm
// kernel, then the gather, would have given it.
#pragma once

#include <cstdint>

#include "cp_async.cuh"
#include "dtype_utils.cuh"
#include "elementwise_math.cuh"
#include "kernels.h"

namespace exlsp {
namespace gemv_stage {

constexpr int kMaxRows = 8;
constexpr int kMaxBytes = 96 * 1024;  // the launcher opts in; also capped by the device (supports())

// A staged row holds the block's K slice [k0, k1) plus one 16-byte vector of padding, so that the
// rows a warp reads at the same k fall into different banks.
__host__ __device__ constexpr int row_vectors(int slice) { return slice / 8 + 1; }

// Byte offsets in the block's dynamic shared memory: the staged rows, then the raw rows (M x K), the
// norm weight (K) and the slice of perm, each only where used.
struct Layout {
  int raw, weight, perm, bytes;
  __host__ __device__ Layout(int M, int K, int slice, int elem_bytes, bool norm, bool perm_) {
    raw = M * row_vectors(slice) * 16;
    weight = raw + M * K * elem_bytes;
    perm = weight + (norm ? K * elem_bytes : 0);
    bytes = perm + (perm_ ? slice * 4 : 0);
  }
};

// Before pdl_wait: the norm weight and the block's slice of perm into shared memory (a cp.async
// group the block waits for in stage_rows).
template <typename T>
__device__ void copy_weights(const GemvInput& in, int K, int k0, int k1, const Layout& L, unsigned char* smem) {
  if (in.norm_weight) {
    const T* w = static_cast<const T*>(in.norm_weight);
    for (int i = threadIdx.x; i < K / 8; i += blockDim.x) cp_async16(smem + L.weight + i * 16, w + i * 8);
  }
  if (in.perm) {
    for (int i = threadIdx.x; i < (k1 - k0) / 4; i += blockDim.x)
      cp_async16(smem + L.perm + i * 16, in.perm + k0 + i * 4);
  }
  cp_async_commit();
}

// After pdl_wait: staged[m][k - k0] = (rmsnorm(x[m]) * weight)[perm[k]] (without the norm, or with
// k for perm[k], where absent) for m < M <= kMaxRows, k in [k0, k1), by every thread of the block
// (whole warps); ends with a __syncthreads. With a norm, K <= rms::kThreads * 8 * rms::kMaxVecs.
template <typename T>
__device__ void stage_rows(const T* __restrict__ x, const GemvInput& in, int M, int K, int k0, int k1,
                           const Layout& L, unsigned char* smem) {
  __shared__ float warp_sums[kMaxRows][rms::kWarps];
  __shared__ float inv[kMaxRows];
  T* raw = reinterpret_cast<T*>(smem + L.raw);
  for (int i = threadIdx.x; i < M * K / 8; i += blockDim.x) cp_async16(raw + i * 8, x + (size_t)i * 8);
  cp_async_commit();
  cp_async_wait<0>();  // the rows, and copy_weights' group
  __syncthreads();
  const T* weight = in.norm_weight ? reinterpret_cast<const T*>(smem + L.weight) : nullptr;
  if (weight) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    // Warp w of the norm kernel's block of rms::kThreads is played by warp w % warps of this one.
    for (int item = warp; item < M * rms::kWarps; item += warps) {
      const int m = item / rms::kWarps, vw = item % rms::kWarps;
      float sumsq = 0.f;
#pragma unroll
      for (int i = 0; i < rms::kMaxVecs; ++i) {
        const int col = (vw * 32 + lane + i * rms::kThreads) * 8;
        if (col < K) {
          float v[8];
          load8_as_float(raw + m * K + col, v);
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
  const int* perm = in.perm ? reinterpret_cast<const int*>(smem + L.perm) : nullptr;
  uint4* staged = reinterpret_cast<uint4*>(smem);
  const int vecs = (k1 - k0) / 8;
  for (int idx = threadIdx.x; idx < M * vecs; idx += blockDim.x) {
    const int m = idx / vecs, c = idx % vecs;
    const T* row = raw + m * K;
    float v[8];
    if (perm) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int src = perm[c * 8 + j];
        v[j] = to_float(row[src]);
        if (weight) v[j] = v[j] * inv[m] * to_float(weight[src]);
      }
    } else {
      load8_as_float(row + k0 + c * 8, v);
      if (weight) {
        float w[8];
        load8_as_float(weight + k0 + c * 8, w);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = v[j] * inv[m] * w[j];
      }
    }
    store8_from_float(reinterpret_cast<T*>(staged + m * row_vectors(k1 - k0) + c), v);  // exact without a norm
  }
  __syncthreads();
}

}  // namespace gemv_stage
}  // namespace exlsp
