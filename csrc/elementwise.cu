// Small fused element-wise kernels of the decoder layer: RMSNorm with the residual add, neox rotary
// embedding fused with the K/V write into cache slots, SiLU(gate) * up, and the act-order gather of a
// GEMV's input.
// Each is launched with PDL (launch.cuh) and waits for its predecessor before its first read.
#include <cstdint>

#include "dtype_utils.cuh"
#include "elementwise_math.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "trace.cuh"

namespace exlsp {
namespace {

constexpr int kNormThreads = 256;

__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) total += scratch[w];
  return total;
}

// One block per token. The row is kept in registers between the sum of squares and the scaling
// (hidden <= kNormThreads * 8 * kMaxVecs), so x and residual are each read once.
// out_perm (act-order, engine/models/act_order.py): out[:, j] = normed[:, out_perm[j]], the order in
// which the next linear reads its input, through the row in shared memory (hidden elements of T).
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_kernel(const T* x, const T* residual, const T* __restrict__ weight, T* out, T* residual_out, int hidden,
                    float eps, const int32_t* __restrict__ out_perm, bool trigger_at_entry) {
  extern __shared__ __align__(16) unsigned char normed_row[];  // out_perm: the row before the gather
  constexpr int kMaxVecs = 4;  // 8 elements per vector: hidden up to 8192
  __shared__ float scratch[kNormThreads / 32];
  EXLSP_TRACE_MARK(3, hidden, 0, 0);
  if (trigger_at_entry) pdl_trigger();
  float w[kMaxVecs][8];  // the weight (and out_perm) is no kernel's output: read before the wait
  int4 src[kMaxVecs][2];  // out_perm: the columns this thread's outputs come from
#pragma unroll
  for (int i = 0; i < kMaxVecs; ++i) {
    const int col = (threadIdx.x + i * kNormThreads) * 8;
    if (col < hidden) {
      load8_as_float(weight + col, w[i]);
      if (out_perm) {
        src[i][0] = *reinterpret_cast<const int4*>(out_perm + col);
        src[i][1] = *reinterpret_cast<const int4*>(out_perm + col + 4);
      }
    }
  }
  pdl_wait();
  EXLSP_TRACE_MARK(3, hidden, 0, 1);
  if (!trigger_at_entry) pdl_trigger();
  const size_t row = (size_t)blockIdx.x * hidden;
  float v[kMaxVecs][8];
  float sumsq = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVecs; ++i) {
    const int col = (threadIdx.x + i * kNormThreads) * 8;
    if (col < hidden) {
      load8_as_float(x + row + col, v[i]);
      if (residual) {
        float r[8];
        load8_as_float(residual + row + col, r);
        // The new residual is rounded to the model dtype, as the reference stores it.
#pragma unroll
        for (int j = 0; j < 8; ++j) v[i][j] = to_float(from_float<T>(v[i][j] + r[j]));
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) sumsq += v[i][j] * v[i][j];
    }
  }
  __syncthreads();  // all reads of x/residual are done before anything aliasing them is written
  const float inv_rms = rsqrtf(block_sum(sumsq, scratch) / hidden + eps);
#pragma unroll
  for (int i = 0; i < kMaxVecs; ++i) {
    const int col = (threadIdx.x + i * kNormThreads) * 8;
    if (col < hidden) {
      if (residual_out) store8_from_float(residual_out + row + col, v[i]);
      float o[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = v[i][j] * inv_rms * w[i][j];
      store8_from_float(out_perm ? reinterpret_cast<T*>(normed_row) + col : out + row + col, o);
    }
  }
  if (out_perm) {
    __syncthreads();
    const T* normed = reinterpret_cast<const T*>(normed_row);
#pragma unroll
    for (int i = 0; i < kMaxVecs; ++i) {
      const int col = (threadIdx.x + i * kNormThreads) * 8;
      if (col < hidden) {
        const int s[8] = {src[i][0].x, src[i][0].y, src[i][0].z, src[i][0].w,
                          src[i][1].x, src[i][1].y, src[i][1].z, src[i][1].w};
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int j = 0; j < 8; ++j) e[j] = normed[s[j]];
        *reinterpret_cast<uint4*>(out + row + col) = raw;
      }
    }
  }
  EXLSP_TRACE_MARK(3, hidden, 0, 2);
}

// Grid (tokens, slices): thread i of the token's pairs rotates pair (i % (D/2)) of head i / (D/2), over
// q heads then k heads, and copies element i of v; slices spread one token over several blocks (a
// decode step has one token per sequence). Pairs (j, j + D/2) rotate together (neox half split). A
// thread reads its pair before writing it, so the outputs may alias the inputs.
template <typename T, typename CS>
__global__ void rotary_write_kv_kernel(RotaryArgs a) {
  pdl_wait();
  pdl_trigger();
  const int token = blockIdx.x;
  const int half = a.head_dim / 2;
  const int64_t slot = a.slot_mapping ? a.slot_mapping[token] : -1;
  T* cache = static_cast<T*>(a.kv_cache);
  const bool write_cache = cache && slot >= 0;
  const int stride = blockDim.x * gridDim.y;
  const int first = blockIdx.y * blockDim.x + threadIdx.x;
  if (a.apply_rotary || write_cache) {
    const CS* cs = a.apply_rotary ? static_cast<const CS*>(a.cos_sin) + a.positions[token] * a.head_dim : nullptr;
    const int first_head = a.apply_rotary ? 0 : a.num_q_heads;  // K/V write only: skip q
    const int num_pairs = (a.num_q_heads + a.num_kv_heads - first_head) * half;
    for (int p = first; p < num_pairs; p += stride) {
      const int head = first_head + p / half, i = p % half;
      const bool is_k = head >= a.num_q_heads;
      const int kv_head = head - a.num_q_heads;
      const T* src = is_k ? static_cast<const T*>(a.k) + token * a.k_stride_token + (int64_t)kv_head * a.head_dim
                          : static_cast<const T*>(a.q) + token * a.q_stride_token + (int64_t)head * a.head_dim;
      float x1 = to_float(src[i]), x2 = to_float(src[i + half]);
      if (a.apply_rotary) {
        const float c = to_float(cs[i]), s = to_float(cs[i + half]);
        float y1, y2;
        rotate_neox(x1, x2, c, s, y1, y2);
        T* dst = is_k ? static_cast<T*>(a.k_out) + ((int64_t)token * a.num_kv_heads + kv_head) * a.head_dim
                      : static_cast<T*>(a.q_out) + ((int64_t)token * a.num_q_heads + head) * a.head_dim;
        dst[i] = from_float<T>(y1);
        dst[i + half] = from_float<T>(y2);
        x1 = to_float(from_float<T>(y1));  // the cache holds exactly what k_out holds
        x2 = to_float(from_float<T>(y2));
      }
      if (is_k && write_cache) {
        T* dst = cache + (slot * a.num_kv_heads + kv_head) * a.head_dim;
        dst[i] = from_float<T>(x1);
        dst[i + half] = from_float<T>(x2);
      }
    }
  }
  if (write_cache) {
    const T* v = static_cast<const T*>(a.v) + token * a.v_stride_token;
    T* dst = cache + a.cache_half_elems + slot * a.num_kv_heads * a.head_dim;
    for (int e = first; e < a.num_kv_heads * a.head_dim; e += stride) dst[e] = v[e];
  }
}

template <typename T>
__global__ void silu_and_mul_kernel(const T* __restrict__ x, T* __restrict__ out, int inter) {
  pdl_wait();
  pdl_trigger();
  const size_t row = blockIdx.y;
  const int col = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (col >= inter) return;
  float g[8], u[8], o[8];
  load8_as_float(x + row * 2 * inter + col, g);
  load8_as_float(x + row * 2 * inter + inter + col, u);
#pragma unroll
  for (int j = 0; j < 8; ++j) o[j] = silu_mul(g[j], u[j]);
  store8_from_float(out + row * inter + col, o);
}

// out[m, j] = x[m, perm[j]]: grid (rows, column slices), one 8-column vector per thread. In a decode
// step it stands between two PDL kernels (torch's index_select would make the GEMV after it start
// cold); perm is read before the wait, so after it only the gather's one L2 round trip remains.
constexpr int kGatherThreads = 128;
template <typename T>
__global__ void __launch_bounds__(kGatherThreads)
    gather_columns_kernel(const T* __restrict__ x, const int32_t* __restrict__ perm, T* __restrict__ out, int cols) {
  const int c = (blockIdx.y * kGatherThreads + threadIdx.x) * 8;
  int4 lo = make_int4(0, 0, 0, 0), hi = lo;
  if (c < cols) {
    lo = *reinterpret_cast<const int4*>(perm + c);
    hi = *reinterpret_cast<const int4*>(perm + c + 4);
  }
  pdl_wait();
  pdl_trigger();
  if (c >= cols) return;
  const size_t row = (size_t)blockIdx.x * cols;
  const int src[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int j = 0; j < 8; ++j) e[j] = x[row + src[j]];
  *reinterpret_cast<uint4*>(out + row + c) = raw;
}

}  // namespace

cudaError_t launch_gather_columns(Dtype dtype, const void* x, const int32_t* perm, void* out, int rows, int cols,
                                  cudaStream_t stream) {
  if (cols % 8 != 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  cudaError_t err = cudaSuccess;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    const dim3 grid(rows, (cols / 8 + kGatherThreads - 1) / kGatherThreads);
    err = launch_pdl(gather_columns_kernel<T>, grid, dim3(kGatherThreads), 0, stream, static_cast<const T*>(x), perm,
                     static_cast<T*>(out), cols);
  });
  return err;
}

void set_norm_trigger_at_entry(bool entry) { norm_trigger_at_entry() = entry; }

cudaError_t launch_rms_norm(Dtype dtype, const void* x, const void* residual, const void* weight, void* out,
                            void* residual_out, int num_tokens, int hidden, float eps, const int32_t* out_perm,
                            cudaStream_t stream) {
  if (hidden % 8 != 0 || hidden > kNormThreads * 8 * 4) return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    const size_t smem = out_perm ? hidden * sizeof(T) : 0;  // at most 16 KB
    err = launch_pdl(rms_norm_kernel<T>, dim3(num_tokens), dim3(kNormThreads), smem, stream, static_cast<const T*>(x),
                     static_cast<const T*>(residual), static_cast<const T*>(weight), static_cast<T*>(out),
                     static_cast<T*>(residual_out), hidden, eps, out_perm, norm_trigger_at_entry());
  });
  return err;
}

cudaError_t launch_rotary_write_kv(Dtype dtype, const RotaryArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return cudaSuccess;
  const int threads = 128;
  const int pairs = (a.apply_rotary ? a.num_q_heads + a.num_kv_heads : a.num_kv_heads) * a.head_dim / 2;
  // enough slices that a single token spreads over several SMs; many tokens need none
  const int slices = a.num_tokens >= 64 ? 1 : (pairs + threads - 1) / threads;
  const dim3 grid(a.num_tokens, slices);
  cudaError_t err = cudaSuccess;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    err = a.cos_sin_is_float ? launch_pdl(rotary_write_kv_kernel<T, float>, grid, dim3(threads), 0, stream, a)
                             : launch_pdl(rotary_write_kv_kernel<T, T>, grid, dim3(threads), 0, stream, a);
  });
  return err;
}

cudaError_t launch_silu_and_mul(Dtype dtype, const void* x, void* out, int M, int I, cudaStream_t stream) {
  if (I % 8 != 0) return cudaErrorInvalidValue;
  if (M == 0) return cudaSuccess;
  dim3 block(128);
  dim3 grid((I / 8 + 127) / 128, M);
  cudaError_t err = cudaSuccess;
  EXLSP_DISPATCH_DTYPE(dtype, T, {
    err = launch_pdl(silu_and_mul_kernel<T>, grid, block, 0, stream, static_cast<const T*>(x), static_cast<T*>(out), I);
  });
  return err;
}

#ifdef EXLSP_TRACE
namespace trace {
std::vector<AddressFn>& buffers() {
  static std::vector<AddressFn> fns;
  return fns;
}
}  // namespace trace

size_t trace_bytes() { return trace::buffers().size() * sizeof(trace::Buffer); }

cudaError_t trace_read(void* host) {
  char* dst = static_cast<char*>(host);
  for (trace::AddressFn fn : trace::buffers()) {
    void* src = fn();
    if (!src) return cudaErrorInvalidSymbol;
    const cudaError_t err = cudaMemcpy(dst, src, sizeof(trace::Buffer), cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) return err;
    dst += sizeof(trace::Buffer);
  }
  return cudaSuccess;
}

cudaError_t trace_clear() {
  for (trace::AddressFn fn : trace::buffers()) {
    void* p = fn();
    if (!p) return cudaErrorInvalidSymbol;
    const cudaError_t err = cudaMemset(p, 0, sizeof(trace::Buffer));
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}
#endif

}  // namespace exlsp
