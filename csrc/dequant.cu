// Dequantize the canonical packed layout into a dense (K, N) weight in the model dtype: the scratch
// of the first prefill GEMM (dequantize, then cuBLAS through torch.matmul).
// One thread per packed word: it reads qweight[w, n] (coalesced along n) and writes the word's
// 8 (4-bit) or 4 (8-bit) rows of column n (each write coalesced along n across the warp).
// The input may be a slice of columns of a wider weight (row stride `ld` >= N): a large prefill GEMM
// dequantizes N-slices one after another so the scratch stays small (engine/ops/cuda_quant_linear.py).
// A weight in column strips (the tensor-core GEMV's layout) is read in its storage order instead:
// thread i reads word i of the strips (coalesced), and each half-warp writes 16 columns of a row.
#include <cstdint>

#include "dtype_utils.cuh"
#include "kernels.h"

namespace exlsp {
namespace {

// Word row w of column n: its 32 / BITS values of rows w * kPerWord on, written to out (K, N).
template <typename T, int BITS>
__device__ __forceinline__ void dequantize_word(uint32_t word, int w, int n, const T* __restrict__ scales,
                                                const T* __restrict__ zeros, T* __restrict__ out, int N, int ld,
                                                int group_size) {
  constexpr int kPerWord = 32 / BITS;
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

template <typename T, int BITS>
__global__ void dequantize_kernel(const uint32_t* __restrict__ qweight, const T* __restrict__ scales,
                                  const T* __restrict__ zeros, T* __restrict__ out, int K, int N, int ld,
                                  int group_size) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const int w = blockIdx.y;
  if (n >= N) return;
  dequantize_word<T, BITS>(qweight[(size_t)w * ld + n], w, n, scales, zeros, out, N, ld, group_size);
}

// Strips of (K / kPerWord, 16) words one after another: word i is row (i / 16) % rows of column
// 16 * (i / (16 * rows)) + i % 16.
template <typename T, int BITS>
__global__ void dequantize_strips_kernel(const uint32_t* __restrict__ qweight, const T* __restrict__ scales,
                                         const T* __restrict__ zeros, T* __restrict__ out, int K, int N, int ld,
                                         int group_size) {
  const int rows = K / (32 / BITS);
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (int64_t)rows * N) return;
  const int strip = (int)(i / (16 * rows)), w = (int)(i / 16 % rows), n = strip * 16 + (int)(i % 16);
  dequantize_word<T, BITS>(qweight[i], w, n, scales, zeros, out, N, ld, group_size);
}

}  // namespace

cudaError_t launch_dequantize(Dtype dtype, const int32_t* qweight, const void* scales, const void* zeros, void* out,
                              int K, int N, int ld, int bits, int group_size, bool strips, cudaStream_t stream) {
  const int per_word = 32 / bits;
  if (strips && N % 16 != 0) return cudaErrorInvalidValue;
  const dim3 block(256);
  const dim3 grid = strips ? dim3((unsigned)(((int64_t)K / per_word * N + 255) / 256)) : dim3((N + 255) / 256, K / per_word);
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(qweight);
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    const T* s = static_cast<const T*>(scales);
    const T* z = static_cast<const T*>(zeros);
    T* o = static_cast<T*>(out);
    if (bits == 4) {
      auto kernel = strips ? dequantize_strips_kernel<T, 4> : dequantize_kernel<T, 4>;
      kernel<<<grid, block, 0, stream>>>(qw, s, z, o, K, N, ld, group_size);
    } else {
      auto kernel = strips ? dequantize_strips_kernel<T, 8> : dequantize_kernel<T, 8>;
      kernel<<<grid, block, 0, stream>>>(qw, s, z, o, K, N, ld, group_size);
    }
  });
  return cudaGetLastError();
}

}  // namespace exlsp
