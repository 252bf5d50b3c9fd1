// Raw-pointer launchers of the exlsp CUDA kernels. No torch here: torch_bindings.cpp checks
// dtypes/shapes and calls these on the current stream. Every launcher returns the launch's
// cudaError_t (cudaGetLastError right after the launch) so the shim can raise with the op's name.
//
// Layouts (row-major, contiguous unless a stride is passed):
//   activations x (M, K); outputs (M, N); model dtype is fp16 or bf16 (`Dtype`).
//   qweight (K * bits / 32, N) int32, GPTQ packing along K, low bits first (engine/quant/layout.py);
//   scales, zeros (K / group_size, N) in the model dtype (zeros already "true zeros").
//   kv_cache_layer (2, num_blocks, block_size, num_kv_heads, head_dim).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace exlsp {

enum class Dtype : int { kHalf = 0, kBFloat16 = 1 };

// y (M, N) = x (M, K) @ dequant(W) (+ bias (N,)) (+ residual (M, N)). 1 <= M <= 8.
cudaError_t launch_quant_gemv(Dtype dtype, const void* x, const int32_t* qweight, const void* scales,
                              const void* zeros, const void* bias, const void* residual, void* out, int M,
                              int K, int N, int bits, int group_size, cudaStream_t stream);


// Benchmark knobs of the tensor-core GEMV: warps per block (0: the launcher chooses, else 2..8) and
// whether grids of at most 2 blocks per SM take batches of 8 chunks (default on).
void set_gemv_tuning(int block_warps, bool wide_batches, bool rolling);

// Programmatic dependent launch for the kernels that support it (launch.cuh): -1 auto, 0 off, 1 on.
void set_pdl_mode(int mode);
// Benchmark knob: the RMSNorm lets the next kernel launch at its entry (true, the default) or only
// after its own wait (launch.cuh).
void set_norm_trigger_at_entry(bool entry);

// out (rows,) = the index of each row's largest logit, torch.argmax's choice (the first of equal
// maxima; a NaN above everything). logits float32, rows `row_stride` elements apart.
cudaError_t launch_argmax_rows(const float* logits, int64_t* out, int rows, int vocab, int64_t row_stride,
                               cudaStream_t stream);

// out (num_ids, hidden) = rows `ids` of a quantized embedding (engine/layers/embedding.py QuantEmbedding):
// codes (V, hidden) int8 (bits 8) or (V, hidden / 2) uint8 nibbles (bits 4, even feature low); scales and
// offsets (V, hidden / group_size) in the model dtype, offsets for 4 bits only. ids int32 or int64.
cudaError_t launch_quant_embedding(Dtype dtype, const void* ids, bool ids_are_int64, int num_ids, const void* codes,
                                   const void* scales, const void* offsets, void* out, int hidden, int group_size,
                                   int bits, cudaStream_t stream);

// W (K, N) in the model dtype = (q - zeros) * scales, for the prefill GEMM's scratch. qweight, scales
// and zeros may be N columns of wider matrices: `ld` is their row stride in elements (>= N). With
// `strips`, qweight is N / 16 whole column strips (engine/quant/layout.py), its own stride unused.
cudaError_t launch_dequantize(Dtype dtype, const int32_t* qweight, const void* scales, const void* zeros,
                              void* out, int K, int N, int ld, int bits, int group_size, bool strips,
                              cudaStream_t stream);

// Flash-decoding over the paged cache, one new token per sequence. Phase 1 writes one partial
// result per context partition (unnormalised output, running max, exp-sum), phase 2 merges them
// (in phase 1's last block per sequence and KV head when `counters` is given).
// tmp_out (S, Hq, num_partitions, D) float32, tmp_max/tmp_sum (S, Hq, num_partitions) float32.
struct DecodeAttentionArgs {
  const void* q;           // (S, Hq, D)
  const void* kv_cache;    // (2, num_blocks, block_size, Hkv, D)
  const int32_t* block_tables;  // (S, max_blocks_per_seq)
  const int32_t* seq_lens;      // (S,)
  void* out;                    // (S, Hq, D)
  float* tmp_out;
  float* tmp_max;
  float* tmp_sum;
  int num_seqs, num_q_heads, num_kv_heads, head_dim;
  int num_blocks, block_size, max_blocks_per_seq;
  int partition_size, num_partitions;
  // 0: every partition has partition_size tokens. Else (per-sequence kernel only) a sequence's
  // partitions double from partition_size up to this many tokens while it would need more than
  // merge::kGrowAbovePartitions of them (attention_merge.cuh partition_size_of); num_partitions
  // stays counted in partition_size, enough for any of them.
  int max_partition_size;
  int sliding_window;  // 0: none
  // 1: one block per sequence (the per-sequence kernel). > 1 (at most 16): the multi-query kernel,
  // where up to this many consecutive sequences (aligned runs) that share a partition's blocks (the
  // new tokens of one prompt) are computed together from one load of its K/V.
  int queries_per_block;
  float scale;
  int64_t q_stride_token;  // elements between consecutive tokens of q (heads * D when contiguous)
  // Per-sequence kernel only: (S * Hkv) zeroed ints. The last block of a (sequence, KV head) merges
  // its partitions (and leaves the count zero again); null: a separate merge kernel does.
  int* counters;
  // (Hq * D,) int32 or null: element e = h * D + d of a row of out goes to position out_index[e] of
  // the row, the input order of the act-order linear after the attention (engine/models/act_order.py).
  const int32_t* out_index;
  bool early_trigger;  // set by the launcher (set_decode_attention_early_trigger)
};
cudaError_t launch_decode_attention(Dtype dtype, const DecodeAttentionArgs& a, cudaStream_t stream);
// Test knob: launch the decode kernels as if a block could use at most `bytes` of shared memory (0:
// the device's opt-in limit, the default); a launch that needs more fails.
void set_decode_attention_smem_limit(int bytes);
// Benchmark knob: the per-sequence decode kernel lets the next kernel launch right after its wait
// (true, the default) or only once its first partition is computed.
void set_decode_attention_early_trigger(bool early);
bool decode_attention_supports(int head_dim, int group_size_q_per_kv);

#ifdef EXLSP_TRACE
// Probe builds only (trace.cuh): every translation unit's marks, one buffer after another, copied
// into host memory of trace_bytes(); trace_clear zeroes them.
size_t trace_bytes();
cudaError_t trace_read(void* host);
cudaError_t trace_clear();
#endif

// out (T, H) = rmsnorm(x + residual) * weight; residual_out (T, H) = x + residual (or x) when
// residual_out is not null. Any of out/residual_out may alias x or residual. out_perm (H,), when not
// null: out is written in that order, out[:, j] = rmsnorm(...)[:, out_perm[j]].
cudaError_t launch_rms_norm(Dtype dtype, const void* x, const void* residual, const void* weight, void* out,
                            void* residual_out, int num_tokens, int hidden, float eps, const int32_t* out_perm,
                            cudaStream_t stream);

// Neox (half-split) rotary embedding of q (T, Hq, D) and k (T, Hkv, D) into q_out, k_out (contiguous;
// may alias the inputs). When kv_cache is not null, (rotated) k and v (T, Hkv, D) are also written to
// their slots. With apply_rotary false only the K/V write happens (q, q_out, k_out unused).
// cos_sin (max_pos, D): [cos(D/2) | sin(D/2)] in float32 or the model dtype (cos_sin_is_float).
struct RotaryArgs {
  const void* q;
  const void* k;
  const void* v;
  void* q_out;
  void* k_out;
  const int64_t* positions;  // (T,)
  const void* cos_sin;
  bool cos_sin_is_float;
  void* kv_cache;               // (2, num_blocks, block_size, Hkv, D) or null
  const int64_t* slot_mapping;  // (T,) or null; negative slots are skipped (padding)
  int num_tokens, num_q_heads, num_kv_heads, head_dim;
  int64_t q_stride_token, k_stride_token, v_stride_token;  // inputs; outputs are contiguous
  int64_t cache_half_elems;  // num_blocks * block_size * Hkv * D: offset of the V half
  bool apply_rotary;
};
cudaError_t launch_rotary_write_kv(Dtype dtype, const RotaryArgs& a, cudaStream_t stream);

// The same product on the tensor cores for 1 <= M (chunks of 16 rows), 4-bit only, integer zeros;
// quant_gemv_tc_supports says which shapes it takes (quant_gemv_tc.cu). K is split over `splits`
// blocks per 32 columns when partials (splits, min(M, 16), N) float32 and counters (N / 32) int32,
// all zero, are given (the kernel leaves the counters zero again); else splits is 1.
// The epilogue says what becomes of y = x W (+ bias):
//   kStore:    out (M, N) = y (+ residual (M, N));
//   kSiluMul:  y = gate | up (N = 2I): out (M, I) = silu(gate) * up, what silu_and_mul computes from
//              the stored y (N % 32 == 0);
//   kRotaryKv: y = q | k | v heads (N = (Hq + 2 Hkv) D, D % 32 == 0): out (M, Hq D) = rotated q;
//              rotated k and v go to their cache slots, what rotary_write_kv does with the stored y.
//              `rotary` gives positions, table, cache, slots and head counts (its q/k/v fields unused);
//   kAddNorm:  the GEMV before an RMSNorm (o, down), the norm left to the GEMV after it: h = y + residual
//              (each rounded to T, as the unfused GEMV and rms_norm round them) -> residual_out (M, N);
//              h * norm_weight -> out (M, N) at column norm_index[n] (or n: the next linear's act-order
//              input order); per 32-column tile the sum of h^2 -> sumsq_tiles (M, N / 32) float32.
// With row_sumsq (M, K / 32) float32 (any kind; K <= 8192): x holds rows of h * norm_weight from a
// kAddNorm GEMV, and each row's product is scaled by rsqrt(sum of its row_sumsq / K + row_eps) before
// the bias: the RMSNorm's row scale, applied where it is one multiply per output instead of a kernel.
enum class GemvEpilogueKind : int { kStore = 0, kSiluMul = 1, kRotaryKv = 2, kAddNorm = 3 };
struct GemvEpilogue {
  GemvEpilogueKind kind = GemvEpilogueKind::kStore;
  const void* residual = nullptr;  // kStore (optional), kAddNorm
  RotaryArgs rotary{};             // kRotaryKv only
  // kAddNorm only
  const void* norm_weight = nullptr;     // (N,)
  const int32_t* norm_index = nullptr;   // (N,) or null
  void* residual_out = nullptr;          // (M, N)
  float* sumsq_tiles = nullptr;          // (M, N / 32)
  // any kind: the row scale of the RMSNorm before this GEMV (null: none)
  const float* row_sumsq = nullptr;  // (M, K / 32)
  float row_eps = 0.f;
};
constexpr int kRowNormMaxK = 8192;  // row_sumsq is staged in the reduction's shared memory
// Weights the step reads after this GEMV's, which its warps ask L2 to fetch once their own loads are
// done (l2_prefetch.cuh): up to kMaxRanges byte ranges (0 bytes: none).
struct L2Prefetch {
  static constexpr int kMaxRanges = 4;
  const char* ptr[kMaxRanges] = {};
  int64_t bytes[kMaxRanges] = {};
};

bool quant_gemv_tc_supports(int bits, int K, int N, int group_size);
int quant_gemv_tc_effective_splits(int K, int splits);  // the number of K slices actually launched
cudaError_t launch_quant_gemv_tc(Dtype dtype, const void* x, const int32_t* qweight, const void* scales,
                                 const void* zeros, const void* bias, const GemvEpilogue& epilogue, void* out,
                                 float* partials, int* counters, int M, int K, int N, int group_size, int splits,
                                 const L2Prefetch& prefetch, cudaStream_t stream);

// out (rows, cols) = x[:, perm] (x contiguous (rows, cols), perm (cols,) int32 16-byte aligned,
// cols % 8 == 0): the act-order gather of a GEMV's input.
cudaError_t launch_gather_columns(Dtype dtype, const void* x, const int32_t* perm, void* out, int rows, int cols,
                                  cudaStream_t stream);

// out (M, I) = silu(x[:, :I]) * x[:, I:], x (M, 2I).
cudaError_t launch_silu_and_mul(Dtype dtype, const void* x, void* out, int M, int I, cudaStream_t stream);

}  // namespace exlsp
