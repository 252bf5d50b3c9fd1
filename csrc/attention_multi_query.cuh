// One decode-attention partition for several one-token sequences that share its K/V (the new tokens
// of one prompt: a short prefill run as one-token sequences), on the tensor cores.
//
// The block loads the partition's K and V once, 64 tokens per stage, into shared memory (cp.async,
// two stages), and computes every member's G query heads against them: rows r = member * G + head,
// 16 rows per mma tile (m16n8k16, fp32 accumulation). Row r sees token t when
// window_lo(r) <= t < seq_len(r) (causal for consecutive lengths, sliding window per row).
// Warps: MT tiles of 16 rows x NS token splits (NS = 8 / MT); a warp takes every NS-th slice of 16
// tokens with an online softmax in registers, then the NS warps of a tile merge through shared
// memory and write the same per-partition partials as the per-sequence path (unnormalised output,
// max, exp-sum) for the merge kernel.
//
// Shared memory (dynamic): [stage][K|V][kChunk][D + 8] of T (rows padded by 16 bytes so ldmatrix
// hits distinct banks); after the last chunk it is reused as the warps' float partial outputs.
// Requires sm_80 (cp.async, ldmatrix, bf16 mma).
#pragma once

#include <cfloat>
#include <climits>
#include <cstdint>

#include "cp_async.cuh"
#include "dtype_utils.cuh"
#include "kernels.h"

namespace exlsp {
namespace mq {

constexpr int kChunk = 64;  // tokens per pipeline stage
constexpr int kStages = 2;
constexpr int kMaxMembers = 16;  // sequences one block serves (queries_per_block cap)
constexpr int kMaxWarps = 8;

template <typename T, int D>
__host__ __device__ constexpr size_t kv_smem_bytes() {
  return sizeof(T) * kStages * 2 * kChunk * (D + 8);
}

using ::exlsp::cp_async16;  // cp_async.cuh
using ::exlsp::cp_async_commit;
using ::exlsp::cp_async_wait;

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// c (16x8 f32) += a (16x16) * b (16x8), row.col.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// Members are sequences first_seq .. first_seq + num_members - 1 (all with seq_len > 0 and the same
// blocks over this partition); every thread of the block calls this (it synchronises).
template <typename T, int D, int G>
__device__ void attend_members(const DecodeAttentionArgs& a, int first_seq, int num_members, int kv_head, int part,
                               unsigned char* smem) {
  static_assert(D % 32 == 0, "head_dim must be a multiple of 32");
  static_assert(kMaxWarps * 16 * D * sizeof(float) <= kv_smem_bytes<T, D>(), "partials must fit the K/V stages");
  constexpr int kRow = D + 8;  // padded smem row, elements
  constexpr int kKSteps = D / 16;
  __shared__ float part_m[kMaxWarps][16], part_l[kMaxWarps][16];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int P = a.partition_size, start = part * P;

  // The partition's token range: up to the longest member, from the lowest window start.
  int max_len = 0, ref = first_seq, min_lo = INT_MAX;
  for (int i = 0; i < num_members; ++i) {
    const int len = a.seq_lens[first_seq + i];
    if (len > max_len) max_len = len, ref = first_seq + i;
    min_lo = min(min_lo, a.sliding_window > 0 ? max(0, len - a.sliding_window) : 0);
  }
  const int end = min(start + P, max_len);
  const int t_lo = max(start, min_lo);

  const int num_rows = num_members * G;
  const int MT = (num_rows + 15) / 16;  // row tiles
  const int NS = max(1, kMaxWarps / MT);  // token splits per tile
  const bool active = warp < MT * NS;
  const int mt = warp % MT, ns = warp / MT;

  // This lane's two rows (lane / 4 and lane / 4 + 8 of the tile): member, head, visible range.
  int row_len[2], row_lo[2];
  bool row_ok[2];
  size_t row_part[2];  // tmp_max index of the row's (sequence, head, partition)
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = mt * 16 + lane / 4 + h * 8;
    row_ok[h] = active && r < num_rows;
    const int member = row_ok[h] ? r / G : 0, head = r % G;
    row_len[h] = row_ok[h] ? a.seq_lens[first_seq + member] : 0;
    row_lo[h] = a.sliding_window > 0 ? max(0, row_len[h] - a.sliding_window) : 0;
    row_part[h] = ((size_t)(first_seq + member) * a.num_q_heads + (size_t)kv_head * G + head) * a.num_partitions + part;
  }

  if (end <= t_lo) {  // no member sees a token of this partition
    if (row_ok[0] && lane % 4 == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (!row_ok[h]) continue;
        a.tmp_max[row_part[h]] = -FLT_MAX;
        a.tmp_sum[row_part[h]] = 0.f;
      }
    }
    return;  // uniform: end and t_lo are the same for every thread
  }

  const T* cache = static_cast<const T*>(a.kv_cache);
  const size_t v_offset = (size_t)a.num_blocks * a.block_size * a.num_kv_heads * D;
  const int32_t* block_table = a.block_tables + (size_t)ref * a.max_blocks_per_seq;
  T* kv_smem = reinterpret_cast<T*>(smem);
  const int num_chunks = (end - t_lo + kChunk - 1) / kChunk;

  auto issue_chunk = [&](int c) {
    T* stage = kv_smem + (size_t)(c % kStages) * 2 * kChunk * kRow;
    const int t0 = t_lo + c * kChunk;
    constexpr int kVecs = D / 8;
    for (int i = tid; i < 2 * kChunk * kVecs; i += blockDim.x) {
      const int kv = i / (kChunk * kVecs), rem = i % (kChunk * kVecs);
      const int r = rem / kVecs, v = rem % kVecs;
      const int t = t0 + r;
      const bool valid = t < end;  // past the end: zeros (an unwritten slot may hold NaN)
      const T* src = cache;
      if (valid) {
        const int blk = block_table[t / a.block_size];
        src = cache + kv * v_offset + (((size_t)blk * a.block_size + t % a.block_size) * a.num_kv_heads + kv_head) * D +
              v * 8;
      }
      cp_async16(stage + (size_t)kv * kChunk * kRow + r * kRow + v * 8, src, valid);
    }
    cp_async_commit();
  };

  // Q fragments (A operand, rows of this tile), straight from global memory.
  uint32_t qa[kKSteps][4];
  {
    const T* qbase = static_cast<const T*>(a.q);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = mt * 16 + lane / 4 + h * 8;
      const T* qrow = qbase + (size_t)(first_seq + (row_ok[h] ? r / G : 0)) * a.q_stride_token +
                      ((size_t)kv_head * G + r % G) * D + (lane % 4) * 2;
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        qa[ks][h] = row_ok[h] ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16) : 0u;
        qa[ks][h + 2] = row_ok[h] ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16 + 8) : 0u;
      }
    }
  }
  const bool tile_live = __any_sync(0xffffffffu, row_ok[0] || row_ok[1]);  // whole warp: uniform

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m_run[2] = {-FLT_MAX, -FLT_MAX}, l_run[2] = {0.f, 0.f};

  issue_chunk(0);
  for (int c = 0; c < num_chunks; ++c) {
    if (c + 1 < num_chunks) {
      issue_chunk(c + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* ks_base = kv_smem + (size_t)(c % kStages) * 2 * kChunk * kRow;
    const T* vs_base = ks_base + kChunk * kRow;
    if (active && tile_live) {
#pragma unroll 1
      for (int j = 0; j < kChunk / 16; ++j) {
        const int slice = c * (kChunk / 16) + j;
        const int s0 = t_lo + slice * 16;
        if (slice % NS != ns || s0 >= end) continue;  // warp-uniform
        // S (16 rows x 16 tokens) = Q . K^T
        float s[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
          const T* krow = ks_base + (j * 16 + nt * 8 + lane % 8) * kRow + (lane / 8) * 8;
#pragma unroll
          for (int kb = 0; kb < D / 32; ++kb) {
            uint32_t b[4];
            ldmatrix_x4(b, krow + kb * 32);
            mma16816<T>(s[nt], qa[2 * kb], b[0], b[1]);
            mma16816<T>(s[nt], qa[2 * kb + 1], b[2], b[3]);
          }
        }
        // Scale, mask, online softmax per row (the 4 lanes of a quad share a row).
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float mx = -FLT_MAX;
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int t = s0 + nt * 8 + (lane % 4) * 2 + e;
              const bool see = t < end && t < row_len[h] && t >= row_lo[h];
              float& v = s[nt][h * 2 + e];
              v = see ? v * a.scale : -FLT_MAX;
              mx = fmaxf(mx, v);
            }
          }
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float m_new = fmaxf(m_run[h], mx);
          const float m_use = m_new == -FLT_MAX ? 0.f : m_new;  // nothing seen yet: every p is 0
          const float alpha = __expf(m_run[h] - m_use);
          float sum = 0.f;
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              float& v = s[nt][h * 2 + e];
              v = v == -FLT_MAX ? 0.f : __expf(v - m_use);
              sum += v;
            }
          }
          l_run[h] = l_run[h] * alpha + sum;
          m_run[h] = m_new;
#pragma unroll
          for (int n = 0; n < D / 8; ++n) {
            o[n][h * 2] *= alpha;
            o[n][h * 2 + 1] *= alpha;
          }
        }
        // O += P . V, P from the S accumulators (C layout of two n-tiles = A layout of one k-step).
        const uint32_t pa[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]), pack2<T>(s[1][0], s[1][1]),
                                pack2<T>(s[1][2], s[1][3])};
        const T* vrow = vs_base + (j * 16 + lane % 8 + ((lane / 8) & 1) * 8) * kRow + (lane / 16) * 8;
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, vrow + dn * 16);
          mma16816<T>(o[2 * dn], pa, b[0], b[1]);
          mma16816<T>(o[2 * dn + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the stage is overwritten by chunk c + 2
  }

  // Row sums over the quad, then the NS warps of a tile merge: warps ns > 0 hand over through
  // shared memory (the K/V stages are free now), warp ns == 0 combines and writes.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 2);
  }
  float* partial_o = reinterpret_cast<float*>(smem);  // [warp][16][D]
  const int col = (lane % 4) * 2;
  if (active && ns > 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = lane / 4 + h * 8;
      if (lane % 4 == 0) part_m[warp][r] = m_run[h], part_l[warp][r] = l_run[h];
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<float2*>(&partial_o[(warp * 16 + r) * D + n * 8 + col]) = make_float2(o[n][h * 2], o[n][h * 2 + 1]);
    }
  }
  __syncthreads();
  if (!active || ns > 0) return;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = lane / 4 + h * 8;
    float m_tot = m_run[h];
    for (int k = 1; k < NS; ++k) m_tot = fmaxf(m_tot, part_m[mt + k * MT][r]);
    const float m_use = m_tot == -FLT_MAX ? 0.f : m_tot;
    const float w0 = __expf(m_run[h] - m_use);
    float l_tot = l_run[h] * w0;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][h * 2] *= w0, o[n][h * 2 + 1] *= w0;
    for (int k = 1; k < NS; ++k) {
      const int w = mt + k * MT;
      const float wk = __expf(part_m[w][r] - m_use);
      l_tot += part_l[w][r] * wk;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const float2 p = *reinterpret_cast<const float2*>(&partial_o[(w * 16 + r) * D + n * 8 + col]);
        o[n][h * 2] += wk * p.x;
        o[n][h * 2 + 1] += wk * p.y;
      }
    }
    if (!row_ok[h]) continue;
    const bool any = l_tot > 0.f;
    if (lane % 4 == 0) {
      a.tmp_max[row_part[h]] = any ? m_tot : -FLT_MAX;
      a.tmp_sum[row_part[h]] = any ? l_tot : 0.f;
    }
    if (any) {
      float* out = a.tmp_out + row_part[h] * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) *reinterpret_cast<float2*>(&out[n * 8 + col]) = make_float2(o[n][h * 2], o[n][h * 2 + 1]);
    }
  }
}

}  // namespace mq
}  // namespace exlsp
