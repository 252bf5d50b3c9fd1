// The per-sequence part of paged decode attention (attention_decode.cu): one sequence's new token
// against one partition of its context, with the K/V staging it reads through. Used by the
// per-sequence kernel and by the multi-query kernel for a sequence that shares no blocks.
#pragma once

#include <cfloat>
#include <cstdint>

#include "attention_merge.cuh"
#include "attention_multi_query.cuh"
#include "dtype_utils.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "trace.cuh"

namespace exlsp {
namespace one_sequence {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kStage = 128;  // tokens of K and of V staged in shared memory at a time

// Shared memory of the per-sequence path: scores (G, partition_size) floats padded to 16 bytes, then
// the K and V stages (kStage rows of stage_row<D>() T each); partition_size is the largest partition
// of the launch (max_partition_size where partitions grow). At most 16 + 68 KB (G = 8, D = 128,
// partitions of 512): under the 99 KB a block may have on sm_86 / sm_89.
template <int G>
__host__ __device__ constexpr int scores_floats(int partition_size) {
  return (G * partition_size + 3) / 4 * 4;
}
// Stage rows are padded by 16 bytes, so that the 8 rows an ldmatrix reads hit distinct banks.
template <int D>
__host__ __device__ constexpr int stage_row() {
  return D + 8;
}
template <typename T, int D, int G>
__host__ __device__ constexpr size_t one_sequence_smem_bytes(int partition_size) {
  return sizeof(float) * scores_floats<G>(partition_size) + sizeof(T) * 2 * kStage * stage_row<D>();
}

// cp.async of rows [row_lo, row_hi) of a stage (kStage tokens' head vectors, K or V, from token t0)
// into stage[kStage][stage_row<D>()], except rows [skip_lo, skip_hi); rows past `count` are zero-filled. The
// whole block issues; the caller commits and waits.
template <typename T, int D>
__device__ __forceinline__ void stage_tokens(T* stage, const T* cache, const int32_t* block_table, int block_size,
                                             int num_kv_heads, int kv_head, int t0, int count, int row_lo = 0,
                                             int row_hi = kStage, int skip_lo = 0, int skip_hi = 0) {
  constexpr int kVecs = D / 8;
  constexpr int kRowStep = kThreads / kVecs;  // a thread's rows: r0, r0 + kRowStep, ...
  static_assert(kStage % kRowStep == 0, "whole row steps per stage");
  const int v = threadIdx.x % kVecs, r0 = threadIdx.x / kVecs;
  // The cache block and slot of this thread's rows, stepped without a division per row (a division
  // by the runtime block size per copy was the largest part of the kernel's instructions).
  const int step_blocks = kRowStep / block_size, step_slots = kRowStep % block_size;
  int blk = (t0 + r0) / block_size, slot = (t0 + r0) % block_size;
#pragma unroll 4
  for (int r = r0; r < kStage; r += kRowStep) {
    if (r >= row_lo && r < row_hi && !(r >= skip_lo && r < skip_hi)) {
      const bool valid = r < count;
      const T* src = cache;  // a readable address for the zero-fill
      if (valid)
        src = cache + (((size_t)block_table[blk] * block_size + slot) * num_kv_heads + kv_head) * D + v * 8;
      mq::cp_async16(stage + r * stage_row<D>() + v * 8, src, valid);
    }
    blk += step_blocks;
    slot += step_slots;
    if (slot >= block_size) {
      slot -= block_size;
      ++blk;
    }
  }
}

// One sequence's new token against partition `part` of its context, P tokens each (merge::
// partition_size_of: the merge must split the context the same way), on the tensor cores (m16n8k16,
// fp32 accumulation): q is the A operand, row g = head g of the group (rows g + 8 stay empty, G <= 8),
// so one K/V read serves every head of the group; K and V are the B operands, read from the stages
// with ldmatrix. (The same phases on the CUDA cores, with 16-lane shuffle reductions per token and
// per head, took 3.1M warp instructions per layer at 2k context: decode 2k 381 vs 392 tok/s, 8k 313
// vs 331 on an H100, bench/NOTES.md.)
// The partition's K and V are staged through shared memory kStage tokens at a time with cp.async;
// for the usual partition of 128 tokens every load of the block is issued at once, so the block
// waits for memory once. (It used to load K, then V, four tokens per thread at a time: four
// dependent round trips per block, 10.6 us per layer at 2k context on an H100 for 8 MB of K/V.)
//
// wait_predecessor: the block has not yet waited for the kernel before it (PDL, launch.cuh). The
// step's own inputs (sequence lengths, block tables) and the K/V that earlier steps cached are no
// kernel's output, so their loads are issued first; q and the K/V of the step's new tokens, which
// the previous kernel writes, are read after the wait. A step adds at most num_seqs tokens to any
// sequence's context (one per row; a short prompt's tokens are consecutive rows), and they are its
// last ones, so rows from seq_len - num_seqs on wait.
//
// write_out: the partition is the sequence's only one, so its result is final: the heads' outputs
// are written normalised, as the merge would write them (weight 1, 1 / exp-sum: the same bits), and
// no partial result, no count and no merge follow (~2 us of dependent L2 round trips per layer).
template <typename T, int D, int G>
__device__ void attend_one_sequence(const DecodeAttentionArgs& a, int seq, int kv_head, int part, int P,
                                    float* scores, T* stage, bool wait_predecessor = false,
                                    bool write_out = false) {
  __shared__ float inv_sum[G];  // write_out: 1 / exp-sum per head
  constexpr int ST = kStage;
  constexpr int kRow = stage_row<D>();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq_len = a.seq_lens[seq];
  const int start = part * P;
  const int end = min(seq_len, start + P);
  const int window_lo = a.sliding_window > 0 ? max(0, seq_len - a.sliding_window) : 0;
  const size_t part_index = ((size_t)seq * a.num_q_heads + (size_t)kv_head * G) * a.num_partitions + part;
  if (start >= end || end <= window_lo) {
    if (wait_predecessor) {
      pdl_wait();  // before the first write
      pdl_trigger();
    }
    if (threadIdx.x < G) {
      a.tmp_max[part_index + (size_t)threadIdx.x * a.num_partitions] = -FLT_MAX;
      a.tmp_sum[part_index + (size_t)threadIdx.x * a.num_partitions] = 0.f;
    }
    return;  // uniform across the block
  }
  const int n = end - start;

  const T* k_cache = static_cast<const T*>(a.kv_cache);
  const T* v_cache = k_cache + (size_t)a.num_blocks * a.block_size * a.num_kv_heads * D;
  const int32_t* block_table = a.block_tables + (size_t)seq * a.max_blocks_per_seq;
  T* k_stage = stage;
  T* v_stage = stage + ST * kRow;
  auto stage_k = [&](int t0) {
    stage_tokens<T, D>(k_stage, k_cache, block_table, a.block_size, a.num_kv_heads, kv_head, t0, min(ST, end - t0));
  };
  auto stage_v = [&](int t0) {
    stage_tokens<T, D>(v_stage, v_cache, block_table, a.block_size, a.num_kv_heads, kv_head, t0, min(ST, end - t0));
  };
  // V of the first stage comes with K: one round trip when n <= ST.
  const int first_count = min(ST, end - start);
  const int defer = wait_predecessor ? max(0, seq_len - a.num_seqs - start) : ST;  // first row that waits
  stage_tokens<T, D>(k_stage, k_cache, block_table, a.block_size, a.num_kv_heads, kv_head, start, first_count, 0,
                     ST, defer, first_count);
  stage_tokens<T, D>(v_stage, v_cache, block_table, a.block_size, a.num_kv_heads, kv_head, start, first_count, 0,
                     ST, defer, first_count);
  if (wait_predecessor) EXLSP_TRACE_MARK(2, 0, 0, 1);
  if (wait_predecessor) {
    pdl_wait();
    EXLSP_TRACE_MARK(2, 0, 0, 2);
    // The next kernel (the o GEMV) may launch now and request its weights while this one computes
    // and merges: its blocks only wait for this grid to complete before they read its output.
    if (a.early_trigger) pdl_trigger();
    if (defer < first_count) {
      stage_tokens<T, D>(k_stage, k_cache, block_table, a.block_size, a.num_kv_heads, kv_head, start, first_count,
                         defer, first_count);
      stage_tokens<T, D>(v_stage, v_cache, block_table, a.block_size, a.num_kv_heads, kv_head, start, first_count,
                         defer, first_count);
    }
  }
  mq::cp_async_commit();

  // Phase 2: per head, max and exp-sum over the partition; scores become unnormalised weights.
  auto softmax_weights = [&]() {
    for (int g = warp; g < G; g += kWarps) {
      float m = -FLT_MAX;
      for (int i = lane; i < n; i += 32) m = fmaxf(m, scores[g * P + i]);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
      float l = 0.f;
      for (int i = lane; i < n; i += 32) {
        const float s = scores[g * P + i];
        const float p = s == -FLT_MAX ? 0.f : __expf(s - m);
        scores[g * P + i] = p;
        l += p;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
      if (lane == 0 && write_out) {
        inv_sum[g] = l > 0.f ? 1.f / l : 0.f;
      } else if (lane == 0) {
        a.tmp_max[part_index + (size_t)g * a.num_partitions] = m;
        a.tmp_sum[part_index + (size_t)g * a.num_partitions] = l;
      }
    }
    __syncthreads();
  };

  // q of head g of the group as the A operand (this lane's two dims per 8; read after the wait).
  const int g = lane / 4, t4 = lane % 4;
  uint32_t qa[D / 16][4];
  {
    const T* qrow = static_cast<const T*>(a.q) + (size_t)seq * a.q_stride_token +
                    ((size_t)kv_head * G + (g < G ? g : 0)) * D + t4 * 2;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      qa[ks][0] = g < G ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16) : 0u;
      qa[ks][2] = g < G ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16 + 8) : 0u;
      qa[ks][1] = qa[ks][3] = 0u;
    }
  }
  // Phase 1: warp w scores the 16-token slices w, w + kWarps, ... of each stage.
  for (int t0 = start; t0 < end; t0 += ST) {
    if (t0 != start) {
      stage_k(t0);
      mq::cp_async_commit();
    }
    mq::cp_async_wait<0>();
    __syncthreads();
    if (wait_predecessor && t0 == start) EXLSP_TRACE_MARK(2, 0, 0, 3);
    for (int slice = warp; slice < ST / 16 && t0 + slice * 16 < end; slice += kWarps) {  // warp-uniform
      float sc[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
        const T* krow = k_stage + (slice * 16 + nt * 8 + lane % 8) * kRow + (lane / 8) * 8;
#pragma unroll
        for (int kb = 0; kb < D / 32; ++kb) {
          uint32_t b[4];
          mq::ldmatrix_x4(b, krow + kb * 32);
          mq::mma16816<T>(sc[nt], qa[2 * kb], b[0], b[1]);
          mq::mma16816<T>(sc[nt], qa[2 * kb + 1], b[2], b[3]);
        }
      }
      if (g < G) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int t = t0 + slice * 16 + nt * 8 + t4 * 2 + e;
            if (t < end) scores[g * P + (t - start)] = t < window_lo ? -FLT_MAX : sc[nt][e] * a.scale;
          }
        }
      }
    }
    __syncthreads();  // scores complete; the K stage may be refilled
  }
  if (wait_predecessor) EXLSP_TRACE_MARK(2, 0, 0, 4);
  softmax_weights();
  if (wait_predecessor) EXLSP_TRACE_MARK(2, 0, 0, 5);
  // Phase 3: warp w owns dims [16 w, 16 w + 16) over every token: out = P (heads x tokens) . V.
  float o[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  const int d0 = warp * 16;
  for (int t0 = start; t0 < end; t0 += ST) {
    if (t0 != start) {
      __syncthreads();  // every warp is done with the previous V stage
      stage_v(t0);
      mq::cp_async_commit();
      mq::cp_async_wait<0>();
      __syncthreads();
    }
    if (d0 >= D) continue;  // D = 64: warps 4-7 have no dims
    const int rows = min(ST, end - t0);
    for (int kk = 0; kk * 16 < rows; ++kk) {
      // A = this lane's weights p[g][i], i = tokens 2 t4, +1, +8, +9 of the slice (0 past n).
      const int i0 = t0 - start + kk * 16 + t4 * 2;
      float p[4] = {0.f, 0.f, 0.f, 0.f};
      if (g < G) {
        const float2 lo = *reinterpret_cast<const float2*>(&scores[g * P + i0]);
        const float2 hi = *reinterpret_cast<const float2*>(&scores[g * P + i0 + 8]);
        p[0] = i0 < n ? lo.x : 0.f;
        p[1] = i0 + 1 < n ? lo.y : 0.f;
        p[2] = i0 + 8 < n ? hi.x : 0.f;
        p[3] = i0 + 9 < n ? hi.y : 0.f;
      }
      const uint32_t pa[4] = {mq::pack2<T>(p[0], p[1]), 0u, mq::pack2<T>(p[2], p[3]), 0u};
      uint32_t b[4];
      mq::ldmatrix_x4_trans(b, v_stage + (kk * 16 + lane % 8 + ((lane / 8) & 1) * 8) * kRow + (lane / 16) * 8 + d0);
      mq::mma16816<T>(o[0], pa, b[0], b[1]);
      mq::mma16816<T>(o[1], pa, b[2], b[3]);
    }
  }
  if (g < G && d0 < D && write_out) {
    T* out = static_cast<T*>(a.out);
    const int e = (kv_head * G + g) * D + d0 + t4 * 2;  // this lane's first output element
    const float inv = inv_sum[g];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      out[merge::out_offset(a, seq, e + nt * 8)] = from_float<T>(o[nt][0] * inv);
      out[merge::out_offset(a, seq, e + nt * 8 + 1)] = from_float<T>(o[nt][1] * inv);
    }
  } else if (g < G && d0 < D) {
    float* out = a.tmp_out + (part_index + (size_t)g * a.num_partitions) * D + d0 + t4 * 2;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) *reinterpret_cast<float2*>(out + nt * 8) = make_float2(o[nt][0], o[nt][1]);
  }
  if (wait_predecessor) EXLSP_TRACE_MARK(2, 0, 0, 6);
}

}  // namespace one_sequence
}  // namespace exlsp
