// The two ops at the ends of a decode step that touch one row of a vocabulary-sized matrix per token:
// the quantized embedding lookup at its start and the greedy argmax over the logits at its end.
//
// Both replaced chains of torch kernels, each an ordinary launch that drains the GPU before it and
// ramps up after: the lookup was 4-6 of them (two gathers, casts, the multiply), and torch's argmax
// over 128256 logits took ~28 us on an H100 (one reduction pass). Here each is one PDL kernel
// (launch.cuh).
#include <cfloat>
#include <cstdint>

#include "dtype_utils.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace exlsp {
namespace {

constexpr int kArgmaxThreads = 1024;
constexpr int kEmbedThreads = 128;

// The (value, index) order of torch.argmax: NaN above everything, then the larger value; among equals
// (NaNs included) the smaller index. A total order, so the reduction's shape does not change the result.
__device__ __forceinline__ bool beats(float va, int ia, float vb, int ib) {
  const bool na = va != va, nb = vb != vb;
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return ia < ib;
}

__device__ __forceinline__ void take(float& v, int& i, float v2, int i2) {
  if (beats(v2, i2, v, i)) v = v2, i = i2;
}

// One block per row. A row of 128256 float32 logits is ~0.5 MB, read once (from L2 after the head
// wrote it) with 16-byte loads where the row allows.
__global__ void __launch_bounds__(kArgmaxThreads) argmax_rows_kernel(const float* __restrict__ logits, int64_t* out,
                                                                    int vocab, int64_t row_stride) {
  pdl_wait();
  pdl_trigger();
  const float* row = logits + blockIdx.x * row_stride;
  float best = -INFINITY;  // every element beats this start (a tie, with a smaller index)
  int best_i = INT32_MAX;
  const bool vectors = vocab % 4 == 0 && row_stride % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0;
  if (vectors) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    for (int j = threadIdx.x; j < vocab / 4; j += kArgmaxThreads) {
      const float4 v = row4[j];
      take(best, best_i, v.x, 4 * j);
      take(best, best_i, v.y, 4 * j + 1);
      take(best, best_i, v.z, 4 * j + 2);
      take(best, best_i, v.w, 4 * j + 3);
    }
  } else {
    for (int j = threadIdx.x; j < vocab; j += kArgmaxThreads) take(best, best_i, row[j], j);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    take(best, best_i, __shfl_xor_sync(0xffffffffu, best, off), __shfl_xor_sync(0xffffffffu, best_i, off));
  __shared__ float warp_best[kArgmaxThreads / 32];
  __shared__ int warp_index[kArgmaxThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_best[warp] = best, warp_index[warp] = best_i;
  __syncthreads();
  if (warp != 0) return;
  best = warp_best[lane], best_i = warp_index[lane];  // kArgmaxThreads / 32 == 32 warps
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    take(best, best_i, __shfl_xor_sync(0xffffffffu, best, off), __shfl_xor_sync(0xffffffffu, best_i, off));
  if (lane == 0) out[blockIdx.x] = best_i;
}

// Token t's row: e[f] = q[f] * s[f / group] (+ b[f / group] for 4 bits), q int8 (8 bits) or the
// nibble of byte f / 2 (even f low) in [0, 16). Rounded as the torch expression it replaces
// (engine/layers/embedding.py): the product (and its sum with the offset, one fma) in float32, once
// to T. Each thread makes 8 features; group_size is a multiple of 8.
template <typename T, typename Id>
__global__ void __launch_bounds__(kEmbedThreads)
    quant_embedding_kernel(const Id* __restrict__ ids, const void* __restrict__ codes, const T* __restrict__ scales,
                           const T* __restrict__ offsets, T* out, int hidden, int group_size, int bits) {
  pdl_wait();  // the ids are the step's input, copied or sampled on the device before this kernel
  pdl_trigger();
  const int64_t id = ids[blockIdx.x];
  const int groups = hidden / group_size;
  for (int f0 = threadIdx.x * 8; f0 < hidden; f0 += kEmbedThreads * 8) {
    const int g = f0 / group_size;
    const float s = to_float(scales[id * groups + g]);
    float q[8], e[8];
    if (bits == 8) {
      const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const int8_t*>(codes) + id * hidden + f0);
      const int8_t* c = reinterpret_cast<const int8_t*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) q[i] = c[i];
#pragma unroll
      for (int i = 0; i < 8; ++i) e[i] = q[i] * s;
    } else {
      const uint8_t* row = static_cast<const uint8_t*>(codes) + id * (hidden / 2);
      const uint32_t raw = *reinterpret_cast<const uint32_t*>(row + f0 / 2);
#pragma unroll
      for (int i = 0; i < 8; ++i) q[i] = (raw >> (4 * i)) & 15u;
      const float b = to_float(offsets[id * groups + g]);
#pragma unroll
      for (int i = 0; i < 8; ++i) e[i] = fmaf(q[i], s, b);
    }
    store8_from_float(out + (int64_t)blockIdx.x * hidden + f0, e);
  }
}

}  // namespace

cudaError_t launch_argmax_rows(const float* logits, int64_t* out, int rows, int vocab, int64_t row_stride,
                               cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return launch_pdl(argmax_rows_kernel, dim3(rows), dim3(kArgmaxThreads), 0, stream, logits, out, vocab, row_stride);
}

cudaError_t launch_quant_embedding(Dtype dtype, const void* ids, bool ids_are_int64, int num_ids, const void* codes,
                                   const void* scales, const void* offsets, void* out, int hidden, int group_size,
                                   int bits, cudaStream_t stream) {
  if (num_ids == 0) return cudaSuccess;
  if ((bits != 4 && bits != 8) || hidden % 8 != 0 || group_size % 8 != 0 || hidden % group_size != 0 ||
      (bits == 4 && !offsets))
    return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    const T* s = static_cast<const T*>(scales);
    const T* b = static_cast<const T*>(offsets);
    T* o = static_cast<T*>(out);
    err = ids_are_int64 ? launch_pdl(quant_embedding_kernel<T, int64_t>, dim3(num_ids), dim3(kEmbedThreads), 0, stream,
                                     static_cast<const int64_t*>(ids), codes, s, b, o, hidden, group_size, bits)
                        : launch_pdl(quant_embedding_kernel<T, int32_t>, dim3(num_ids), dim3(kEmbedThreads), 0, stream,
                                     static_cast<const int32_t*>(ids), codes, s, b, o, hidden, group_size, bits);
  });
  return err;
}

}  // namespace exlsp
