// Paged decode attention, flash-decoding style: one new token per sequence attends to its whole
// context in the paged KV cache. The context is split into partitions of `partition_size` tokens so
// that even a single sequence spreads over many SMs; phase 2 merges the partitions' partial results.
// With max_partition_size the per-sequence path sizes a long sequence's partitions from its length,
// on the device (merge::partition_size_of), since a CUDA graph's launch is captured for the cache's
// longest length.
//
// GQA: a block owns one KV head and all G query heads of its group, so each K/V vector is read from
// memory once and used G times.
// Grid of phase 1: (num_kv_heads, num_seqs, blocks along the partitions), each block looping over
// partitions up to its sequence's length, so a CUDA graph can be captured for the longest context.
// A block stages a partition's K and V in shared memory, then on the tensor cores each warp scores
// 16-token slices (phase 1), the softmax weights are formed per head (phase 2), and each warp sums
// p . V for 16 output dims (phase 3). The partitions merge in attention_merge.cuh.
//
// Short prefills run as one-token sequences (engine/cuda_graph.py): with queries_per_block > 1 the
// multi-query kernel finds, on the device, consecutive sequences that share the partition's blocks
// and computes them together on the tensor cores (attention_multi_query.cuh), reading each K/V
// chunk once instead of once per new token; other sequences take the per-sequence path.
#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "attention_merge.cuh"
#include "attention_multi_query.cuh"
#include "attention_one_sequence.cuh"
#include "dtype_utils.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "trace.cuh"

namespace exlsp {
namespace {

using namespace one_sequence;  // attention_one_sequence.cuh: kThreads, kStage, stage_tokens, attend_one_sequence

// One block per (KV head, sequence, partition): the ordinary decode path. Two blocks per SM (96-128
// registers): held to three blocks per SM it spilled, and decode ran 3-6% slower (H100, 436 / 395 /
// 320 against 448 / 410 / 340 tok/s at ctx 32 / 2k / 8k, bench/NOTES.md 51). Without the bound ptxas
// aims G = 1-4 at D = 128 at three blocks itself (80 registers) and, since the partition size comes
// from the sequence's length, spills up to 92 bytes there (sm_90).
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads, 2) decode_attention_kernel(DecodeAttentionArgs a) {
  static_assert(sizeof(float) * G * merge::kMaxPartitions <= sizeof(T) * 2 * kStage * stage_row<D>(),
                "merge weights fit");
  extern __shared__ __align__(16) float scores[];  // one_sequence_smem_bytes: scores, then K/V stages
  T* stage = reinterpret_cast<T*>(scores + scores_floats<G>(merge::largest_partition_size(a)));
  EXLSP_TRACE_MARK(2, 0, 0, 0);
  const int seq = blockIdx.y, seq_len = a.seq_lens[seq];  // a step input, no kernel's output
  const int P = merge::partition_size_of(a, seq_len);     // the merge's split too
  // A sequence within one partition needs no merge: its block writes the outputs (with counters,
  // where the merge would be this kernel's; the separate merge kernel reads every partial result).
  const bool single = a.counters && seq_len > 0 && seq_len <= P;
  // Partitions blockIdx.z, + gridDim.z, ... up to the sequence's length (the merge reads no more).
  // The first one's cached K/V is requested before waiting for the previous kernel.
  for (int part = blockIdx.z; part < a.num_partitions && part * P < seq_len; part += gridDim.z) {
    if (part != (int)blockIdx.z) __syncthreads();  // shared memory is rewritten
    attend_one_sequence<T, D, G>(a, seq, blockIdx.x, part, P, scores, stage, part == (int)blockIdx.z, single);
    if (!a.early_trigger) pdl_trigger();
  }
  pdl_wait();  // a block without a partition too (no-op after the first)
  pdl_trigger();
  if (a.counters && !single) {
    __syncthreads();  // the stages are free for the merge weights
    merge::merge_in_last_block<T, D, G, kThreads>(a, seq, blockIdx.x, seq_len, reinterpret_cast<float*>(stage));
  }
  EXLSP_TRACE_MARK(2, 0, 0, 7);
}

// Multi-query path: one block per (KV head, run of queries_per_block consecutive sequences,
// partition). Inside its run the block splits the sequences into groups: a sequence joins its
// predecessor's group when both are non-empty and have the same blocks over this partition (the new
// tokens of one prompt). A group of several is computed from one load of the partition's K/V
// (attention_multi_query.cuh); a group of one runs the per-sequence path, so independent sequences
// get exactly the per-sequence result (one after the other, though: the host picks this kernel for
// short prefills only). Its partitions are all partition_size tokens (max_partition_size is 0).
// Two blocks per SM (128 registers, a little spilled): the short prefill's 256 blocks at 8k context
// in one wave instead of two, 37.4 -> 33.7-35.4 us per layer on an H100 (bench/NOTES.md).
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads, 2) decode_attention_multi_query_kernel(DecodeAttentionArgs a) {
  extern __shared__ __align__(16) unsigned char mq_smem[];
  __shared__ int shares_prev[mq::kMaxMembers];  // [i]: sequence first + i joins the group of first + i - 1
  pdl_wait();
  pdl_trigger();
  const int kv_head = blockIdx.x;
  const int first = blockIdx.y * a.queries_per_block;
  const int num_run = min(a.num_seqs - first, a.queries_per_block);
  const int P = a.partition_size;
  int max_len = 0;
  for (int i = 0; i < num_run; ++i) max_len = max(max_len, a.seq_lens[first + i]);
  // Partitions blockIdx.z, + gridDim.z, ... up to the run's longest sequence (the merge reads no
  // partition past a sequence's length).
  for (int part = blockIdx.z; part < a.num_partitions && part * P < max_len; part += gridDim.z) {
    const int start = part * P;
    const int bs = a.block_size;
    const int first_block = start / bs, num_blocks = (start + P - 1) / bs - first_block + 1;
    __syncthreads();  // the previous partition is done with shares_prev and shared memory
    if (threadIdx.x < mq::kMaxMembers) shares_prev[threadIdx.x] = threadIdx.x > 0;
    __syncthreads();
    for (int i = threadIdx.x; i < (num_run - 1) * num_blocks; i += kThreads) {
      const int m = 1 + i / num_blocks, b = first_block + i % num_blocks, j = first + m;
      const int len = a.seq_lens[j], prev_len = a.seq_lens[j - 1];
      if (len <= 0 || prev_len <= 0) {
        shares_prev[m] = 0;
        continue;
      }
      const int used_end = min(start + P, max(len, prev_len));  // tokens either can see here
      if (b * bs >= used_end) continue;
      if (a.block_tables[(size_t)j * a.max_blocks_per_seq + b] !=
          a.block_tables[(size_t)(j - 1) * a.max_blocks_per_seq + b])
        shares_prev[m] = 0;
    }
    __syncthreads();
    for (int head = 0; head < num_run;) {
      int num_members = 1;
      while (head + num_members < num_run && shares_prev[head + num_members]) ++num_members;
      if (num_members == 1) {
        float* scores = reinterpret_cast<float*>(mq_smem);
        T* stage = reinterpret_cast<T*>(scores + scores_floats<G>(P));
        // P as the parameter it is, not this loop's register: ptxas then allocates this kernel as it
        // did before attend_one_sequence took the size (with the register: 24-32 bytes more spilled
        // on sm_80).
        attend_one_sequence<T, D, G>(a, first + head, kv_head, part, a.partition_size, scores, stage);
      } else {
        mq::attend_members<T, D, G>(a, first + head, num_members, kv_head, part, mq_smem);
      }
      head += num_members;
      __syncthreads();  // shared memory is rewritten by the next group
    }
  }
}

// Blocks along the partitions: enough for one wave of the grid, each block looping over partitions
// z, z + gridDim.z, ... A CUDA graph is captured for the longest context, so most partitions of a
// short one are empty: one block per partition (128 at a 16k capture, per KV head) spent ~1 us per
// empty block cycling through the free slots, more than the work of the full ones at 2k context.
int partition_blocks(int per_sm, int other_blocks, int num_partitions) {
  const int z = (sm_count() * per_sm + other_blocks - 1) / other_blocks;
  return std::max(1, std::min(num_partitions, z));
}

// What a launch of Kernel needs from the driver, asked once per kernel and device instead of per
// launch: the dynamic shared memory allowed above 48 KB (raised only, never lowered, since the
// attribute holds for every later launch) and the resident blocks per SM for each partition size
// (the dynamic shared memory grows with it).
template <auto Kernel>
cudaError_t prepare_launch(size_t dynamic_smem, size_t static_smem, int partition_size, int& per_sm) {
  constexpr int kDevices = 64, kSizes = 512 / 64 + 1;
  static size_t allowed[kDevices] = {};
  static int resident[kDevices][kSizes] = {};
  int dev = 0;
  cudaGetDevice(&dev);
  const bool cached = dev >= 0 && dev < kDevices;
  if (dynamic_smem + static_smem > 48 * 1024 && !(cached && allowed[dev] >= dynamic_smem)) {
    const cudaError_t err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dynamic_smem);
    if (err != cudaSuccess) return err;
    if (cached) allowed[dev] = dynamic_smem;
  }
  const int size_slot = partition_size % 64 == 0 && partition_size <= 512 ? partition_size / 64 : 0;  // 0: not kept
  if (cached && size_slot && resident[dev][size_slot]) {
    per_sm = resident[dev][size_slot];
    return cudaSuccess;
  }
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, kThreads, dynamic_smem) != cudaSuccess || per_sm < 1) {
    cudaGetLastError();
    per_sm = 1;
  }
  if (cached && size_slot) resident[dev][size_slot] = per_sm;
  return cudaSuccess;
}

// Shared memory a block may use: the device's opt-in limit, or the override of
// set_decode_attention_smem_limit (a test checks on an H100 that every shape fits a 99 KB card).
int& smem_limit_override() {
  static int bytes = 0;
  return bytes;
}
size_t block_smem_limit() {
  if (smem_limit_override() > 0) return smem_limit_override();
  return device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(48 * 1024);
}

// Static shared memory of each kernel: a margin for the merge's and the run's few scalars.
constexpr size_t kPerSequenceStatic = 256;
constexpr size_t kMultiQueryStatic = sizeof(int) * mq::kMaxMembers + 256;

template <typename T, int D, int G>
cudaError_t launch_phase1(const DecodeAttentionArgs& a, cudaStream_t stream) {
  const int runs = (a.num_seqs + a.queries_per_block - 1) / a.queries_per_block;
  const int P = a.partition_size;
  int per_sm = 1;
  if (a.queries_per_block <= 1) {
    constexpr auto kernel = decode_attention_kernel<T, D, G>;
    // Scores for the largest partition a sequence may get: the blocks per SM follow from it.
    const int largest = merge::largest_partition_size(a);
    const size_t smem = one_sequence_smem_bytes<T, D, G>(largest);
    if (smem + kPerSequenceStatic > block_smem_limit()) return cudaErrorInvalidConfiguration;
    const cudaError_t err = prepare_launch<kernel>(smem, kPerSequenceStatic, largest, per_sm);
    if (err != cudaSuccess) return err;
    const dim3 grid(a.num_kv_heads, runs, partition_blocks(per_sm, a.num_kv_heads * runs, a.num_partitions));
    return launch_pdl(kernel, grid, dim3(kThreads), smem, stream, a);
  }
  // The same shared memory serves the per-sequence path (scores, K/V stages) or the multi-query
  // kernel's K/V stages.
  const size_t smem = std::max(mq::kv_smem_bytes<T, D>(), one_sequence_smem_bytes<T, D, G>(P));
  if (smem + kMultiQueryStatic > block_smem_limit()) return cudaErrorInvalidConfiguration;
  constexpr auto kernel = decode_attention_multi_query_kernel<T, D, G>;
  const cudaError_t err = prepare_launch<kernel>(smem, kMultiQueryStatic, P, per_sm);
  if (err != cudaSuccess) return err;
  const dim3 grid(a.num_kv_heads, runs, partition_blocks(per_sm, a.num_kv_heads * runs, a.num_partitions));
  return launch_pdl(kernel, grid, dim3(kThreads), smem, stream, a);
}

template <typename T, int D>
cudaError_t launch_d(const DecodeAttentionArgs& a, int G, cudaStream_t stream) {
  cudaError_t err = cudaErrorInvalidValue;
  switch (G) {
#define EXLSP_ATTN_CASE(GG)                    \
  case GG:                                     \
    err = launch_phase1<T, D, GG>(a, stream);  \
    break;
    EXLSP_ATTN_CASE(1)
    EXLSP_ATTN_CASE(2)
    EXLSP_ATTN_CASE(3)
    EXLSP_ATTN_CASE(4)
    EXLSP_ATTN_CASE(5)
    EXLSP_ATTN_CASE(6)
    EXLSP_ATTN_CASE(7)
    EXLSP_ATTN_CASE(8)
#undef EXLSP_ATTN_CASE
    default:
      return cudaErrorInvalidValue;
  }
  if (err != cudaSuccess) return err;
  if (a.queries_per_block <= 1 && a.counters) return cudaSuccess;  // merged in phase 1
  return launch_pdl(merge::decode_attention_reduce_kernel<T>, dim3(a.num_q_heads, a.num_seqs), dim3(D), 0, stream,
                    a);
}

}  // namespace

void set_decode_attention_smem_limit(int bytes) { smem_limit_override() = bytes; }

bool& early_trigger_setting() {
  static bool early = true;
  return early;
}
void set_decode_attention_early_trigger(bool early) { early_trigger_setting() = early; }

bool decode_attention_supports(int head_dim, int group) {
  return (head_dim == 64 || head_dim == 128) && group >= 1 && group <= 8;
}

cudaError_t launch_decode_attention(Dtype dtype, const DecodeAttentionArgs& args, cudaStream_t stream) {
  if (args.num_seqs == 0) return cudaSuccess;
  DecodeAttentionArgs a = args;
  a.early_trigger = early_trigger_setting();
  const int G = a.num_q_heads / a.num_kv_heads;
  if (!decode_attention_supports(a.head_dim, G) || a.partition_size > 512 || a.num_partitions > merge::kMaxPartitions ||
      a.queries_per_block < 1 || a.queries_per_block > mq::kMaxMembers || a.max_partition_size > 512 ||
      (a.max_partition_size > 0 && a.queries_per_block > 1))
    return cudaErrorInvalidValue;
  cudaError_t err = cudaErrorInvalidValue;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    err = a.head_dim == 64 ? launch_d<T, 64>(a, G, stream) : launch_d<T, 128>(a, G, stream);
  });
  return err;
}

}  // namespace exlsp
