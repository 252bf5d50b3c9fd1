// The tensor-core GEMV's fused rotary epilogue (quant_gemv_tc_kernel.cuh, GemvEpilogueKind::kRotaryKv):
// after q|k|v, the rotation of q and k and the K/V cache write, exactly as the unfused
// rotary_write_kv_kernel (elementwise.cu) does them, so both paths give the same bits.
#pragma once

#include <cstdint>

#include "dtype_utils.cuh"
#include "elementwise_math.cuh"
#include "kernels.h"

namespace exlsp {
namespace {  // one translation unit includes this: quant_gemv_tc.cu

// cos and sin of rotary pair i at `position` from the (max_pos, D) table [cos(D/2) | sin(D/2)],
// stored in float32 or in the model dtype T.
template <typename T>
__device__ __forceinline__ void rotary_cos_sin(const void* table, bool table_is_float, int64_t position, int head_dim,
                                               int i, float& c, float& s) {
  const int64_t row = position * head_dim;
  if (table_is_float) {
    const float* cs = static_cast<const float*>(table) + row;
    c = cs[i];
    s = cs[i + head_dim / 2];
  } else {
    const T* cs = static_cast<const T*>(table) + row;
    c = to_float(cs[i]);
    s = to_float(cs[i + head_dim / 2]);
  }
}

// The kRotaryKv epilogue for one pair: column n (element i < D/2 of a head) and n + D/2, values
// a and b as the unfused GEMV stores them. q heads are rotated into out (M, Hq D), k heads rotated
// into the cache, v heads copied into it, exactly as rotary_write_kv_kernel (elementwise.cu) does.
template <typename T>
__device__ void store_rotary_kv(const RotaryArgs& r, int m, int n, float a, float b, T* out) {
  const int D = r.head_dim, half = D / 2;
  const int head = n / D, i = n - head * D;
  const int64_t slot = r.slot_mapping[m];
  T* cache = static_cast<T*>(r.kv_cache);
  if (head < r.num_q_heads + r.num_kv_heads) {
    float c, s, y1, y2;
    rotary_cos_sin<T>(r.cos_sin, r.cos_sin_is_float, r.positions[m], D, i, c, s);
    rotate_neox(a, b, c, s, y1, y2);
    if (head < r.num_q_heads) {
      T* dst = out + ((int64_t)m * r.num_q_heads + head) * D;
      dst[i] = from_float<T>(y1);
      dst[i + half] = from_float<T>(y2);
    } else if (slot >= 0) {
      T* dst = cache + (slot * r.num_kv_heads + (head - r.num_q_heads)) * D;
      dst[i] = from_float<T>(y1);
      dst[i + half] = from_float<T>(y2);
    }
  } else if (slot >= 0) {
    T* dst = cache + r.cache_half_elems + (slot * r.num_kv_heads + (head - r.num_q_heads - r.num_kv_heads)) * D;
    dst[i] = from_float<T>(a);
    dst[i + half] = from_float<T>(b);
  }
}

}  // namespace
}  // namespace exlsp
