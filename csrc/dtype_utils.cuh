// Load/store helpers between the model dtype (fp16 or bf16) and float32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace exlsp {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// 8 consecutive elements (one 16-byte vector) -> 8 floats.
template <typename T>
__device__ __forceinline__ void load8_as_float(const T* p, float (&f)[8]) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = to_float(e[i]);
}

template <typename T>
__device__ __forceinline__ void store8_from_float(T* p, const float (&f)[8]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) e[i] = from_float<T>(f[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}

}  // namespace exlsp

#define EXLSP_DISPATCH_DTYPE(dtype, T, ...)      \
  do {                                           \
    if ((dtype) == ::exlsp::Dtype::kHalf) {      \
      using T = __half;                          \
      __VA_ARGS__                                \
    } else {                                     \
      using T = __nv_bfloat16;                   \
      __VA_ARGS__                                \
    }                                            \
  } while (0)
