// Merging a sequence's decode-attention partitions (flash-decoding phase 2): the partial results of
// the partitions (unnormalised output, running max, exp-sum; kernels.h DecodeAttentionArgs) become
// the heads' outputs. Two ways, with the same arithmetic in the same order, so the same bits:
//   - merge_in_last_block: by the last block of the per-sequence kernel to finish a (sequence, KV
//     head), counted in a.counters; no kernel boundary;
//   - decode_attention_reduce_kernel: a kernel of its own, one block per (query head, sequence), for
//     the multi-query path and callers without counters.
#pragma once

#include <cfloat>
#include <cstdint>

#include "dtype_utils.cuh"
#include "grid_count.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace exlsp {
namespace merge {

constexpr int kMaxPartitions = 1024;

// Tokens per partition of a sequence of seq_len tokens: a.partition_size, doubled up to
// a.max_partition_size (0: never) while the sequence would need more than kGrowAbovePartitions
// partitions. Small partitions spread a short sequence over many SMs; a long one has blocks enough,
// and larger partitions give it fewer partitions per block and fewer partials to merge (H200:
// partitions of 256 tokens +2.4% at 8k context, -7.5% at 2k, bench/NOTES.md 82e). Phase 1 and both
// merges ask this from the same seq_len (a step input, not the graph's capture length), so they
// agree on the split.
constexpr int kGrowAbovePartitions = 32;
__host__ __device__ __forceinline__ int partition_size_of(const DecodeAttentionArgs& a, int seq_len) {
  int size = a.partition_size;
  while (size * 2 <= a.max_partition_size && seq_len > kGrowAbovePartitions * size) size *= 2;
  return size;
}
// The largest size partition_size_of gives: the partition the per-sequence kernel's shared memory
// holds scores for.
__host__ __device__ __forceinline__ int largest_partition_size(const DecodeAttentionArgs& a) {
  return a.max_partition_size > a.partition_size ? a.max_partition_size : a.partition_size;
}

// Where element e = h * D + d of sequence seq's output goes (a.out_index: an act-order order).
__device__ __forceinline__ size_t out_offset(const DecodeAttentionArgs& a, int seq, int e) {
  return (size_t)seq * a.num_q_heads * a.head_dim + (a.out_index ? a.out_index[e] : e);
}

// The merge of one query head's partitions, the same arithmetic in both merges (so they give the
// same bits). merge_weights, one warp, shared: w_p = exp(max_p - max) for the partitions that saw a
// token (0 for the others) into weights[p], and 1 / sum_p w_p l_p. merge_dim: dim d's
// sum_p w_p out_p[d] in partition order, skipping empty partitions (their outputs are unwritten);
// the in-kernel merge repeats this sum with its loads issued earlier (merge_in_last_block). Loads
// go to L2 (__ldcg): in the in-kernel merge other blocks of the same grid wrote them.
__device__ __forceinline__ float merge_weights(const DecodeAttentionArgs& a, size_t base, int used, int lane,
                                               float* weights) {
  // Each lane's first kCached partitions are read once, all loads issued together: the merge sits on
  // the step's critical path, and every further dependent L2 round trip is ~0.5 us per layer.
  constexpr int kCached = 8;
  float l_of[kCached], m_of[kCached];
#pragma unroll
  for (int i = 0; i < kCached; ++i) {
    const int p = lane + 32 * i;
    l_of[i] = p < used ? __ldcg(&a.tmp_sum[base + p]) : 0.f;
    m_of[i] = p < used ? __ldcg(&a.tmp_max[base + p]) : -FLT_MAX;
  }
  float m = -FLT_MAX;
#pragma unroll
  for (int i = 0; i < kCached; ++i)
    if (l_of[i] > 0.f) m = fmaxf(m, m_of[i]);
  for (int p = lane + 32 * kCached; p < used; p += 32)
    if (__ldcg(&a.tmp_sum[base + p]) > 0.f) m = fmaxf(m, __ldcg(&a.tmp_max[base + p]));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  float den = 0.f;
  auto add = [&](int p, float l, float mx) {
    const float w = l > 0.f ? __expf(mx - m) : 0.f;
    weights[p] = w;
    den += w * l;
  };
#pragma unroll
  for (int i = 0; i < kCached; ++i)
    if (lane + 32 * i < used) add(lane + 32 * i, l_of[i], m_of[i]);
  for (int p = lane + 32 * kCached; p < used; p += 32) add(p, __ldcg(&a.tmp_sum[base + p]), __ldcg(&a.tmp_max[base + p]));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) den += __shfl_xor_sync(0xffffffffu, den, off);
  return den > 0.f ? 1.f / den : 0.f;
}
__device__ __forceinline__ float merge_dim(const DecodeAttentionArgs& a, size_t base, int used, const float* weights,
                                           int d, int D) {
  // kChunk partitions' loads in flight at once (unconditional, so none waits on a branch), then
  // their sum in partition order.
  constexpr int kChunk = 16;
  float num = 0.f;
  for (int p0 = 0; p0 < used; p0 += kChunk) {
    float v[kChunk];
#pragma unroll
    for (int j = 0; j < kChunk; ++j) v[j] = p0 + j < used ? __ldcg(&a.tmp_out[(base + p0 + j) * D + d]) : 0.f;
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      const float w = p0 + j < used ? weights[p0 + j] : 0.f;
      if (w > 0.f) num += w * v[j];
    }
  }
  return num;
}

// The merge of one (sequence, KV head)'s partitions into the G heads' outputs, by the last of its
// blocks to finish (a.counters), with the merge kernel's merge_weights and merge_dim's arithmetic:
// the same bits. `weights`: G x used floats of free shared memory.
template <typename T, int D, int G, int kThreads>
__device__ void merge_in_last_block(const DecodeAttentionArgs& a, int seq, int kv_head, int seq_len, float* weights) {
  __shared__ float inv_den[G];
  const int P = partition_size_of(a, seq_len);
  const int used = min(a.num_partitions, (seq_len + P - 1) / P);
  T* out = static_cast<T*>(a.out);
  const int e0 = kv_head * G * D;  // the group's first output element
  if (used == 0) {  // a padding row (length 0): zeros, as the separate merge writes
    if (blockIdx.z == 0)
      for (int i = threadIdx.x; i < G * D; i += kThreads) out[out_offset(a, seq, e0 + i)] = from_float<T>(0.f);
    return;
  }
  if ((int)blockIdx.z >= used) return;  // this block had no partition and is not counted
  int* counter = a.counters + (size_t)seq * a.num_kv_heads + kv_head;
  if (!count_in_last(counter, min((int)gridDim.z, used))) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t base0 = ((size_t)seq * a.num_q_heads + (size_t)kv_head * G) * a.num_partitions;
  // This thread's outputs: pairs of dims, element e = 2 * (threadIdx.x + k * kThreads) of the group
  // and e + 1. Their partials come kChunk partitions at a time, 8-byte loads; the first chunk is
  // requested before the weights are formed, so that up to kChunk partitions (2k context) cost one
  // L2 round trip with the weights' loads instead of three after them (merge_dim's order: per dim,
  // the same sum in partition order as the merge kernel, so the same bits).
  constexpr int kPairs = (G * D / 2 + kThreads - 1) / kThreads;
  constexpr int kChunk = 32 / kPairs < 16 ? 32 / kPairs : 16;
  float2 v[kPairs][kChunk];
  auto load_chunk = [&](int p0) {
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      const int e = 2 * (threadIdx.x + k * kThreads);
      const size_t base = base0 + (size_t)(e / D) * a.num_partitions;
#pragma unroll
      for (int j = 0; j < kChunk; ++j)
        v[k][j] = e < G * D && p0 + j < used
                      ? __ldcg(reinterpret_cast<const float2*>(&a.tmp_out[(base + p0 + j) * D + e % D]))
                      : make_float2(0.f, 0.f);
    }
  };
  load_chunk(0);
  for (int g = warp; g < G; g += kThreads / 32) {
    const float inv = merge_weights(a, base0 + (size_t)g * a.num_partitions, used, lane, weights + g * used);
    if (lane == 0) inv_den[g] = inv;
  }
  __syncthreads();
  float2 num[kPairs];
#pragma unroll
  for (int k = 0; k < kPairs; ++k) num[k] = make_float2(0.f, 0.f);
  for (int p0 = 0; p0 < used; p0 += kChunk) {
    if (p0 != 0) load_chunk(p0);
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      const int e = 2 * (threadIdx.x + k * kThreads);
      const float* w_of = weights + (e / D) * used;
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        const float w = e < G * D && p0 + j < used ? w_of[p0 + j] : 0.f;
        if (w > 0.f) {
          num[k].x += w * v[k][j].x;
          num[k].y += w * v[k][j].y;
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kPairs; ++k) {
    const int e = 2 * (threadIdx.x + k * kThreads);
    if (e < G * D) {
      const float inv = inv_den[e / D];
      out[out_offset(a, seq, e0 + e)] = from_float<T>(num[k].x * inv);
      out[out_offset(a, seq, e0 + e + 1)] = from_float<T>(num[k].y * inv);
    }
  }
  if (threadIdx.x == 0) *counter = 0;  // ready for the next call
}

// Phase 2: one block per (query head, sequence), one thread per output dim. Warp 0 turns the
// partitions' (max, exp-sum) into merge weights in shared memory; then every dim sums its
// partitions with independent loads.
template <typename T>
__global__ void decode_attention_reduce_kernel(DecodeAttentionArgs a) {
  __shared__ float weight[kMaxPartitions];
  __shared__ float inv_den;
  pdl_wait();
  pdl_trigger();
  const int head = blockIdx.x, seq = blockIdx.y, d = threadIdx.x;
  const int D = a.head_dim;
  const int seq_len = a.seq_lens[seq];
  const int P = partition_size_of(a, seq_len);
  const int used = min(a.num_partitions, (seq_len + P - 1) / P);
  const size_t base = ((size_t)seq * a.num_q_heads + head) * a.num_partitions;
  if (threadIdx.x < 32) {
    const float inv = merge_weights(a, base, used, threadIdx.x, weight);
    if (threadIdx.x == 0) inv_den = inv;
  }
  __syncthreads();
  const float num = merge_dim(a, base, used, weight, d, D);
  static_cast<T*>(a.out)[out_offset(a, seq, head * D + d)] = from_float<T>(num * inv_den);
}

}  // namespace merge
}  // namespace exlsp
