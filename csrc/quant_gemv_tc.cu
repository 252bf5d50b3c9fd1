// Quantized GEMV/skinny GEMM for 1-16 rows on the tensor cores (mma.sync m16n8k16, fp32 accumulate),
// reading the canonical 4-bit layout directly (no re-packed copy of the weight).
//
// The weight is operand A (16 output columns x 16 k), the activations operand B (16 k x 8 rows).
// Inside one mma the order of k is free as long as A and B agree, and so is the order of A's rows:
//   - lane (g = lane / 4, t = lane % 4) loads one 16-byte vector = packed word row (4 * chunk + t) of
//     the 4 adjacent columns 4g..4g+3, exactly the coalesced pattern of the CUDA-core GEMV (8 lanes
//     read a 128-byte run of a qweight row);
//   - A row g of n-tile j is column 4g + 2j, row g + 8 is column 4g + 2j + 1;
//   - the 8 nibbles of a word feed two mmas: nibble pairs (0,4), (1,5) the first, (2,6), (3,7) the
//     second, so each pair comes out of a word with one mask (the fp16 1024.0 mantissa trick) and
//     the activations of the same k are paired with two byte permutes.
// (q - zero) is exact in fp16/bf16 for integer zeros; the scale is applied in fp32 once per group.
// Requirements (else the CUDA-core kernel serves): 4-bit, integer zeros, K % 32 == 0,
// group_size % 32 == 0, N % 32 == 0.
#include <cstdint>

#include "dtype_utils.cuh"
#include "kernels.h"

namespace exlsp {
namespace {

constexpr int kUnroll = 4;  // 16-byte weight vectors in flight per lane

template <typename T>
struct MmaTraits;
template <>
struct MmaTraits<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;  // fp16 1024.0 in both halves
  static constexpr float kBias = 1024.f;
};
template <>
struct MmaTraits<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u;  // bf16 128.0 in both halves
  static constexpr float kBias = 128.f;
};

__device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b, __half) {
  __half2 r = __hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b, __nv_bfloat16) {
  __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// MT: 8-row tiles of activations (1: M <= 8, 2: M <= 16). WARPS split K.
// One-tile 8-warp blocks fit 3 per SM (24 warps) so the loads of more warps overlap the math.
template <typename T, int MT, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, WARPS == 8 && MT == 1 ? 3 : 1)
    quant_gemv_tc_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qweight, const T* __restrict__ scales,
                         const T* __restrict__ zeros, const T* __restrict__ bias, const T* __restrict__ residual,
                         T* __restrict__ out, int M, int K, int N, int group_size) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int col0 = blockIdx.x * 32 + 4 * g;  // this lane's 4 columns
  const int num_chunks = K / 32;            // a chunk: 4 packed word rows = 32 k
  const int per_warp = (num_chunks + WARPS - 1) / WARPS;
  const int c_begin = min(num_chunks, warp * per_warp);
  const int c_end = min(num_chunks, c_begin + per_warp);
  const int chunks_per_group = group_size / 32;

  float acc[MT][2][4], cur[MT][2][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][j][i] = cur[mt][j][i] = 0.f;
  float sc[4];
  uint32_t zz[4];  // (bias + zero) in both halves, per column
  int cur_group = -1;
  int next_group_chunk = c_begin;  // first chunk of the next group: no division per chunk

  auto flush = [&]() {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          acc[mt][j][i] = fmaf(sc[2 * j + (i >> 1)], cur[mt][j][i], acc[mt][j][i]);
          cur[mt][j][i] = 0.f;
        }
  };

  constexpr int U = MT == 1 ? kUnroll : kUnroll / 2;  // fewer registers when 16 rows share a lane
  auto load = [&](int c, uint4 (&wv)[U], uint4 (&xv)[U][MT]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int chunk = c + u;
      if (chunk < c_end) {
        const size_t word_row = (size_t)chunk * 4 + t;
        wv[u] = __ldcs(reinterpret_cast<const uint4*>(qweight + word_row * N + col0));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int row = mt * 8 + g;
          xv[u][mt] = row < M ? __ldg(reinterpret_cast<const uint4*>(x + (size_t)row * K + word_row * 8))
                              : make_uint4(0, 0, 0, 0);
        }
      }
    }
  };
  auto compute = [&](int c, const uint4 (&wv)[U], const uint4 (&xv)[U][MT]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int chunk = c + u;
      if (chunk >= c_end) break;  // uniform across the warp
      if (chunk == next_group_chunk) {
        if (cur_group >= 0) flush();
        const int grp = chunk / chunks_per_group;
        cur_group = grp;
        next_group_chunk = (grp + 1) * chunks_per_group;
        const uint2 s_raw = __ldg(reinterpret_cast<const uint2*>(scales + (size_t)grp * N + col0));
        const uint2 z_raw = __ldg(reinterpret_cast<const uint2*>(zeros + (size_t)grp * N + col0));
        const T* s4 = reinterpret_cast<const T*>(&s_raw);
        const T* z4 = reinterpret_cast<const T*>(&z_raw);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          sc[j] = to_float(s4[j]);
          const T zb = from_float<T>(to_float(z4[j]) + MmaTraits<T>::kBias);  // exact for integer zeros
          const uint16_t bits = *reinterpret_cast<const uint16_t*>(&zb);
          zz[j] = (uint32_t)bits | ((uint32_t)bits << 16);
        }
      }
      const uint32_t words[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
      uint32_t a[4][4];  // [column][pair p]: (q - z) of nibbles (p, p + 4)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int p = 0; p < 4; ++p)
          a[j][p] = sub2(((words[j] >> (4 * p)) & 0x000F000Fu) | MmaTraits<T>::kMagic, zz[j], T());
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const uint32_t x0 = xv[u][mt].x, x1 = xv[u][mt].y, x2 = xv[u][mt].z, x3 = xv[u][mt].w;
        const uint32_t b04 = __byte_perm(x0, x2, 0x5410), b15 = __byte_perm(x0, x2, 0x7632);
        const uint32_t b26 = __byte_perm(x1, x3, 0x5410), b37 = __byte_perm(x1, x3, 0x7632);
#pragma unroll
        for (int jt = 0; jt < 2; ++jt) {
          mma16816<T>(cur[mt][jt], a[2 * jt][0], a[2 * jt + 1][0], a[2 * jt][1], a[2 * jt + 1][1], b04, b15);
          mma16816<T>(cur[mt][jt], a[2 * jt][2], a[2 * jt + 1][2], a[2 * jt][3], a[2 * jt + 1][3], b26, b37);
        }
      }
    }
  };
  // One batch of U chunks in flight per lane, then its math. (Double-buffering the batches in
  // registers measured slower on H100: 1393 vs 1574 GB/s at 4096 x 14336, more registers, no gain.)
  for (int c = c_begin; c < c_end; c += U) {
    uint4 wv[U], xv[U][MT];
    load(c, wv, xv);
    compute(c, wv, xv);
  }
  if (cur_group >= 0) flush();

  // C fragment: i = 0, 1 -> A row g (column 4g + 2j), rows m = 2t, 2t + 1; i = 2, 3 -> A row g + 8
  // (column 4g + 2j + 1). Sum the warps' K slices through shared memory.
  __shared__ float partial[WARPS][MT * 8][32];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) partial[warp][mt * 8 + 2 * t + (i & 1)][4 * g + 2 * j + (i >> 1)] = acc[mt][j][i];
  __syncthreads();
  for (int idx = threadIdx.x; idx < M * 32; idx += WARPS * 32) {
    const int m = idx / 32, cl = idx % 32;
    const int n = blockIdx.x * 32 + cl;
    float y = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) y += partial[w][m][cl];
    if (bias) y += to_float(bias[n]);
    if (residual) y += to_float(residual[(size_t)m * N + n]);
    out[(size_t)m * N + n] = from_float<T>(y);
  }
}

template <typename T, int MT>
cudaError_t launch_mt(const T* x, const uint32_t* qw, const T* s, const T* z, const T* b, const T* r, T* o, int M, int K,
                      int N, int group_size, int num_sms, cudaStream_t stream) {
  const int blocks = N / 32;
  if (blocks >= 2 * num_sms)
    quant_gemv_tc_kernel<T, MT, 8><<<blocks, 8 * 32, 0, stream>>>(x, qw, s, z, b, r, o, M, K, N, group_size);
  else
    quant_gemv_tc_kernel<T, MT, 16><<<blocks, 16 * 32, 0, stream>>>(x, qw, s, z, b, r, o, M, K, N, group_size);
  return cudaGetLastError();
}

}  // namespace

bool quant_gemv_tc_supports(int bits, int K, int N, int group_size) {
  return bits == 4 && K % 32 == 0 && N % 32 == 0 && group_size % 32 == 0 && K % group_size == 0;
}

cudaError_t launch_quant_gemv_tc(Dtype dtype, const void* x, const int32_t* qweight, const void* scales,
                                 const void* zeros, const void* bias, const void* residual, void* out, int M, int K,
                                 int N, int group_size, cudaStream_t stream) {
  int dev = 0, num_sms = 132;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev);
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(qweight);
  cudaError_t err = cudaSuccess;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    const T* xs = static_cast<const T*>(x);
    const T* re = static_cast<const T*>(residual);
    T* o = static_cast<T*>(out);
    for (int m0 = 0; m0 < M && err == cudaSuccess; m0 += 16) {
      const int rows = M - m0 < 16 ? M - m0 : 16;
      const T* xr = xs + (size_t)m0 * K;
      const T* rr = re ? re + (size_t)m0 * N : nullptr;
      T* orow = o + (size_t)m0 * N;
      err = rows <= 8 ? launch_mt<T, 1>(xr, qw, static_cast<const T*>(scales), static_cast<const T*>(zeros),
                                        static_cast<const T*>(bias), rr, orow, rows, K, N, group_size, num_sms, stream)
                      : launch_mt<T, 2>(xr, qw, static_cast<const T*>(scales), static_cast<const T*>(zeros),
                                        static_cast<const T*>(bias), rr, orow, rows, K, N, group_size, num_sms, stream);
    }
  });
  return err;
}

}  // namespace exlsp
