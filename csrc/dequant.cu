// Dequantize the canonical packed layout into a dense (K, N) weight in the model dtype: the scratch
// of the first prefill GEMM (dequantize, then cuBLAS through torch.matmul).
// One thread per packed word: it reads qweight[w, n] (coalesced along n) and writes the word's
// 8 (4-bit) or 4 (8-bit) rows of column n (each write coalesced along n across the warp).
// The input may be a slice of columns of a wider weight (row stride `ld` >= N): a large prefill GEMM
// dequantizes N-slices one after another so the scratch stays small (engine/ops/cuda_quant_linear.py).
// A weight in column strips (the tensor-core GEMV's layout) is read in its storage order instead. At
// 4 bits a thread owns 8 adjacent columns of one packed row (two 16-byte loads, half a strip's 64-byte
// row) and writes its 8 x 8 values as eight 16-byte stores, one per output row: a thread per word
// wrote 2 bytes per store, and a 2k prefill's dequantize ran at 2.2 TB/s, 53% of an H200's copy;
// now 2.75 TB/s, 66% (bench/NOTES.md 81l, 82g). At 8 bits, thread i reads word i and each half-warp writes 16 columns of a row.
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

// 4-bit strips: thread t owns words 8t..8t+7, columns n0..n0+7 of packed row w (n0 % 16 is 0 or 8),
// so output rows 8w..8w+7 of those columns. The values are those of dequantize_word, bit for bit.
template <typename T>
__global__ void dequantize_strips4_kernel(const uint32_t* __restrict__ qweight, const T* __restrict__ scales,
                                          const T* __restrict__ zeros, T* __restrict__ out, int K, int N, int ld,
                                          int group_size) {
  const int rows = K / 8;
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= (int64_t)rows * N / 8) return;
  const int64_t i = t * 8;
  const int strip = (int)(i / (16 * rows)), w = (int)(i / 16 % rows), n0 = strip * 16 + (int)(i % 16);
  const uint4 lo = __ldcs(reinterpret_cast<const uint4*>(qweight + i));
  const uint4 hi = __ldcs(reinterpret_cast<const uint4*>(qweight + i + 4));
  const uint32_t words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  const size_t group_row = (size_t)(w * 8 / group_size) * ld + n0;
  float s[8], z[8];
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    s[c] = to_float(scales[group_row + c]);
    z[c] = to_float(zeros[group_row + c]);
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    union {
      uint4 vec;
      T v[8];
    } row;
#pragma unroll
    for (int c = 0; c < 8; ++c) row.v[c] = from_float<T>((static_cast<float>((words[c] >> (4 * j)) & 15u) - z[c]) * s[c]);
    *reinterpret_cast<uint4*>(out + (size_t)(w * 8 + j) * N + n0) = row.vec;
  }
}

}  // namespace

cudaError_t launch_dequantize(Dtype dtype, const int32_t* qweight, const void* scales, const void* zeros, void* out,
                              int K, int N, int ld, int bits, int group_size, bool strips, cudaStream_t stream) {
  const int per_word = 32 / bits;
  if (strips && N % 16 != 0) return cudaErrorInvalidValue;
  const dim3 block(256);
  const int64_t words = (int64_t)K / per_word * N;
  const int64_t threads = strips && bits == 4 ? words / 8 : words;  // 4-bit strips: 8 words a thread
  const dim3 grid = strips ? dim3((unsigned)((threads + 255) / 256)) : dim3((N + 255) / 256, K / per_word);
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(qweight);
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    const T* s = static_cast<const T*>(scales);
    const T* z = static_cast<const T*>(zeros);
    T* o = static_cast<T*>(out);
    if (bits == 4) {
      auto kernel = strips ? dequantize_strips4_kernel<T> : dequantize_kernel<T, 4>;
      kernel<<<grid, block, 0, stream>>>(qw, s, z, o, K, N, ld, group_size);
    } else {
      auto kernel = strips ? dequantize_strips_kernel<T, 8> : dequantize_kernel<T, 8>;
      kernel<<<grid, block, 0, stream>>>(qw, s, z, o, K, N, ld, group_size);
    }
  });
  return cudaGetLastError();
}

}  // namespace exlsp
