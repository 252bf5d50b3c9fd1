// Paged decode attention, flash-decoding style: one new token per sequence attends to its whole
// context in the paged KV cache. The context is split into partitions of `partition_size` tokens so
// that even a single sequence spreads over many SMs; phase 2 merges the partitions' partial results.
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
#include "dtype_utils.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace exlsp {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kStage = 128;  // tokens of K and of V staged in shared memory at a time

// Shared memory of the per-sequence path: scores (G, partition_size) floats padded to 16 bytes, then
// the K and V stages (kStage rows of stage_row<D>() T each). At most 16 + 68 KB (G = 8, D = 128,
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

// One sequence's new token against one partition of its context, on the tensor cores (m16n8k16,
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
__device__ void attend_one_sequence(const DecodeAttentionArgs& a, int seq, int kv_head, int part, float* scores,
                                    T* stage, bool wait_predecessor = false, bool write_out = false) {
  __shared__ float inv_sum[G];  // write_out: 1 / exp-sum per head
  constexpr int ST = kStage;
  constexpr int kRow = stage_row<D>();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int P = a.partition_size;
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
  if (wait_predecessor) {
    pdl_wait();
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
  softmax_weights();
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
}

// One block per (KV head, sequence, partition): the ordinary decode path. Three blocks per SM, as
// its shared memory allows (left alone, ptxas took 128 registers once the outputs could be reordered:
// two blocks per SM).
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads, 3) decode_attention_kernel(DecodeAttentionArgs a) {
  static_assert(sizeof(float) * G * merge::kMaxPartitions <= sizeof(T) * 2 * kStage * stage_row<D>(),
                "merge weights fit");
  extern __shared__ __align__(16) float scores[];  // one_sequence_smem_bytes: scores, then K/V stages
  T* stage = reinterpret_cast<T*>(scores + scores_floats<G>(a.partition_size));
  const int seq = blockIdx.y, seq_len = a.seq_lens[seq];  // a step input, no kernel's output
  // A sequence within one partition needs no merge: its block writes the outputs (with counters,
  // where the merge would be this kernel's; the separate merge kernel reads every partial result).
  const bool single = a.counters && seq_len > 0 && seq_len <= a.partition_size;
  // Partitions blockIdx.z, + gridDim.z, ... up to the sequence's length (the merge reads no more).
  // The first one's cached K/V is requested before waiting for the previous kernel.
  for (int part = blockIdx.z; part < a.num_partitions && part * a.partition_size < seq_len; part += gridDim.z) {
    if (part != (int)blockIdx.z) __syncthreads();  // shared memory is rewritten
    attend_one_sequence<T, D, G>(a, seq, blockIdx.x, part, scores, stage, part == (int)blockIdx.z, single);
    if (!a.early_trigger) pdl_trigger();
  }
  pdl_wait();  // a block without a partition too (no-op after the first)
  pdl_trigger();
  if (a.counters && !single) {
    __syncthreads();  // the stages are free for the merge weights
    merge::merge_in_last_block<T, D, G, kThreads>(a, seq, blockIdx.x, seq_len, reinterpret_cast<float*>(stage));
  }
}

// Multi-query path: one block per (KV head, run of queries_per_block consecutive sequences,
// partition). Inside its run the block splits the sequences into groups: a sequence joins its
// predecessor's group when both are non-empty and have the same blocks over this partition (the new
// tokens of one prompt). A group of several is computed from one load of the partition's K/V
// (attention_multi_query.cuh); a group of one runs the per-sequence path, so independent sequences
// get exactly the per-sequence result (one after the other, though: the host picks this kernel for
// short prefills only).
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
        attend_one_sequence<T, D, G>(a, first + head, kv_head, part, scores, stage);
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
    const size_t smem = one_sequence_smem_bytes<T, D, G>(P);
    if (smem + kPerSequenceStatic > block_smem_limit()) return cudaErrorInvalidConfiguration;
    const cudaError_t err = prepare_launch<kernel>(smem, kPerSequenceStatic, P, per_sm);
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
      a.queries_per_block < 1 || a.queries_per_block > mq::kMaxMembers)
    return cudaErrorInvalidValue;
  cudaError_t err = cudaErrorInvalidValue;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    err = a.head_dim == 64 ? launch_d<T, 64>(a, G, stream) : launch_d<T, 128>(a, G, stream);
  });
  return err;
}

}  // namespace exlsp
