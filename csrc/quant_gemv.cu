// Quantized GEMV for 1-8 rows: y (M, N) = x (M, K) @ W, W dequantized on the fly from the
// canonical GPTQ-packed layout (engine/quant/layout.py), accumulation in float32.
//
// Work split: a block of 256 threads owns 4 * COL_THREADS output columns and the whole K.
// Thread (slice, col_thread) reads, for each packed word of its contiguous K slice, one 16-byte
// vector = the same word of 4 adjacent columns; the COL_THREADS threads of one slice together read a
// contiguous 16 * COL_THREADS-byte run of a qweight row (coalesced). Partial sums of the slices are
// reduced with warp shuffles, then through shared memory. COL_THREADS shrinks for narrow layers so
// the grid still covers every SM.
//
// Dequant: a nibble (byte for 8-bit) is or-ed into the mantissa of fp16 1024.0 (0x6400), giving
// 1024 + q exactly; subtracting 1024 gives q as half2 pairs with no integer->float conversion.
// The group's zero point is applied once per group: sum_k x_k (q_k - z) s = s (sum x_k q_k - z sum x_k).
#include <cstdint>

#include "dtype_utils.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace exlsp {
namespace {

constexpr int kThreads = 256;
constexpr int kColsPerThread = 4;
constexpr int kUnrollWords = 8;  // words loaded before the first use: bytes in flight per thread

// Packed word -> 8 (4-bit) or 4 (8-bit) quantized values as floats, in k order.
template <int BITS>
__device__ __forceinline__ void unpack_word(uint32_t w, float (&q)[32 / BITS]) {
  const __half2 magic = __half2half2(__ushort_as_half(0x6400));  // 1024.0
  if constexpr (BITS == 4) {
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      uint32_t bits = ((w >> (4 * p)) & 0x000F000Fu) | 0x64006400u;  // (k=p, k=p+4)
      float2 f = __half22float2(__hsub2(*reinterpret_cast<__half2*>(&bits), magic));
      q[p] = f.x;
      q[p + 4] = f.y;
    }
  } else {
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      uint32_t bits = ((w >> (8 * p)) & 0x00FF00FFu) | 0x64006400u;  // (k=p, k=p+2)
      float2 f = __half22float2(__hsub2(*reinterpret_cast<__half2*>(&bits), magic));
      q[p] = f.x;
      q[p + 2] = f.y;
    }
  }
}

template <typename T, int PER_WORD>
__device__ __forceinline__ void load_x(const T* p, float (&f)[PER_WORD]) {
  if constexpr (PER_WORD == 8) {
    uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = to_float(e[i]);
  } else {
    uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = to_float(e[i]);
  }
}

template <typename T>
__device__ __forceinline__ void load4_as_float(const T* p, float (&f)[4]) {
  uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) f[i] = to_float(e[i]);
}

template <typename T, int BITS, int M, int COL_THREADS>
__global__ void __launch_bounds__(kThreads)
    quant_gemv_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qweight,
                      const T* __restrict__ scales, const T* __restrict__ zeros, const T* __restrict__ bias,
                      const T* __restrict__ residual, T* __restrict__ out, int K, int N, int group_size) {
  constexpr int kPerWord = 32 / BITS;
  constexpr int kSlices = kThreads / COL_THREADS;
  constexpr int kColsPerBlock = kColsPerThread * COL_THREADS;
  constexpr int kWarps = kThreads / 32;

  const int col_thread = threadIdx.x % COL_THREADS;
  const int slice = threadIdx.x / COL_THREADS;
  const int n0 = blockIdx.x * kColsPerBlock + col_thread * kColsPerThread;
  const bool active = n0 < N;  // N % 4 == 0, so a thread's 4 columns are all in or all out

  const int num_words = K / kPerWord;
  const int words_per_group = group_size / kPerWord;
  const int chunk = (num_words + kSlices - 1) / kSlices;
  const int w_begin = min(num_words, slice * chunk);
  const int w_end = min(num_words, w_begin + chunk);

  float result[M][kColsPerThread];
  float acc[M][kColsPerThread];  // sum x_k q_k within the current group
  float xsum[M];                 // sum x_k within the current group
#pragma unroll
  for (int m = 0; m < M; ++m) {
    xsum[m] = 0.f;
#pragma unroll
    for (int c = 0; c < kColsPerThread; ++c) result[m][c] = acc[m][c] = 0.f;
  }
  int cur_group = -1;
  float s[kColsPerThread], z[kColsPerThread];

  auto flush = [&]() {
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int c = 0; c < kColsPerThread; ++c) {
        result[m][c] += s[c] * (acc[m][c] - z[c] * xsum[m]);
        acc[m][c] = 0.f;
      }
      xsum[m] = 0.f;
    }
  };

  if (active) {
    for (int w = w_begin; w < w_end; w += kUnrollWords) {
      uint4 qv[kUnrollWords];
#pragma unroll
      for (int u = 0; u < kUnrollWords; ++u) {
        if (w + u < w_end) qv[u] = __ldcs(reinterpret_cast<const uint4*>(qweight + (size_t)(w + u) * N + n0));
      }
#pragma unroll
      for (int u = 0; u < kUnrollWords; ++u) {
        const int wi = w + u;
        if (wi >= w_end) break;
        const int g = wi / words_per_group;
        if (g != cur_group) {
          if (cur_group >= 0) flush();
          cur_group = g;
          load4_as_float(scales + (size_t)g * N + n0, s);
          load4_as_float(zeros + (size_t)g * N + n0, z);
        }
        float xf[M][kPerWord];
#pragma unroll
        for (int m = 0; m < M; ++m) {
          load_x<T, kPerWord>(x + (size_t)m * K + (size_t)wi * kPerWord, xf[m]);
#pragma unroll
          for (int i = 0; i < kPerWord; ++i) xsum[m] += xf[m][i];
        }
        const uint32_t words[4] = {qv[u].x, qv[u].y, qv[u].z, qv[u].w};
#pragma unroll
        for (int c = 0; c < kColsPerThread; ++c) {
          float q[kPerWord];
          unpack_word<BITS>(words[c], q);
#pragma unroll
          for (int m = 0; m < M; ++m) {
#pragma unroll
            for (int i = 0; i < kPerWord; ++i) acc[m][c] = fmaf(xf[m][i], q[i], acc[m][c]);
          }
        }
      }
    }
    if (cur_group >= 0) flush();
  }

  // Reduce over the slices of a warp (lanes that differ in the slice bits), then across warps.
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int c = 0; c < kColsPerThread; ++c) {
#pragma unroll
      for (int off = COL_THREADS; off < 32; off <<= 1)
        result[m][c] += __shfl_xor_sync(0xffffffffu, result[m][c], off);
    }
  }
  __shared__ float partial[kWarps][M][kColsPerBlock];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane < COL_THREADS) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int c = 0; c < kColsPerThread; ++c) partial[warp][m][col_thread * kColsPerThread + c] = result[m][c];
    }
  }
  __syncthreads();
  for (int t = threadIdx.x; t < M * kColsPerBlock; t += kThreads) {
    const int m = t / kColsPerBlock;
    const int col = t % kColsPerBlock;
    const int n = blockIdx.x * kColsPerBlock + col;
    if (n >= N) continue;
    float y = 0.f;
#pragma unroll
    for (int wp = 0; wp < kWarps; ++wp) y += partial[wp][m][col];
    if (bias) y += to_float(bias[n]);
    if (residual) y += to_float(residual[(size_t)m * N + n]);
    out[(size_t)m * N + n] = from_float<T>(y);
  }
}

template <typename T, int BITS, int M>
cudaError_t launch_rows(const T* x, const uint32_t* qw, const T* scales, const T* zeros, const T* bias,
                        const T* residual, T* out, int K, int N, int group_size, int num_sms, cudaStream_t stream) {
  // Widest column tile whose grid still gives every SM a block.
  if (N / (kColsPerThread * 8) >= num_sms) {
    dim3 grid((N + 31) / 32);
    quant_gemv_kernel<T, BITS, M, 8><<<grid, kThreads, 0, stream>>>(x, qw, scales, zeros, bias, residual, out, K, N,
                                                                     group_size);
  } else if (N / (kColsPerThread * 4) >= num_sms) {
    dim3 grid((N + 15) / 16);
    quant_gemv_kernel<T, BITS, M, 4><<<grid, kThreads, 0, stream>>>(x, qw, scales, zeros, bias, residual, out, K, N,
                                                                     group_size);
  } else {
    dim3 grid((N + 7) / 8);
    quant_gemv_kernel<T, BITS, M, 2><<<grid, kThreads, 0, stream>>>(x, qw, scales, zeros, bias, residual, out, K, N,
                                                                     group_size);
  }
  return cudaGetLastError();
}

template <typename T, int BITS>
cudaError_t launch_bits(const T* x, const uint32_t* qw, const T* scales, const T* zeros, const T* bias,
                        const T* residual, T* out, int M, int K, int N, int group_size, int num_sms,
                        cudaStream_t stream) {
  switch (M) {
#define EXLSP_GEMV_CASE(R) \
  case R:                  \
    return launch_rows<T, BITS, R>(x, qw, scales, zeros, bias, residual, out, K, N, group_size, num_sms, stream);
    EXLSP_GEMV_CASE(1)
    EXLSP_GEMV_CASE(2)
    EXLSP_GEMV_CASE(3)
    EXLSP_GEMV_CASE(4)
    EXLSP_GEMV_CASE(5)
    EXLSP_GEMV_CASE(6)
    EXLSP_GEMV_CASE(7)
    EXLSP_GEMV_CASE(8)
#undef EXLSP_GEMV_CASE
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_quant_gemv(Dtype dtype, const void* x, const int32_t* qweight, const void* scales,
                              const void* zeros, const void* bias, const void* residual, void* out, int M, int K,
                              int N, int bits, int group_size, cudaStream_t stream) {
  const int num_sms = sm_count();
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(qweight);
  cudaError_t err = cudaSuccess;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    const T* xs = static_cast<const T*>(x);
    const T* sc = static_cast<const T*>(scales);
    const T* ze = static_cast<const T*>(zeros);
    const T* bi = static_cast<const T*>(bias);
    const T* re = static_cast<const T*>(residual);
    T* o = static_cast<T*>(out);
    // Rows beyond 8 go in chunks of 8: each chunk re-reads the weight (prefill uses the GEMM path).
    for (int m0 = 0; m0 < M && err == cudaSuccess; m0 += 8) {
      const int rows = M - m0 < 8 ? M - m0 : 8;
      const T* xr = xs + (size_t)m0 * K;
      const T* rr = re ? re + (size_t)m0 * N : nullptr;
      T* orow = o + (size_t)m0 * N;
      err = bits == 4 ? launch_bits<T, 4>(xr, qw, sc, ze, bi, rr, orow, rows, K, N, group_size, num_sms, stream)
                      : launch_bits<T, 8>(xr, qw, sc, ze, bi, rr, orow, rows, K, N, group_size, num_sms, stream);
    }
  });
  return err;
}

}  // namespace exlsp
