// Dequantize the canonical packed layout into a dense (K, N) weight in the model dtype: the scratch
// of the first prefill GEMM (dequantize, then cuBLAS through torch.matmul).
// One thread per packed word: it reads qweight[w, n] (coalesced along n) and writes the word's
// 8 (4-bit) or 4 (8-bit) rows of column n (each write coalesced along n across the warp).
// The input may be a slice of columns of a wider weight (row stride `ld` >= N): a large prefill GEMM
// dequantizes N-slices one after another so the scratch stays small (engine/ops/cuda.py).
#include <cstdint>

#include "dtype_utils.cuh"
#include "kernels.h"

namespace exlsp {
namespace {

template <typename T, int BITS>
__global__ void dequantize_kernel(const uint32_t* __restrict__ qweight, const T* __restrict__ scales,
                                  const T* __restrict__ zeros, T* __restrict__ out, int K, int N, int ld,
                                  int group_size) {
  constexpr int kPerWord = 32 / BITS;
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const int w = blockIdx.y;
  if (n >= N) return;
  const uint32_t word = qweight[(size_t)w * ld + n];
  const int k0 = w * kPerWord;
  const int g = k0 / group_size;  // group_size % kPerWord == 0: one group per word
  const float s = to_float(scales[(size_t)g * ld + n]);
  const float z = to_float(zeros[(size_t)g * ld + n]);
#pragma unroll
  for (int i = 0; i < kPerWord; ++i) {
    const float q = static_cast<float>((word >> (BITS * i)) & ((1u << BITS) - 1u));
    out[(size_t)(k0 + i) * N + n] = from_float<T>((q - z) * s);
  }
}

}  // namespace

cudaError_t launch_dequantize(Dtype dtype, const int32_t* qweight, const void* scales, const void* zeros, void* out,
                              int K, int N, int ld, int bits, int group_size, cudaStream_t stream) {
  const int per_word = 32 / bits;
  dim3 block(256);
  dim3 grid((N + 255) / 256, K / per_word);
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(qweight);
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    if (bits == 4)
      dequantize_kernel<T, 4><<<grid, block, 0, stream>>>(qw, static_cast<const T*>(scales),
                                                          static_cast<const T*>(zeros), static_cast<T*>(out), K, N, ld,
                                                          group_size);
    else
      dequantize_kernel<T, 8><<<grid, block, 0, stream>>>(qw, static_cast<const T*>(scales),
                                                          static_cast<const T*>(zeros), static_cast<T*>(out), K, N, ld,
                                                          group_size);
  });
  return cudaGetLastError();
}

}  // namespace exlsp
