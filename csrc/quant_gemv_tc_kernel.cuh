// Quantized GEMV/skinny GEMM for 1-16 rows on the tensor cores (mma.sync m16n8k16, fp32 accumulate),
// reading the 4-bit weight in column strips: the canonical (K/8, N) words cut into strips of 16
// columns, each strip's (K/8, 16) words stored whole, one strip after another (engine/quant/layout.py
// to_column_strips, made once at load in place of the canonical tensor). A warp's load then reads two
// 256-byte runs instead of eight 64-byte pieces of rows N * 4 bytes apart: decode +2.4% at 2k on an
// H100, the GEMV alone unchanged (bench/NOTES.md 78). (Tiles of a block's 32 columns paired as its
// epilogue pairs them, one 512-byte run per load: no faster in the step; branch column-tiles.)
//
// The weight is operand A (16 output columns x 16 k), the activations operand B (16 k x 8 rows).
// Inside one mma the order of k is free as long as A and B agree, and so is the order of A's rows:
//   - lane (g = lane / 4, t = lane % 4) loads one 16-byte vector = packed word row (4 * chunk + t) of
//     the 4 adjacent columns 4g..4g+3 (lanes g < 4 from one strip, g >= 4 from the other);
//   - A row g of n-tile j is column 4g + 2j, row g + 8 is column 4g + 2j + 1;
//   - the 8 nibbles of a word feed two mmas: nibble pairs (0,4), (1,5) the first, (2,6), (3,7) the
//     second, so each pair comes out of a word with one mask (the fp16 1024.0 mantissa trick) and
//     the activations of the same k are paired with two byte permutes.
// (q - zero) is exact in fp16/bf16 for integer zeros; the scale is applied in fp32 once per group.
// Requirements (else the CUDA-core kernel serves): 4-bit, integer zeros, K % 128 == 0 (whole batches
// of 4 chunks; every real layer width is a multiple of 128), group_size % 32 == 0, N % 32 == 0.
//
// Epilogues (kernels.h GemvEpilogue): store y (+ bias, + residual), or finish the next element-wise
// kernel's work: SiLU * up after gate|up, the rotary rotation and the K/V write after q|k|v. For
// those a block owns 16 + 16 columns at a pair offset (N / 2, D / 2), so it holds both values of
// every pair it combines; y is rounded as the unfused GEMV stores it, then the shared element-wise
// code runs (elementwise_math.cuh): the fused and unfused paths give the same bits.
// Loads: a batch of U 16-byte weight vectors per lane in registers, then its math; with `rolling` (the
// default) each vector's register is refilled with the next batch's vector as soon as its chunk has
// been read, so U loads stay in flight through the math instead of none (no more registers; a
// second batch of registers, item 3 of bench/NOTES.md, cost 40 of them and 11%). (A cp.async
// shared-memory ring, 3 of 4 slots in flight per warp, measured slower on H100: 1158 vs 1578 GB/s at
// 4096 x 14336; bench/NOTES.md.) PDL (launch.cuh): the first batch of weights is requested before
// waiting for the kernel that wrote x. After its last batch each warp asks L2 for its share of the
// weight the model reads next, when the caller names one (l2_prefetch.cuh).
//
// The launch choices (grid, warps per block, K slices, batch widths) are in quant_gemv_tc.cu.
#pragma once

#include <cstdint>

#include "cp_async.cuh"
#include "dtype_utils.cuh"
#include "elementwise_math.cuh"
#include "grid_count.cuh"
#include "kernels.h"
#include "l2_prefetch.cuh"
#include "launch.cuh"
#include "quant_gemv_tc_epilogue.cuh"
#include "quant_gemv_tc_math.cuh"
#include "trace.cuh"

namespace exlsp {
namespace {  // one translation unit includes this: quant_gemv_tc.cu

using namespace gemv_tc;  // quant_gemv_tc_math.cuh: MmaTraits, pair arithmetic, mma16816, mask_or

constexpr int kUnroll = 4;    // the most 16-byte weight vectors in flight per lane
constexpr int kMaxWarps = 8;  // per block, batches of 4 chunks

// Batches of 8 chunks (128 registers) serve small grids, where a block may have 16 warps.
template <int U>
__host__ __device__ constexpr int max_warps() {
  return U == 8 ? 16 : kMaxWarps;
}
template <int MT, int U>
__host__ __device__ constexpr int min_blocks_per_sm() {
  return U == 8 ? 1 : (MT == 1 ? 3 : 2);
}

// MT: 8-row tiles of activations (1: M <= 8, 2: M <= 16). The block's warps split K.
// U: chunks (16-byte vectors per lane) per batch, loaded together with the scales and zeros of
// their groups: one memory round trip per batch. S: chunks per sub-batch, a common divisor of U and
// the chunks per group, so each sub-batch lies in one group. The host rounds every K slice to whole
// batches, so the loop has no bounds checks, and the pointers step by one batch: in an earlier
// version index math, an integer division per batch and per-chunk guards took as many instructions
// as the dequantization and the mma (125 per chunk).
// U = 4 at 80 registers fits 3 eight-warp blocks per SM (24 warps), so the loads of more warps
// overlap the math. U = 8 (128 registers, 16 warps per SM) serves grids too small to fill those
// slots: with a short K slice per warp its whole slice is requested at once, before pdl_wait.
// With 16 rows (MT 2) the block is register-bound at 2 per SM anyway (128 registers).
// kPaired: a fused epilogue's column pairing (pair_arg) and its kind (ep.kind); else the plain
// store, whose columns are a compile-time run of 32 (a runtime division in the prologue, before the
// first loads, cost 2% at batch 1: bench/NOTES.md).
template <typename T, int MT, int U, int S, bool kPaired>
__global__ void __launch_bounds__(max_warps<U>() * 32, min_blocks_per_sm<MT, U>())
    quant_gemv_tc_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qweight, const T* __restrict__ scales,
                         const T* __restrict__ zeros, const T* __restrict__ bias, const GemvEpilogue ep,
                         const L2Prefetch pf, T* __restrict__ out, float* __restrict__ partials,
                         int* __restrict__ counters, int M, int K, int N, int group_size, int chunks_per_split,
                         int pair_arg, bool rolling) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int g = lane / 4, t = lane % 4;
  // The block's 32 columns: 16 from tile_base on and 16 from tile_base + pair on (pair 16: 32 in a
  // row). A fused epilogue pairs the columns it combines: gate i with up i (pair N / 2), rotary
  // element i of a head with i + D / 2 (pair D / 2).
  const int pair = kPaired ? pair_arg : 16;
  const int tiles_per_run = pair / 16;
  const int tile_base = blockIdx.x / tiles_per_run * 2 * pair + blockIdx.x % tiles_per_run * 16;
  const int col0 = tile_base + (g < 4 ? 4 * g : pair + 4 * (g - 4));  // this lane's 4 columns
  const int num_chunks = K / 32;            // a chunk: 4 packed word rows = 32 k
  const int split_begin = blockIdx.y * chunks_per_split;
  const int batches = (min(num_chunks, split_begin + chunks_per_split) - split_begin) / U;  // exact
  const int b_begin = warp * batches / warps, b_end = (warp + 1) * batches / warps;
  const int c_begin = split_begin + U * b_begin;
  const int chunks_per_group = group_size / 32;

  // Lane (g, t) reads word row 4c + t of columns col0..col0+3: 16 bytes of its strip, whose chunk c
  // is 64 words (16 vectors) from (strip * K/8 + 4c) * 16 on.
  const int strip = (col0 - 4 * (g % 4)) / 16;
  const int chunk_vectors = N > 0 ? 16 : N;  // 16, opaque to ptxas: as a constant it spilled (NOTES 78)
  const uint4* wp = reinterpret_cast<const uint4*>(qweight) + ((size_t)strip * (K / 8) + (size_t)c_begin * 4 + t) * 4 + g % 4;
  // ... and the 8 activations of the same k, rows g and g + 8 (rows past M read as zero).
  const uint4* xp[MT];
  bool x_row[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int row = mt * 8 + g;
    x_row[mt] = row < M;
    xp[mt] = reinterpret_cast<const uint4*>(x + (size_t)(x_row[mt] ? row : 0) * K) + (size_t)c_begin * 4 + t;
  }
  // Position in its group of the next sub-batch to compute; a load runs when the compute has
  // reached the batch it loads, so it starts from the same position.
  int in_group = c_begin % chunks_per_group;
  const uint2* sp = reinterpret_cast<const uint2*>(scales + (size_t)(c_begin / chunks_per_group) * N + col0);
  const uint2* zp = reinterpret_cast<const uint2*>(zeros + (size_t)(c_begin / chunks_per_group) * N + col0);

  float acc[MT][2][4], cur[MT][2][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][j][i] = cur[mt][j][i] = 0.f;
  float sc[4];
  uint32_t zz[4];  // (bias + zero) in both halves, per column
  uint32_t nz[4];  // fp16: -(64 + zero) in both halves, per column
  const uint32_t magic = MmaTraits<T>::kMagic;

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
  // The group's scales (fp32) and zero terms from its raw scales and zeros, in half2 arithmetic on
  // column pairs (exact for integer zeros): bias + zero, and for fp16 also -(64 + zero).
  auto set_group = [&](const uint2& s_raw, const uint2& z_raw) {
    const T* s4 = reinterpret_cast<const T*>(&s_raw);
#pragma unroll
    for (int j = 0; j < 4; ++j) sc[j] = to_float(s4[j]);
    const uint32_t zpair[2] = {z_raw.x, z_raw.y};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t biased = add2(zpair[i], MmaTraits<T>::kMagic, T());
      zz[2 * i] = low2(biased, T());
      zz[2 * i + 1] = high2(biased, T());
      if constexpr (std::is_same_v<T, __half>) {
        const uint32_t neg = fma2(zpair[i], MmaTraits<T>::kMinusOne, MmaTraits<T>::kMinus64, T());
        nz[2 * i] = low2(neg, T());
        nz[2 * i + 1] = high2(neg, T());
      }
    }
  };
  constexpr int SB = U / S;  // sub-batches per batch
  // bf16 at one row tile loads batch by batch: its three-shift dequantization leaves no registers for
  // the rolling loads (40 bytes spilled at 80 registers).
  constexpr bool kRolls = std::is_same_v<T, __half> || MT == 2;
  uint4 wv[U];
  uint2 s_raw[SB], z_raw[SB];
  // The loads run one batch ahead of the math: the scales and zeros of sub-batch sb at the loader's
  // own position in its group.
  int load_in_group = in_group;
  auto load_sub = [&](int sb) {
    s_raw[sb] = __ldg(sp);
    z_raw[sb] = __ldg(zp);
    load_in_group += S;
    if (load_in_group == chunks_per_group) {
      load_in_group = 0;
      sp += N / 4;
      zp += N / 4;
    }
  };
  auto load = [&]() {
    const uint4* p = wp;
#pragma unroll
    for (int u = 0; u < U; ++u, p += chunk_vectors) wv[u] = __ldcs(p);
    if constexpr (kRolls) {
#pragma unroll
      for (int sb = 0; sb < SB; ++sb) load_sub(sb);
    } else {
      // Batch by batch the loader is where the math is: load_sub's steps on a local position, which
      // keeps these kernels' registers (and SASS) as they were before the rolling loads.
      int at = in_group;
#pragma unroll
      for (int sb = 0; sb < SB; ++sb) {
        s_raw[sb] = __ldg(sp);
        z_raw[sb] = __ldg(zp);
        at += S;
        if (at == chunks_per_group) {
          at = 0;
          sp += N / 4;
          zp += N / 4;
        }
      }
    }
    wp += (size_t)U * chunk_vectors;
  };

  // Once this warp's own loads are done: its share of the next weight (l2_prefetch.cuh).
  auto prefetch_next = [&]() {
    prefetch_l2_share(pf, (blockIdx.y * gridDim.x + blockIdx.x) * warps + warp, gridDim.x * gridDim.y * warps, lane);
  };

  // The warps' sums of the K loop, per row and column; before the loop ends, the staged row sums.
  __shared__ __align__(16) float partial[max_warps<U>()][MT * 8][32];  // 16: cp.async destinations
  const bool add_norm = !kPaired && ep.kind == GemvEpilogueKind::kAddNorm;
  if (add_norm) {  // the block's 32 columns of the norm's weight and column order: weights, read early
    if (threadIdx.x == 0) prefetch_l1(static_cast<const T*>(ep.norm_weight) + tile_base);
    if (threadIdx.x == 32 && ep.norm_index) prefetch_l1(ep.norm_index + tile_base);
  }
  EXLSP_TRACE_MARK(1, K, N, 0);
  if (b_begin < b_end) load();
  pdl_wait();
  EXLSP_TRACE_MARK(1, K, N, 1);
  pdl_trigger();
  // The GEMV after an RMSNorm: the norm's per-tile sums of every row, written by the GEMV before it,
  // copied into the reduction's buffer in the background while the K loop runs (through L1: every
  // block of the grid copies the same bytes).
  if (ep.row_sumsq) {
    float* staged = &partial[0][0][0];
    const int vecs = M * (K / 32) / 4;
    for (int i = threadIdx.x; i < vecs; i += blockDim.x) cp_async16_ca(staged + 4 * i, ep.row_sumsq + 4 * i);
    cp_async_commit();
  }
  // The GEMV before an RMSNorm: its residual rows into L1 now, not an L2 round trip in the epilogue.
  if (add_norm && threadIdx.x < M) {
    prefetch_l1(static_cast<const T*>(ep.residual) + (size_t)threadIdx.x * N + tile_base);
  }
  for (int b = b_begin; b < b_end; ++b) {
    const bool refill = kRolls && rolling && b + 1 < b_end;  // the next batch's loads, vector by vector
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (u % S == 0) {
        if (in_group == 0 || (b == b_begin && u == 0)) {
          if (b != b_begin || u != 0) flush();
          set_group(s_raw[u / S], z_raw[u / S]);
        }
        in_group += S;
        if (in_group == chunks_per_group) in_group = 0;
        if (refill) load_sub(u / S);
      }
      // The chunk's activations (L1 hits) just before their use: 4 registers per row tile, not 4 * U.
      uint4 xv[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) xv[mt] = x_row[mt] ? __ldg(xp[mt] + 4 * u) : make_uint4(0, 0, 0, 0);
      const uint32_t words[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
      if (refill) wv[u] = __ldcs(wp + (size_t)u * chunk_vectors);
      uint32_t a[4][4];  // [column][pair p]: (q - z) of nibbles (p, p + 4)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (std::is_same_v<T, __half>) {
          // Nibbles (0, 4) and (2, 6) masked into the low mantissa bits: 1024 + q, minus (1024 + z).
          // Nibbles (1, 5) and (3, 7) masked in place: 1024 + 16 q, times 1/16, minus (64 + z).
          // One shift per word instead of three; every step is exact for 4-bit codes and zeros.
          // (bf16's 7-bit mantissa has no room for a nibble at bits 4-7.)
          const uint32_t w = words[j], w8 = words[j] >> 8;
          constexpr uint32_t kSixteenth = MmaTraits<T>::kSixteenth;
          a[j][0] = sub2(mask_or<0x000F000Fu>(w, magic), zz[j], T());
          a[j][1] = fma2(mask_or<0x00F000F0u>(w, magic), kSixteenth, nz[j], T());
          a[j][2] = sub2(mask_or<0x000F000Fu>(w8, magic), zz[j], T());
          a[j][3] = fma2(mask_or<0x00F000F0u>(w8, magic), kSixteenth, nz[j], T());
        } else {
#pragma unroll
          for (int p = 0; p < 4; ++p) a[j][p] = sub2(mask_or<0x000F000Fu>(words[j] >> (4 * p), magic), zz[j], T());
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const uint32_t x0 = xv[mt].x, x1 = xv[mt].y, x2 = xv[mt].z, x3 = xv[mt].w;
        const uint32_t b04 = __byte_perm(x0, x2, 0x5410), b15 = __byte_perm(x0, x2, 0x7632);
        const uint32_t b26 = __byte_perm(x1, x3, 0x5410), b37 = __byte_perm(x1, x3, 0x7632);
#pragma unroll
        for (int jt = 0; jt < 2; ++jt) {
          mma16816<T>(cur[mt][jt], a[2 * jt][0], a[2 * jt + 1][0], a[2 * jt][1], a[2 * jt + 1][1], b04, b15);
          mma16816<T>(cur[mt][jt], a[2 * jt][2], a[2 * jt + 1][2], a[2 * jt][3], a[2 * jt + 1][3], b26, b37);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) xp[mt] += 4 * U;
    if (refill) {
      wp += (size_t)U * chunk_vectors;
    } else if (b + 1 < b_end) {
      load();
    }
  }
  EXLSP_TRACE_MARK(1, K, N, 2);
  prefetch_next();
  if (b_begin < b_end) flush();

  // Each row's RMSNorm scale from its staged tile sums (the norm kernel's formula), before the
  // reduction's buffer is reused.
  __shared__ float row_scale[MT * 8];
  if (ep.row_sumsq) {
    cp_async_wait<0>();
    __syncthreads();
    const int tiles = K / 32;
    const float* staged = &partial[0][0][0];
    for (int m = warp; m < M; m += warps) {
      float sum = 0.f;
      for (int i = lane; i < tiles; i += 32) sum += staged[m * tiles + i];
      sum = warp_sum(sum);
      if (lane == 0) row_scale[m] = rsqrtf(sum / K + ep.row_eps);
    }
    __syncthreads();
  }

  // C fragment: i = 0, 1 -> A row g (column 4g + 2j), rows m = 2t, 2t + 1; i = 2, 3 -> A row g + 8
  // (column 4g + 2j + 1). Sum the warps' K slices through shared memory.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) partial[warp][mt * 8 + 2 * t + (i & 1)][4 * g + 2 * j + (i >> 1)] = acc[mt][j][i];
  __syncthreads();
  EXLSP_TRACE_MARK(1, K, N, 3);
  const int splits = gridDim.y;
  if (splits > 1) {
    // Publish this block's sums; the last block of the tile finishes it.
    for (int idx = threadIdx.x; idx < M * 32; idx += blockDim.x) {
      const int m = idx / 32, cl = idx % 32;
      float y = 0.f;
      for (int w = 0; w < warps; ++w) y += partial[w][m][cl];
      partials[((size_t)blockIdx.y * M + m) * N + blockIdx.x * 32 + cl] = y;
    }
    if (!count_in_last(&counters[blockIdx.x], splits)) {
      EXLSP_TRACE_MARK(1, K, N, 4);
      return;
    }
  }
  // y of row m, local column cl (< 16: tile_base + cl, else tile_base + pair + cl - 16), bias added.
  auto column = [&](int m, int cl) {
    float y = 0.f;
    if (splits > 1) {
      const size_t slot = (size_t)m * N + blockIdx.x * 32 + cl;  // partials are indexed by block
      for (int s = 0; s < splits; ++s) y += __ldcg(&partials[s * (size_t)M * N + slot]);  // L2: other blocks' writes
    } else {
      for (int w = 0; w < warps; ++w) y += partial[w][m][cl];
    }
    if (ep.row_sumsq) y *= row_scale[m];
    const int n = tile_base + (cl < 16 ? cl : pair + cl - 16);
    if (bias) y += to_float(bias[n]);
    return y;
  };
  if constexpr (!kPaired) {
    // One loop for the plain store and the RMSNorm's part (add_norm), so column()'s code is there once.
    const T* residual = static_cast<const T*>(ep.residual);
    const T* norm_weight = static_cast<const T*>(ep.norm_weight);
    for (int idx = threadIdx.x; idx < M * 32; idx += blockDim.x) {
      const int m = idx / 32, n = tile_base + idx % 32;  // pair 16: the block's 32 columns in a row
      const size_t at = (size_t)m * N;
      // every load before column()'s, so they share its round trip (the stores below may alias them
      // as far as the compiler knows)
      const float res = residual ? to_float(residual[at + n]) : 0.f;
      const float weight = add_norm ? to_float(__ldg(norm_weight + n)) : 0.f;
      const int dest = add_norm && ep.norm_index ? __ldg(ep.norm_index + n) : n;
      float y = column(m, idx % 32);
      if (!add_norm) {
        if (residual) y += res;
        out[at + n] = from_float<T>(y);
        continue;
      }
      // h as rms_norm sees it: the GEMV's output and the residual add each rounded to T. A warp holds
      // one row's 32 columns (blockDim is whole warps), so the tile's sum of squares is a warp sum.
      const float h = to_float(from_float<T>(to_float(from_float<T>(y)) + res));
      static_cast<T*>(ep.residual_out)[at + n] = from_float<T>(h);
      out[at + dest] = from_float<T>(h * weight);
      const float sumsq = warp_sum(h * h);
      if (idx % 32 == 0) ep.sumsq_tiles[(size_t)m * (N / 32) + blockIdx.x] = sumsq;
    }
  } else {
    // Pairs: what the unfused GEMV would have stored (rounded to T), then the element-wise kernel's math.
    for (int idx = threadIdx.x; idx < M * 16; idx += blockDim.x) {
      const int m = idx / 16, i = idx % 16;
      const int n = tile_base + i;  // its partner is n + pair
      const float a = to_float(from_float<T>(column(m, i))), b = to_float(from_float<T>(column(m, i + 16)));
      if (ep.kind == GemvEpilogueKind::kSiluMul) {
        out[(size_t)m * pair + n] = from_float<T>(silu_mul(a, b));
      } else {
        store_rotary_kv(ep.rotary, m, n, a, b, out);
      }
    }
  }
  if (splits > 1 && threadIdx.x == 0) counters[blockIdx.x] = 0;  // ready for the next call
  EXLSP_TRACE_MARK(1, K, N, 5);
}

}  // namespace
}  // namespace exlsp
