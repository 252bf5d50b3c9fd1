// The torch-facing shim: schema of every torch.ops.exlsp op, dtype/shape/device checks with clear
// messages, the device guard and the current stream, then one call into a raw-pointer launcher
// (kernels.h). Callers allocate every output; ops return nothing.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>

#include "kernels.h"

namespace exlsp {
namespace {

using at::Tensor;

// Error messages are formatted with snprintf: streaming integers into TORCH_CHECK's message crashed
// (SIGSEGV) in this extension on the GPU machine's torch 2.11 build, while plain strings worked.
std::string to_str(const char* v) { return v; }
std::string to_str(const std::string& v) { return v; }
std::string to_str(int64_t v) { return std::to_string(v); }
std::string to_str(int v) { return std::to_string(v); }
std::string to_str(at::ScalarType v) { return c10::toString(v); }
std::string to_str(const c10::Device& v) { return v.str(); }
std::string to_str(at::IntArrayRef v) {
  std::string r = "(";
  for (size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + std::to_string(v[i]);
  return r + ")";
}

#define EXLSP_CHECK(cond, ...)                          \
  do {                                                  \
    if (!(cond)) {                                      \
      char exlsp_msg_[512];                             \
      std::snprintf(exlsp_msg_, sizeof(exlsp_msg_), __VA_ARGS__); \
      TORCH_CHECK(false, exlsp_msg_);                   \
    }                                                   \
  } while (0)

Dtype model_dtype(const Tensor& t, const char* op) {
  if (t.scalar_type() == at::kHalf) return Dtype::kHalf;
  if (t.scalar_type() == at::kBFloat16) return Dtype::kBFloat16;
  EXLSP_CHECK(false,
              "exlsp::%s: expected float16 or bfloat16, got %s", to_str(op).c_str(), to_str(t.scalar_type()).c_str());
  return Dtype::kHalf;  // unreachable
}

void check_cuda(const Tensor& t, const char* op, const char* name) {
  EXLSP_CHECK(t.is_cuda(), "exlsp::%s: %s must be a CUDA tensor", to_str(op).c_str(), to_str(name).c_str());
  EXLSP_CHECK(t.is_contiguous(), "exlsp::%s: %s must be contiguous", to_str(op).c_str(), to_str(name).c_str());
}

void check_same(const Tensor& t, const Tensor& like, const char* op, const char* name) {
  check_cuda(t, op, name);
  EXLSP_CHECK(t.scalar_type() == like.scalar_type(),
              "exlsp::%s: %s has dtype %s, expected %s", to_str(op).c_str(), to_str(name).c_str(),
              to_str(t.scalar_type()).c_str(), to_str(like.scalar_type()).c_str());
  EXLSP_CHECK(t.device() == like.device(),
              "exlsp::%s: %s is on %s, expected %s", to_str(op).c_str(), to_str(name).c_str(),
              to_str(t.device()).c_str(), to_str(like.device()).c_str());
}

void check_launch(cudaError_t err, const char* op) {
  EXLSP_CHECK(err == cudaSuccess,
              "exlsp::%s: kernel launch failed: %s", to_str(op).c_str(), to_str(cudaGetErrorString(err)).c_str());
}

const void* opt_ptr(const std::optional<Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

// Shared checks of both GEMV ops; returns (M, K, N).
std::array<int64_t, 3> check_gemv(const char* op, const Tensor& x, const Tensor& qweight, const Tensor& scales,
                                  const Tensor& zeros, const std::optional<Tensor>& bias,
                                  const std::optional<Tensor>& residual, int64_t bits, int64_t group_size,
                                  const Tensor& out) {
  check_cuda(x, op, "x");
  EXLSP_CHECK(x.dim() == 2, "exlsp::%s: x must be (M, K), got %s", to_str(op).c_str(), to_str(x.sizes()).c_str());
  EXLSP_CHECK(bits == 4 || bits == 8,
              "exlsp::%s: bits must be 4 or 8, got %s", to_str(op).c_str(), to_str(bits).c_str());
  const int64_t M = x.size(0), K = x.size(1);
  check_cuda(qweight, op, "qweight");
  EXLSP_CHECK(qweight.scalar_type() == at::kInt, "exlsp::%s: qweight must be int32", to_str(op).c_str());
  const int64_t N = qweight.size(1);
  EXLSP_CHECK(qweight.size(0) * 32 / bits == K,
              "exlsp::%s: qweight %s does not pack K=%s at %s bits", to_str(op).c_str(),
              to_str(qweight.sizes()).c_str(), to_str(K).c_str(), to_str(bits).c_str());
  EXLSP_CHECK(N % 4 == 0,
              "exlsp::%s: out_features must be a multiple of 4, got %s", to_str(op).c_str(), to_str(N).c_str());
  EXLSP_CHECK(K % 8 == 0,
              "exlsp::%s: in_features must be a multiple of 8, got %s", to_str(op).c_str(), to_str(K).c_str());
  EXLSP_CHECK(group_size > 0 && group_size % (32 / bits) == 0 && K % group_size == 0,
              "exlsp::%s: bad group_size %s for K=%s", to_str(op).c_str(), to_str(group_size).c_str(),
              to_str(K).c_str());
  check_same(scales, x, op, "scales");
  check_same(zeros, x, op, "zeros");
  EXLSP_CHECK(scales.size(0) == K / group_size && scales.size(1) == N,
              "exlsp::%s: scales %s do not match (K/group_size, N)", to_str(op).c_str(),
              to_str(scales.sizes()).c_str());
  EXLSP_CHECK(zeros.sizes() == scales.sizes(), "exlsp::%s: zeros must have the shape of scales", to_str(op).c_str());
  if (bias) {
    check_same(*bias, x, op, "bias");
    EXLSP_CHECK(bias->numel() == N, "exlsp::%s: bias must have N elements", to_str(op).c_str());
  }
  if (residual) {
    check_same(*residual, x, op, "residual");
    EXLSP_CHECK(residual->size(0) == M && residual->size(1) == N,
                "exlsp::%s: residual must be (M, N)", to_str(op).c_str());
  }
  check_same(out, x, op, "out");
  EXLSP_CHECK(out.dim() == 2 && out.size(0) == M && out.size(1) == N,
              "exlsp::%s: out must be (M, N) = (%s, %s), got %s", to_str(op).c_str(), to_str(M).c_str(),
              to_str(N).c_str(), to_str(out.sizes()).c_str());
  return {M, K, N};
}

void quant_gemv(const Tensor& x, const Tensor& qweight, const Tensor& scales, const Tensor& zeros,
                const std::optional<Tensor>& bias, const std::optional<Tensor>& residual, int64_t bits,
                int64_t group_size, Tensor& out) {
  const char* op = "quant_gemv";
  const Dtype dtype = model_dtype(x, op);
  const auto [M, K, N] = check_gemv(op, x, qweight, scales, zeros, bias, residual, bits, group_size, out);
  if (M == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(launch_quant_gemv(dtype, x.data_ptr(), qweight.data_ptr<int32_t>(), scales.data_ptr(), zeros.data_ptr(),
                                 opt_ptr(bias), opt_ptr(residual), out.data_ptr(), (int)M, (int)K, (int)N, (int)bits,
                                 (int)group_size, c10::cuda::getCurrentCUDAStream()),
               op);
}

// Tensor-core variant: 4-bit, integer zeros (the caller knows; the kernel does not check values).
void quant_gemv_tc(const Tensor& x, const Tensor& qweight, const Tensor& scales, const Tensor& zeros,
                   const std::optional<Tensor>& bias, const std::optional<Tensor>& residual, int64_t group_size,
                   Tensor& out, const std::optional<Tensor>& partials, const std::optional<Tensor>& counters,
                   int64_t splits) {
  const char* op = "quant_gemv_tc";
  const Dtype dtype = model_dtype(x, op);
  const auto [M, K, N] = check_gemv(op, x, qweight, scales, zeros, bias, residual, 4, group_size, out);
  EXLSP_CHECK(quant_gemv_tc_supports(4, (int)K, (int)N, (int)group_size),
              "exlsp::quant_gemv_tc: needs K a multiple of 128, N and group_size multiples of 32 and K of "
              "group_size, got K=%s N=%s group_size=%s",
              to_str(K).c_str(), to_str(N).c_str(), to_str(group_size).c_str());
  float* partials_ptr = nullptr;
  int* counters_ptr = nullptr;
  if (splits > 1) {
    EXLSP_CHECK(partials && counters, "exlsp::quant_gemv_tc: splits > 1 needs partials and counters");
    const int64_t s = quant_gemv_tc_effective_splits((int)K, (int)splits);
    check_cuda(*partials, op, "partials");
    check_cuda(*counters, op, "counters");
    EXLSP_CHECK(partials->scalar_type() == at::kFloat && partials->is_contiguous() &&
                    partials->numel() >= s * std::min<int64_t>(M, 16) * N,
                "exlsp::quant_gemv_tc: partials must be contiguous float32 with at least %s elements",
                to_str(s * std::min<int64_t>(M, 16) * N).c_str());
    EXLSP_CHECK(counters->scalar_type() == at::kInt && counters->numel() >= N / 32,
                "exlsp::quant_gemv_tc: counters must be int32 with at least N / 32 = %s elements",
                to_str(N / 32).c_str());
    partials_ptr = partials->data_ptr<float>();
    counters_ptr = counters->data_ptr<int>();
  }
  if (M == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(launch_quant_gemv_tc(dtype, x.data_ptr(), qweight.data_ptr<int32_t>(), scales.data_ptr(),
                                    zeros.data_ptr(), opt_ptr(bias), opt_ptr(residual), out.data_ptr(), partials_ptr,
                                    counters_ptr, (int)M, (int)K, (int)N, (int)group_size, (int)splits,
                                    c10::cuda::getCurrentCUDAStream()),
               op);
}

int64_t quant_gemv_tc_splits(int64_t K, int64_t splits) {
  return quant_gemv_tc_effective_splits((int)K, (int)splits);
}

void set_launch_pdl(int64_t mode) {
  EXLSP_CHECK(mode >= -1 && mode <= 1, "exlsp::set_launch_pdl: mode must be -1 (auto), 0 (off) or 1 (on)");
  set_pdl_mode((int)mode);
}

void set_quant_gemv_tc_tuning(int64_t block_warps, bool wide_batches) {
  EXLSP_CHECK(block_warps == 0 || (block_warps >= 2 && block_warps <= 8),
              "exlsp::set_quant_gemv_tc_tuning: block_warps must be 0 (the launcher chooses) or 2..8, got %s",
              to_str(block_warps).c_str());
  set_gemv_tuning((int)block_warps, wide_batches);
}

// A column slice of a row-major matrix: unit column stride, rows `ld` apart (the dequantize op takes
// N-slices of a weight without a copy).
void check_column_slice(const Tensor& t, int64_t ld, const char* op, const char* name) {
  EXLSP_CHECK(t.is_cuda(), "exlsp::%s: %s must be a CUDA tensor", to_str(op).c_str(), to_str(name).c_str());
  EXLSP_CHECK(t.dim() == 2 && t.stride(1) == 1 && t.stride(0) == ld,
              "exlsp::%s: %s must be (rows, N) with unit column stride and row stride %s", to_str(op).c_str(),
              to_str(name).c_str(), to_str(ld).c_str());
}

void dequantize(const Tensor& qweight, const Tensor& scales, const Tensor& zeros, int64_t bits, int64_t group_size,
                Tensor& out) {
  const char* op = "dequantize";
  const Dtype dtype = model_dtype(scales, op);
  EXLSP_CHECK(qweight.scalar_type() == at::kInt, "exlsp::dequantize: qweight must be int32");
  EXLSP_CHECK(bits == 4 || bits == 8, "exlsp::dequantize: bits must be 4 or 8, got %s", to_str(bits).c_str());
  const int64_t K = qweight.size(0) * 32 / bits, N = qweight.size(1), ld = qweight.stride(0);
  EXLSP_CHECK(ld >= N, "exlsp::dequantize: qweight row stride %s is below its width %s", to_str(ld).c_str(),
              to_str(N).c_str());
  check_column_slice(qweight, ld, op, "qweight");
  EXLSP_CHECK(group_size > 0 && group_size % (32 / bits) == 0 && K % group_size == 0,
              "exlsp::dequantize: bad group_size %s for K=%s", to_str(group_size).c_str(), to_str(K).c_str());
  check_column_slice(scales, ld, op, "scales");
  check_column_slice(zeros, ld, op, "zeros");
  EXLSP_CHECK(zeros.scalar_type() == scales.scalar_type() && zeros.sizes() == scales.sizes(),
              "exlsp::dequantize: zeros must match scales in dtype and shape");
  EXLSP_CHECK(scales.device() == qweight.device() && zeros.device() == qweight.device(),
              "exlsp::dequantize: qweight, scales and zeros must be on one device");
  EXLSP_CHECK(scales.size(0) == K / group_size && scales.size(1) == N,
              "exlsp::dequantize: scales must be (K / group_size, N)");
  check_same(out, scales, op, "out");
  EXLSP_CHECK(out.is_contiguous() && out.size(0) == K && out.size(1) == N,
              "exlsp::dequantize: out must be a contiguous (K, N)");
  const c10::cuda::CUDAGuard guard(qweight.device());
  check_launch(launch_dequantize(dtype, qweight.data_ptr<int32_t>(), scales.data_ptr(), zeros.data_ptr(),
                                 out.data_ptr(), (int)K, (int)N, (int)ld, (int)bits, (int)group_size,
                                 c10::cuda::getCurrentCUDAStream()),
               op);
}

void paged_attention_decode(const Tensor& q, const Tensor& kv_cache_layer, const Tensor& block_tables,
                            const Tensor& seq_lens, double scale, int64_t sliding_window, int64_t partition_size,
                            int64_t queries_per_block, Tensor& out, Tensor& tmp_out, Tensor& tmp_max, Tensor& tmp_sum) {
  const char* op = "paged_attention_decode";
  const Dtype dtype = model_dtype(q, op);
  EXLSP_CHECK(q.is_cuda() && q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2),
              "exlsp::paged_attention_decode: q must be a CUDA (num_seqs, Hq, D) tensor with contiguous heads");
  check_same(kv_cache_layer, q, op, "kv_cache_layer");
  EXLSP_CHECK(kv_cache_layer.dim() == 5 && kv_cache_layer.size(0) == 2,
              "exlsp::paged_attention_decode: kv_cache_layer must be (2, num_blocks, block_size, Hkv, D)");
  const int64_t S = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = kv_cache_layer.size(3);
  EXLSP_CHECK(kv_cache_layer.size(4) == D, "exlsp::paged_attention_decode: head_dim of q and cache differ");
  EXLSP_CHECK(Hq % Hkv == 0, "exlsp::paged_attention_decode: Hq must be a multiple of Hkv");
  EXLSP_CHECK(decode_attention_supports((int)D, (int)(Hq / Hkv)),
              "exlsp::paged_attention_decode: unsupported head_dim %s or group %s", to_str(D).c_str(),
              to_str(Hq / Hkv).c_str());
  check_cuda(block_tables, op, "block_tables");
  check_cuda(seq_lens, op, "seq_lens");
  EXLSP_CHECK(block_tables.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt,
              "exlsp::paged_attention_decode: block_tables and seq_lens must be int32");
  EXLSP_CHECK(block_tables.size(0) >= S && seq_lens.size(0) >= S,
              "exlsp::paged_attention_decode: block_tables/seq_lens have fewer rows than q");
  EXLSP_CHECK(partition_size > 0 && partition_size <= 512 && partition_size % 8 == 0,
              "exlsp::paged_attention_decode: partition_size must be in (0, 512] and a multiple of 8");
  EXLSP_CHECK(queries_per_block >= 1 && queries_per_block <= 16,
              "exlsp::paged_attention_decode: queries_per_block must be in [1, 16]");
  check_same(out, q, op, "out");
  EXLSP_CHECK(out.sizes() == q.sizes(), "exlsp::paged_attention_decode: out must have q's shape");
  const int64_t P = tmp_max.size(-1);
  EXLSP_CHECK(tmp_out.scalar_type() == at::kFloat && tmp_max.scalar_type() == at::kFloat &&
                  tmp_sum.scalar_type() == at::kFloat,
              "exlsp::paged_attention_decode: scratch tensors must be float32");
  EXLSP_CHECK(tmp_out.numel() >= S * Hq * P * D && tmp_max.numel() >= S * Hq * P && tmp_sum.numel() >= S * Hq * P,
              "exlsp::paged_attention_decode: scratch tensors too small");
  if (S == 0) return;
  DecodeAttentionArgs a{};
  a.q = q.data_ptr();
  a.kv_cache = kv_cache_layer.data_ptr();
  a.block_tables = block_tables.data_ptr<int32_t>();
  a.seq_lens = seq_lens.data_ptr<int32_t>();
  a.out = out.data_ptr();
  a.tmp_out = tmp_out.data_ptr<float>();
  a.tmp_max = tmp_max.data_ptr<float>();
  a.tmp_sum = tmp_sum.data_ptr<float>();
  a.num_seqs = (int)S;
  a.num_q_heads = (int)Hq;
  a.num_kv_heads = (int)Hkv;
  a.head_dim = (int)D;
  a.num_blocks = (int)kv_cache_layer.size(1);
  a.block_size = (int)kv_cache_layer.size(2);
  a.max_blocks_per_seq = (int)block_tables.size(1);
  a.partition_size = (int)partition_size;
  a.num_partitions = (int)P;
  a.sliding_window = (int)sliding_window;
  a.queries_per_block = (int)queries_per_block;
  a.scale = (float)scale;
  a.q_stride_token = q.stride(0);
  const c10::cuda::CUDAGuard guard(q.device());
  check_launch(launch_decode_attention(dtype, a, c10::cuda::getCurrentCUDAStream()), op);
}

void rms_norm(const Tensor& x, const std::optional<Tensor>& residual, const Tensor& weight, double eps, Tensor& out,
              const std::optional<Tensor>& residual_out) {
  const char* op = "rms_norm";
  const Dtype dtype = model_dtype(x, op);
  check_cuda(x, op, "x");
  const int64_t H = x.size(-1), T = x.numel() / H;
  EXLSP_CHECK(H % 8 == 0 && H <= 8192,
              "exlsp::rms_norm: hidden size must be a multiple of 8 and <= 8192, got %s", to_str(H).c_str());
  check_same(weight, x, op, "weight");
  EXLSP_CHECK(weight.numel() == H, "exlsp::rms_norm: weight must have %s elements", to_str(H).c_str());
  if (residual) {
    check_same(*residual, x, op, "residual");
    EXLSP_CHECK(residual->numel() == x.numel(), "exlsp::rms_norm: residual must have x's shape");
  }
  check_same(out, x, op, "out");
  EXLSP_CHECK(out.numel() == x.numel(), "exlsp::rms_norm: out must have x's shape");
  if (residual_out) {
    check_same(*residual_out, x, op, "residual_out");
    EXLSP_CHECK(residual_out->numel() == x.numel(), "exlsp::rms_norm: residual_out must have x's shape");
  }
  if (T == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(launch_rms_norm(dtype, x.data_ptr(), opt_ptr(residual), weight.data_ptr(), out.data_ptr(),
                               residual_out ? residual_out->data_ptr() : nullptr, (int)T, (int)H, (float)eps,
                               c10::cuda::getCurrentCUDAStream()),
               op);
}

void check_heads(const Tensor& t, const Tensor& like, const char* op, const char* name) {
  EXLSP_CHECK(t.is_cuda() && t.dim() == 3 && t.stride(2) == 1 && t.stride(1) == t.size(2),
              "exlsp::%s: %s must be a CUDA (T, heads, D) tensor with contiguous heads (views of a fused qkv are fine)",
              to_str(op).c_str(), to_str(name).c_str());
  EXLSP_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(),
              "exlsp::%s: %s must share dtype and device with the others", to_str(op).c_str(), to_str(name).c_str());
}

// The one entry of the rotary / K-V write kernel; q, q_out, k_out or the cache may be absent.
void rotary_kv_impl(const char* op, const Tensor* q, const Tensor& k, const Tensor* v, const Tensor* positions,
                    const Tensor* cos_sin_cache, Tensor* q_out, Tensor* k_out, Tensor* kv_cache_layer,
                    const Tensor* slot_mapping) {
  const Dtype dtype = model_dtype(k, op);
  check_heads(k, k, op, "k");
  const int64_t T = k.size(0), Hkv = k.size(1), D = k.size(2);
  EXLSP_CHECK(D % 2 == 0, "exlsp::%s: head_dim must be even, got %s", to_str(op).c_str(), to_str(D).c_str());
  RotaryArgs a{};
  a.k = k.data_ptr();
  a.k_stride_token = k.stride(0);
  a.num_tokens = (int)T;
  a.num_kv_heads = (int)Hkv;
  a.head_dim = (int)D;
  a.apply_rotary = q != nullptr;
  if (q) {
    check_heads(*q, k, op, "q");
    EXLSP_CHECK(q->size(0) == T && q->size(2) == D,
                "exlsp::%s: q %s and k %s disagree", to_str(op).c_str(), to_str(q->sizes()).c_str(),
                to_str(k.sizes()).c_str());
    check_same(*q_out, k, op, "q_out");
    check_same(*k_out, k, op, "k_out");
    EXLSP_CHECK(q_out->sizes() == q->sizes() && k_out->sizes() == k.sizes(),
                "exlsp::%s: q_out/k_out must have the shapes of q/k", to_str(op).c_str());
    check_cuda(*positions, op, "positions");
    EXLSP_CHECK(positions->scalar_type() == at::kLong && positions->numel() == T,
                "exlsp::%s: positions must be int64 (T,)", to_str(op).c_str());
    check_cuda(*cos_sin_cache, op, "cos_sin_cache");
    EXLSP_CHECK(cos_sin_cache->dim() == 2 && cos_sin_cache->size(1) == D,
                "exlsp::%s: cos_sin_cache must be (max_pos, head_dim)", to_str(op).c_str());
    a.cos_sin_is_float = cos_sin_cache->scalar_type() == at::kFloat;
    EXLSP_CHECK(a.cos_sin_is_float || cos_sin_cache->scalar_type() == k.scalar_type(),
                "exlsp::%s: cos_sin_cache must be float32 or the model dtype", to_str(op).c_str());
    a.q = q->data_ptr();
    a.q_stride_token = q->stride(0);
    a.num_q_heads = (int)q->size(1);
    a.q_out = q_out->data_ptr();
    a.k_out = k_out->data_ptr();
    a.positions = positions->data_ptr<int64_t>();
    a.cos_sin = cos_sin_cache->data_ptr();
  }
  if (kv_cache_layer) {
    check_heads(*v, k, op, "v");
    EXLSP_CHECK(v->size(0) == T && v->size(1) == Hkv && v->size(2) == D,
                "exlsp::%s: v must have k's shape", to_str(op).c_str());
    check_same(*kv_cache_layer, k, op, "kv_cache_layer");
    EXLSP_CHECK(kv_cache_layer->dim() == 5 && kv_cache_layer->size(0) == 2 && kv_cache_layer->size(3) == Hkv &&
                    kv_cache_layer->size(4) == D,
                "exlsp::%s: kv_cache_layer must be (2, num_blocks, block_size, Hkv, D), got %s", to_str(op).c_str(),
                to_str(kv_cache_layer->sizes()).c_str());
    check_cuda(*slot_mapping, op, "slot_mapping");
    EXLSP_CHECK(slot_mapping->scalar_type() == at::kLong && slot_mapping->numel() == T,
                "exlsp::%s: slot_mapping must be int64 (T,)", to_str(op).c_str());
    a.v = v->data_ptr();
    a.v_stride_token = v->stride(0);
    a.kv_cache = kv_cache_layer->data_ptr();
    a.slot_mapping = slot_mapping->data_ptr<int64_t>();
    a.cache_half_elems = kv_cache_layer->numel() / 2;
  }
  if (T == 0) return;
  const c10::cuda::CUDAGuard guard(k.device());
  check_launch(launch_rotary_write_kv(dtype, a, c10::cuda::getCurrentCUDAStream()), op);
}

void rotary(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& cos_sin_cache, Tensor& q_out,
            Tensor& k_out) {
  rotary_kv_impl("rotary", &q, k, nullptr, &positions, &cos_sin_cache, &q_out, &k_out, nullptr, nullptr);
}

void write_kv(const Tensor& k, const Tensor& v, Tensor& kv_cache_layer, const Tensor& slot_mapping) {
  rotary_kv_impl("write_kv", nullptr, k, &v, nullptr, nullptr, nullptr, nullptr, &kv_cache_layer, &slot_mapping);
}

void rotary_write_kv(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
                     const Tensor& cos_sin_cache, Tensor& kv_cache_layer, const Tensor& slot_mapping, Tensor& q_out,
                     Tensor& k_out) {
  rotary_kv_impl("rotary_write_kv", &q, k, &v, &positions, &cos_sin_cache, &q_out, &k_out, &kv_cache_layer,
                 &slot_mapping);
}

void silu_and_mul(const Tensor& x, Tensor& out) {
  const char* op = "silu_and_mul";
  const Dtype dtype = model_dtype(x, op);
  check_cuda(x, op, "x");
  const int64_t I2 = x.size(-1), M = x.numel() / I2;
  EXLSP_CHECK(I2 % 16 == 0,
              "exlsp::silu_and_mul: last dim must be 2 * I with I a multiple of 8, got %s", to_str(I2).c_str());
  check_same(out, x, op, "out");
  EXLSP_CHECK(out.numel() == M * I2 / 2, "exlsp::silu_and_mul: out must be (M, I)");
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(launch_silu_and_mul(dtype, x.data_ptr(), out.data_ptr(), (int)M, (int)(I2 / 2),
                                   c10::cuda::getCurrentCUDAStream()),
               op);
}

}  // namespace
}  // namespace exlsp

TORCH_LIBRARY(exlsp, m) {
  m.def(
      "quant_gemv(Tensor x, Tensor qweight, Tensor scales, Tensor zeros, Tensor? bias, Tensor? residual, int bits, "
      "int group_size, Tensor(a!) out) -> ()");
  m.def(
      "quant_gemv_tc(Tensor x, Tensor qweight, Tensor scales, Tensor zeros, Tensor? bias, Tensor? residual, "
      "int group_size, Tensor(a!) out, Tensor(b!)? partials=None, Tensor(c!)? counters=None, int splits=1) -> ()");
  m.def("quant_gemv_tc_splits(int K, int splits) -> int", &exlsp::quant_gemv_tc_splits);
  m.def("set_launch_pdl(int mode) -> ()", &exlsp::set_launch_pdl);
  m.def("set_quant_gemv_tc_tuning(int block_warps, bool wide_batches) -> ()", &exlsp::set_quant_gemv_tc_tuning);
  m.def("dequantize(Tensor qweight, Tensor scales, Tensor zeros, int bits, int group_size, Tensor(a!) out) -> ()");
  m.def(
      "paged_attention_decode(Tensor q, Tensor kv_cache_layer, Tensor block_tables, Tensor seq_lens, float scale, "
      "int sliding_window, int partition_size, int queries_per_block, Tensor(a!) out, Tensor(b!) tmp_out, "
      "Tensor(c!) tmp_max, Tensor(d!) tmp_sum) -> ()");
  m.def(
      "rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps, Tensor(a!) out, Tensor(b!)? residual_out) "
      "-> ()");
  m.def(
      "rotary(Tensor q, Tensor k, Tensor positions, Tensor cos_sin_cache, Tensor(a!) q_out, Tensor(b!) k_out) -> ()");
  m.def("write_kv(Tensor k, Tensor v, Tensor(a!) kv_cache_layer, Tensor slot_mapping) -> ()");
  m.def(
      "rotary_write_kv(Tensor q, Tensor k, Tensor v, Tensor positions, Tensor cos_sin_cache, "
      "Tensor(a!) kv_cache_layer, Tensor slot_mapping, Tensor(b!) q_out, Tensor(c!) k_out) -> ()");
  m.def("silu_and_mul(Tensor x, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(exlsp, CUDA, m) {
  m.impl("quant_gemv", &exlsp::quant_gemv);
  m.impl("quant_gemv_tc", &exlsp::quant_gemv_tc);
  m.impl("dequantize", &exlsp::dequantize);
  m.impl("paged_attention_decode", &exlsp::paged_attention_decode);
  m.impl("rms_norm", &exlsp::rms_norm);
  m.impl("rotary", &exlsp::rotary);
  m.impl("write_kv", &exlsp::write_kv);
  m.impl("rotary_write_kv", &exlsp::rotary_write_kv);
  m.impl("silu_and_mul", &exlsp::silu_and_mul);
}
