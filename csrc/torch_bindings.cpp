// The torch-facing shim: schema of every torch.ops.exlsp op, dtype/shape/device checks with clear
// messages, the device guard and the current stream, then one call into a raw-pointer launcher
// (kernels.h). Callers allocate every output; ops return nothing. The quantized-weight ops live in
// bindings_quant.cpp (a fragment of the same library); the shared checks in binding_checks.h.
#include <algorithm>
#include <string>

#include "binding_checks.h"

#ifdef EXLSP_TRACE
#include <ATen/ops/empty.h>
#endif

namespace exlsp {
namespace {

void set_launch_pdl(int64_t mode) {
  EXLSP_CHECK(mode >= -1 && mode <= 1, "exlsp::set_launch_pdl: mode must be -1 (auto), 0 (off) or 1 (on)");
  set_pdl_mode((int)mode);
}

void set_attention_smem_limit(int64_t bytes) {
  EXLSP_CHECK(bytes >= 0 && bytes <= (1 << 20),
              "exlsp::set_decode_attention_smem_limit: bytes must be 0 (the device's limit) or a size up to 1 MB, got %s",
              to_str(bytes).c_str());
  set_decode_attention_smem_limit((int)bytes);
}

void paged_attention_decode(const Tensor& q, const Tensor& kv_cache_layer, const Tensor& block_tables,
                            const Tensor& seq_lens, double scale, int64_t sliding_window, int64_t partition_size,
                            int64_t queries_per_block, Tensor& out, Tensor& tmp_out, Tensor& tmp_max, Tensor& tmp_sum,
                            const std::optional<Tensor>& counters, const std::optional<Tensor>& out_index,
                            int64_t max_partition_size) {
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
  // Partitions grow by doubling (attention_merge.cuh partition_size_of), so the largest is
  // max_partition_size itself: what the kernel's shared memory is sized for.
  const int64_t growth = max_partition_size / partition_size;
  EXLSP_CHECK(max_partition_size == 0 || (max_partition_size <= 512 && max_partition_size % partition_size == 0 &&
                                          growth > 0 && (growth & (growth - 1)) == 0),
              "exlsp::paged_attention_decode: max_partition_size must be 0 (fixed partitions) or partition_size "
              "times a power of two, at most 512; got %s for partition_size %s",
              to_str(max_partition_size).c_str(), to_str(partition_size).c_str());
  EXLSP_CHECK(max_partition_size == 0 || queries_per_block == 1,
              "exlsp::paged_attention_decode: partitions grow on the per-sequence path only (queries_per_block 1)");
  check_same(out, q, op, "out");
  EXLSP_CHECK(out.sizes() == q.sizes(), "exlsp::paged_attention_decode: out must have q's shape");
  const int64_t P = tmp_max.size(-1);
  EXLSP_CHECK(tmp_out.scalar_type() == at::kFloat && tmp_max.scalar_type() == at::kFloat &&
                  tmp_sum.scalar_type() == at::kFloat,
              "exlsp::paged_attention_decode: scratch tensors must be float32");
  EXLSP_CHECK(tmp_out.numel() >= S * Hq * P * D && tmp_max.numel() >= S * Hq * P && tmp_sum.numel() >= S * Hq * P,
              "exlsp::paged_attention_decode: scratch tensors too small");
  if (counters) {
    check_cuda(*counters, op, "counters");
    EXLSP_CHECK(counters->scalar_type() == at::kInt && counters->numel() >= S * Hkv,
                "exlsp::paged_attention_decode: counters must be int32 with at least num_seqs * Hkv = %s elements",
                to_str(S * Hkv).c_str());
  }
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
  a.max_partition_size = (int)max_partition_size;
  a.num_partitions = (int)P;
  a.sliding_window = (int)sliding_window;
  a.queries_per_block = (int)queries_per_block;
  a.scale = (float)scale;
  a.q_stride_token = q.stride(0);
  a.counters = counters ? counters->data_ptr<int>() : nullptr;
  if (out_index) {
    check_cuda(*out_index, op, "out_index");
    EXLSP_CHECK(out_index->scalar_type() == at::kInt && out_index->dim() == 1 && out_index->numel() == Hq * D &&
                    out_index->is_contiguous() && out_index->device() == q.device(),
                "exlsp::paged_attention_decode: out_index must be a contiguous int32 (Hq * D,) = (%s,) on q's device",
                to_str(Hq * D).c_str());
  }
  a.out_index = out_index ? out_index->data_ptr<int32_t>() : nullptr;
  const c10::cuda::CUDAGuard guard(q.device());
  check_launch(launch_decode_attention(dtype, a, c10::cuda::getCurrentCUDAStream()), op);
}

void rms_norm(const Tensor& x, const std::optional<Tensor>& residual, const Tensor& weight, double eps, Tensor& out,
              const std::optional<Tensor>& residual_out, const std::optional<Tensor>& out_perm) {
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
  if (out_perm) {
    check_cuda(*out_perm, op, "out_perm");
    EXLSP_CHECK(out_perm->scalar_type() == at::kInt && out_perm->dim() == 1 && out_perm->size(0) == H &&
                    out_perm->is_contiguous() && out_perm->device() == x.device(),
                "exlsp::rms_norm: out_perm must be a contiguous int32 (H,) = (%s,) on x's device", to_str(H).c_str());
  }
  if (T == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(launch_rms_norm(dtype, x.data_ptr(), opt_ptr(residual), weight.data_ptr(), out.data_ptr(),
                               residual_out ? residual_out->data_ptr() : nullptr, (int)T, (int)H, (float)eps,
                               out_perm ? out_perm->data_ptr<int32_t>() : nullptr, c10::cuda::getCurrentCUDAStream()),
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
    check_rotary_table(op, k, *positions, *cos_sin_cache, T, D, a);
    a.q = q->data_ptr();
    a.q_stride_token = q->stride(0);
    a.num_q_heads = (int)q->size(1);
    a.q_out = q_out->data_ptr();
    a.k_out = k_out->data_ptr();
  }
  if (kv_cache_layer) {
    check_heads(*v, k, op, "v");
    EXLSP_CHECK(v->size(0) == T && v->size(1) == Hkv && v->size(2) == D,
                "exlsp::%s: v must have k's shape", to_str(op).c_str());
    check_kv_cache(op, k, *kv_cache_layer, *slot_mapping, T, Hkv, D, a);
    a.v = v->data_ptr();
    a.v_stride_token = v->stride(0);
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

void gather_columns(const Tensor& x, const Tensor& perm, Tensor& out) {
  const char* op = "gather_columns";
  const Dtype dtype = model_dtype(x, op);
  check_cuda(x, op, "x");
  EXLSP_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) % 8 == 0,
              "exlsp::gather_columns: x must be a contiguous (rows, cols) with cols a multiple of 8, got %s",
              to_str(x.sizes()).c_str());
  const int64_t cols = x.size(1);
  check_cuda(perm, op, "perm");
  EXLSP_CHECK(perm.scalar_type() == at::kInt && perm.dim() == 1 && perm.size(0) == cols && perm.is_contiguous() &&
                  perm.device() == x.device(),
              "exlsp::gather_columns: perm must be a contiguous int32 (cols,) = (%s,) on x's device",
              to_str(cols).c_str());
  check_same(out, x, op, "out");
  EXLSP_CHECK(out.is_contiguous() && out.sizes() == x.sizes(), "exlsp::gather_columns: out must be a contiguous %s",
              to_str(x.sizes()).c_str());
  EXLSP_CHECK(out.data_ptr() != x.data_ptr(), "exlsp::gather_columns: out must not alias x");
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(launch_gather_columns(dtype, x.data_ptr(), perm.data_ptr<int32_t>(), out.data_ptr(), (int)x.size(0),
                                     (int)cols, c10::cuda::getCurrentCUDAStream()),
               op);
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

#ifdef EXLSP_TRACE
// Probe builds only (csrc/trace.cuh, bench/probes/kernel_trace.py).
Tensor read_trace() {
  Tensor host = at::empty({(int64_t)trace_bytes()}, at::TensorOptions().dtype(at::kByte));
  check_launch(trace_read(host.data_ptr()), "trace_read");
  return host;
}
void clear_trace() { check_launch(trace_clear(), "trace_clear"); }
#endif

}  // namespace
}  // namespace exlsp

TORCH_LIBRARY(exlsp, m) {
#ifdef EXLSP_TRACE
  m.def("trace_read() -> Tensor", &exlsp::read_trace);
  m.def("trace_clear() -> ()", &exlsp::clear_trace);
#endif
  m.def("set_launch_pdl(int mode) -> ()", &exlsp::set_launch_pdl);
  m.def("set_norm_trigger_at_entry(bool entry) -> ()", &exlsp::set_norm_trigger_at_entry);
  m.def("set_decode_attention_smem_limit(int bytes) -> ()", &exlsp::set_attention_smem_limit);
  m.def("set_decode_attention_early_trigger(bool early) -> ()", &exlsp::set_decode_attention_early_trigger);
  m.def(
      "paged_attention_decode(Tensor q, Tensor kv_cache_layer, Tensor block_tables, Tensor seq_lens, float scale, "
      "int sliding_window, int partition_size, int queries_per_block, Tensor(a!) out, Tensor(b!) tmp_out, "
      "Tensor(c!) tmp_max, Tensor(d!) tmp_sum, Tensor(e!)? counters=None, Tensor? out_index=None, "
      "int max_partition_size=0) -> ()");
  m.def(
      "rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps, Tensor(a!) out, Tensor(b!)? residual_out, "
      "Tensor? out_perm=None) "
      "-> ()");
  m.def(
      "rotary(Tensor q, Tensor k, Tensor positions, Tensor cos_sin_cache, Tensor(a!) q_out, Tensor(b!) k_out) -> ()");
  m.def("write_kv(Tensor k, Tensor v, Tensor(a!) kv_cache_layer, Tensor slot_mapping) -> ()");
  m.def(
      "rotary_write_kv(Tensor q, Tensor k, Tensor v, Tensor positions, Tensor cos_sin_cache, "
      "Tensor(a!) kv_cache_layer, Tensor slot_mapping, Tensor(b!) q_out, Tensor(c!) k_out) -> ()");
  m.def("silu_and_mul(Tensor x, Tensor(a!) out) -> ()");
  m.def("gather_columns(Tensor x, Tensor perm, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(exlsp, CUDA, m) {
  m.impl("paged_attention_decode", &exlsp::paged_attention_decode);
  m.impl("rms_norm", &exlsp::rms_norm);
  m.impl("rotary", &exlsp::rotary);
  m.impl("write_kv", &exlsp::write_kv);
  m.impl("rotary_write_kv", &exlsp::rotary_write_kv);
  m.impl("silu_and_mul", &exlsp::silu_and_mul);
  m.impl("gather_columns", &exlsp::gather_columns);
}
