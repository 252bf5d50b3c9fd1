// Launching the tensor-core GEMV (quant_gemv_tc_kernel.cuh: the kernel, its layout and epilogues):
// the grid, the warps per block, the K slices and the batch widths for a call's shape.
//
// Work split: a block owns 32 columns and one of `splits` slices of K (whole batches); its warps
// split the slice again, in whole batches. The host picks `splits` (gemv_splits in
// engine/ops/cuda_quant_linear.py: only a long K or a nearly empty GPU pays for one) and the
// launcher the warps per block (block_warps: the whole grid resident where the registers allow).
// With splits > 1 each block writes its fp32 partial sums to `partials` and bumps the tile's counter;
// the last block of a tile adds the partials in split order (deterministic), applies the epilogue
// and resets the counter to 0 for the next call.
#include <cstdint>

#include "kernels.h"
#include "launch.cuh"
#include "quant_gemv_tc_kernel.cuh"

namespace exlsp {
namespace {

// Benchmark knobs (set_gemv_tuning): warps per block (0: block_warps chooses), whether small grids
// take batches of 8 chunks, and whether the loads roll (quant_gemv_tc_kernel.cuh).
struct GemvTuning {
  int block_warps = 0;
  bool wide_batches = true;
  bool rolling = true;
};

GemvTuning& gemv_tuning() {
  static GemvTuning tuning;
  return tuning;
}

// K slice of one block: whole batches of kUnroll chunks.
int chunks_per_split(int num_chunks, int splits) {
  splits = splits < 1 ? 1 : (splits > num_chunks ? num_chunks : splits);
  const int per = (num_chunks + splits - 1) / splits;
  return (per + kUnroll - 1) / kUnroll * kUnroll;
}

// Warps per block. Blocks of 8 warps while the grid fits in one wave of them. A larger grid gets
// the same warps per SM in more, smaller blocks (6 warps x 4 instead of 8 x 3 at 80 registers;
// 4 x 4 instead of 8 x 2 at 128): fewer waves, and each warp owns a longer run of K, so the
// per-block prologue and reduction weigh less. H100, batch 1: 4096 x 14336 (448 blocks) 1622 ->
// 1961 GB/s, 4096 x 28672 2152 -> 2253; 16 rows 1685 -> 1934 and 1766 -> 2052 (bench/NOTES.md 26-29).
// The occupancy per SM is asked once per kernel (the first device's; the cards of a machine alike).
template <typename T, int MT, int U, int S, bool P>
int block_warps(int blocks, int batches_per_block) {
  if (gemv_tuning().block_warps > 0) return gemv_tuning().block_warps;
  static int per_sm[kMaxWarps + 1] = {};  // resident blocks per SM by warps per block; 0: not asked
  static bool asked = false;
  const int sms = sm_count();
  if (!asked) {
    asked = true;
    for (int w = 2; w <= kMaxWarps; ++w)
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm[w], quant_gemv_tc_kernel<T, MT, U, S, P>, w * 32, 0) !=
          cudaSuccess) {
        cudaGetLastError();
        per_sm[w] = 0;
      }
  }
  // A grid of at most one block per SM in batches of 8: 16 warps per block, twice the warps per SM.
  // (4096 x 4096, 128 blocks: each warp's 8 chunks come in one batch.)
  if (max_warps<U>() > kMaxWarps && blocks <= sms && batches_per_block >= max_warps<U>()) return max_warps<U>();
  if (per_sm[kMaxWarps] == 0 || blocks <= sms * per_sm[kMaxWarps]) return kMaxWarps;
  // The largest block with the same warps per SM whose slots hold the whole grid (448 blocks: 6
  // warps x 4 per SM; 896: 3 x 8); else the smallest such block, for the fewest waves.
  const int warps_per_sm = per_sm[kMaxWarps] * kMaxWarps;
  int fallback = kMaxWarps;
  for (int w = kMaxWarps - 1; w >= 2; --w) {
    if (per_sm[w] * w != warps_per_sm) continue;
    if (blocks <= sms * per_sm[w]) return w;
    fallback = w;
  }
  return fallback;
}

template <typename T, int MT, int U, int S, bool P>
cudaError_t launch_mt(const T* x, const uint32_t* qw, const T* s, const T* z, const T* b, const GemvEpilogue& ep,
                      const L2Prefetch& pf, T* o, float* partials, int* counters, int M, int K, int N, int group_size,
                      int per_split, int splits, int pair, cudaStream_t stream) {
  const dim3 grid(N / 32, splits);
  const int warps = block_warps<T, MT, U, S, P>(grid.x * grid.y, per_split / U);
  return launch_pdl(quant_gemv_tc_kernel<T, MT, U, S, P>, grid, dim3(warps * 32), 0, stream, x, qw, s, z, b, ep, pf, o,
                    partials, counters, M, K, N, group_size, per_split, pair, gemv_tuning().rolling);
}

// Batches of 4 chunks, in sub-batches of the largest common divisor of 4 and the chunks per group
// (4 for group 128 and its multiples: every checkpoint exlsp writes). Batches of 8 where the grid
// is at most 2 blocks per SM (one row tile, group a multiple of 128, slices of whole batches, at
// least one batch per warp: 4096 x 1024 in 4 slices of 32 chunks lost 10% to idle warps).
template <typename T, int MT, bool P>
cudaError_t launch_rows(const T* x, const uint32_t* qw, const T* s, const T* z, const T* b, const GemvEpilogue& ep,
                        const L2Prefetch& pf, T* o, float* partials, int* counters, int M, int K, int N,
                        int group_size, int splits, int pair, cudaStream_t stream) {
  const int num_chunks = K / 32, chunks_per_group = group_size / 32;
  const int per_split = chunks_per_split(num_chunks, splits);
  splits = (num_chunks + per_split - 1) / per_split;  // no empty slice
#define EXLSP_GEMV_LAUNCH(UU, SS) \
  launch_mt<T, MT, UU, SS, P>(x, qw, s, z, b, ep, pf, o, partials, counters, M, K, N, group_size, per_split, splits, \
                              pair, stream)
  if constexpr (MT == 1) {
    if (gemv_tuning().wide_batches && chunks_per_group % 4 == 0 && per_split % 8 == 0 && per_split >= 8 * kMaxWarps &&
        num_chunks % 8 == 0 && (N / 32) * splits <= 2 * sm_count())
      return chunks_per_group % 8 == 0 ? EXLSP_GEMV_LAUNCH(8, 8) : EXLSP_GEMV_LAUNCH(8, 4);
  }
  if (chunks_per_group % 4 == 0) return EXLSP_GEMV_LAUNCH(4, 4);
  if (chunks_per_group % 2 == 0) return EXLSP_GEMV_LAUNCH(4, 2);
  return EXLSP_GEMV_LAUNCH(4, 1);
#undef EXLSP_GEMV_LAUNCH
}

}  // namespace

bool quant_gemv_tc_supports(int bits, int K, int N, int group_size) {
  return bits == 4 && K % 128 == 0 && N % 32 == 0 && group_size % 32 == 0 && K % group_size == 0;
}

void set_pdl_mode(int mode) { pdl_mode() = mode; }

int quant_gemv_tc_effective_splits(int K, int splits) {
  const int num_chunks = K / 32;
  const int per_split = chunks_per_split(num_chunks, splits);
  return (num_chunks + per_split - 1) / per_split;
}

void set_gemv_tuning(int block_warps, bool wide_batches, bool rolling) {
  gemv_tuning() = GemvTuning{block_warps, wide_batches, rolling};
}

#define EXLSP_GEMV_ROWS(MT, P) \
  launch_rows<T, MT, P>(xr, qw, sc, ze, bi, ep, pf, orow, partials, counters, rows, K, N, group_size, splits, pair, \
                        stream)
cudaError_t launch_quant_gemv_tc(Dtype dtype, const void* x, const int32_t* qweight, const void* scales,
                                 const void* zeros, const void* bias, const GemvEpilogue& epilogue, void* out,
                                 float* partials, int* counters, int M, int K, int N, int group_size, int splits,
                                 const L2Prefetch& prefetch, cudaStream_t stream) {
  splits = (partials && counters) ? quant_gemv_tc_effective_splits(K, splits) : 1;
  int pair = 16, out_cols = N;  // the column pairing and the output's row length
  switch (epilogue.kind) {
    case GemvEpilogueKind::kStore:
      break;
    case GemvEpilogueKind::kAddNorm:
      if (!epilogue.residual || !epilogue.norm_weight || !epilogue.residual_out || !epilogue.sumsq_tiles)
        return cudaErrorInvalidValue;
      break;
    case GemvEpilogueKind::kSiluMul:
      pair = out_cols = N / 2;
      if (N % 32 != 0) return cudaErrorInvalidValue;
      break;
    case GemvEpilogueKind::kRotaryKv: {
      const RotaryArgs& r = epilogue.rotary;
      pair = r.head_dim / 2;
      out_cols = r.num_q_heads * r.head_dim;
      if (r.head_dim % 32 != 0 || N != (r.num_q_heads + 2 * r.num_kv_heads) * r.head_dim || !r.positions ||
          !r.cos_sin || !r.kv_cache || !r.slot_mapping)
        return cudaErrorInvalidValue;
      break;
    }
    default:
      return cudaErrorInvalidValue;
  }
  if (epilogue.row_sumsq && K > kRowNormMaxK) return cudaErrorInvalidValue;
  const uint32_t* qw = reinterpret_cast<const uint32_t*>(qweight);
  cudaError_t err = cudaSuccess;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    const T* xs = static_cast<const T*>(x);
    const T* sc = static_cast<const T*>(scales);
    const T* ze = static_cast<const T*>(zeros);
    const T* bi = static_cast<const T*>(bias);
    for (int m0 = 0; m0 < M && err == cudaSuccess; m0 += 16) {
      const int rows = M - m0 < 16 ? M - m0 : 16;
      GemvEpilogue ep = epilogue;  // this chunk's rows
      if (ep.residual) ep.residual = static_cast<const T*>(ep.residual) + (size_t)m0 * N;
      if (ep.residual_out) ep.residual_out = static_cast<T*>(ep.residual_out) + (size_t)m0 * N;
      if (ep.sumsq_tiles) ep.sumsq_tiles += (size_t)m0 * (N / 32);
      if (ep.row_sumsq) ep.row_sumsq += (size_t)m0 * (K / 32);
      if (ep.kind == GemvEpilogueKind::kRotaryKv) {
        ep.rotary.positions += m0;
        ep.rotary.slot_mapping += m0;
      }
      const T* xr = xs + (size_t)m0 * K;
      T* orow = static_cast<T*>(out) + (size_t)m0 * out_cols;
      // the last chunk of rows prefetches: the earlier ones read the weight again
      const L2Prefetch pf = m0 + 16 >= M ? prefetch : L2Prefetch{};
      const bool paired = ep.kind == GemvEpilogueKind::kSiluMul || ep.kind == GemvEpilogueKind::kRotaryKv;
      if (rows <= 8) {
        err = paired ? EXLSP_GEMV_ROWS(1, true) : EXLSP_GEMV_ROWS(1, false);
      } else {
        err = paired ? EXLSP_GEMV_ROWS(2, true) : EXLSP_GEMV_ROWS(2, false);
      }
    }
  });
  return err;
}
#undef EXLSP_GEMV_ROWS

}  // namespace exlsp
