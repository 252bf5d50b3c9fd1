// The torch-facing ops of the quantized weights: the GEMVs of 1-16 rows (CUDA cores, tensor cores)
// and the dequantize of the prefill GEMM. Checks and messages as in torch_bindings.cpp.
#include <algorithm>
#include <array>

#include "binding_checks.h"

namespace exlsp {
namespace {

// Column strips (engine/quant/layout.py to_column_strips): (N / 16, K * bits / 32, 16) int32,
// contiguous. Returns N.
int64_t check_strips(const char* op, const Tensor& qweight) {
  EXLSP_CHECK(qweight.dim() == 3 && qweight.size(2) == 16 && qweight.is_contiguous(),
              "exlsp::%s: qweight must be in column strips, a contiguous (N / 16, K * bits / 32, 16) tensor "
              "(engine.quant.layout.to_column_strips), got %s",
              to_str(op).c_str(), to_str(qweight.sizes()).c_str());
  return qweight.size(0) * 16;
}

// Shared checks of the GEMV ops; returns (M, K, N). The tensor-core ops read the weight in column
// strips (`strips`), the CUDA-core op in the canonical (K * bits / 32, N) layout.
std::array<int64_t, 3> check_gemv(const char* op, const Tensor& x, const Tensor& qweight, const Tensor& scales,
                                  const Tensor& zeros, const std::optional<Tensor>& bias,
                                  const std::optional<Tensor>& residual, int64_t bits, int64_t group_size,
                                  const Tensor& out, int64_t out_cols = -1, const char* out_cols_name = "N",
                                  bool strips = false) {
  check_cuda(x, op, "x");
  EXLSP_CHECK(x.dim() == 2, "exlsp::%s: x must be (M, K), got %s", to_str(op).c_str(), to_str(x.sizes()).c_str());
  EXLSP_CHECK(bits == 4 || bits == 8,
              "exlsp::%s: bits must be 4 or 8, got %s", to_str(op).c_str(), to_str(bits).c_str());
  const int64_t M = x.size(0), K = x.size(1);
  check_cuda(qweight, op, "qweight");
  EXLSP_CHECK(qweight.scalar_type() == at::kInt, "exlsp::%s: qweight must be int32", to_str(op).c_str());
  if (strips) {
    check_strips(op, qweight);
  } else {
    EXLSP_CHECK(qweight.dim() == 2,
                "exlsp::%s: qweight must be the canonical (K * bits / 32, N), got %s", to_str(op).c_str(),
                to_str(qweight.sizes()).c_str());
  }
  const int64_t N = strips ? qweight.size(0) * 16 : qweight.size(1);
  const int64_t words = strips ? qweight.size(1) : qweight.size(0);
  if (out_cols < 0) out_cols = N;
  EXLSP_CHECK(words * 32 / bits == K,
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
  EXLSP_CHECK(out.dim() == 2 && out.size(0) == M && out.size(1) == out_cols,
              "exlsp::%s: out must be (M, %s) = (%s, %s), got %s", to_str(op).c_str(), out_cols_name,
              to_str(M).c_str(), to_str(out_cols).c_str(), to_str(out.sizes()).c_str());
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

// The K-split scratch of the tensor-core GEMV: partials and counters when splits > 1, else none.
std::pair<float*, int*> check_splits(const char* op, int64_t M, int64_t K, int64_t N,
                                     const std::optional<Tensor>& partials, const std::optional<Tensor>& counters,
                                     int64_t splits) {
  if (splits <= 1) return {nullptr, nullptr};
  EXLSP_CHECK(partials && counters, "exlsp::%s: splits > 1 needs partials and counters", to_str(op).c_str());
  const int64_t s = quant_gemv_tc_effective_splits((int)K, (int)splits);
  check_cuda(*partials, op, "partials");
  check_cuda(*counters, op, "counters");
  EXLSP_CHECK(partials->scalar_type() == at::kFloat && partials->numel() >= s * std::min<int64_t>(M, 16) * N,
              "exlsp::%s: partials must be contiguous float32 with at least %s elements", to_str(op).c_str(),
              to_str(s * std::min<int64_t>(M, 16) * N).c_str());
  EXLSP_CHECK(counters->scalar_type() == at::kInt && counters->numel() >= N / 32,
              "exlsp::%s: counters must be int32 with at least N / 32 = %s elements", to_str(op).c_str(),
              to_str(N / 32).c_str());
  return {partials->data_ptr<float>(), counters->data_ptr<int>()};
}

// What the GEMV prefetches into L2 after its own loads (kernels.h L2Prefetch): the tensors in order,
// `max_bytes` of them at most.
L2Prefetch check_l2_prefetch(const char* op, const Tensor& x, at::TensorList tensors, int64_t max_bytes) {
  EXLSP_CHECK(tensors.size() <= (size_t)L2Prefetch::kMaxRanges,
              "exlsp::%s: l2_prefetch takes at most %s tensors, got %s", to_str(op).c_str(),
              to_str(L2Prefetch::kMaxRanges).c_str(), to_str((int64_t)tensors.size()).c_str());
  EXLSP_CHECK(max_bytes >= 0, "exlsp::%s: l2_prefetch_bytes must be >= 0, got %s", to_str(op).c_str(),
              to_str(max_bytes).c_str());
  L2Prefetch pf;
  for (size_t i = 0; i < tensors.size() && max_bytes > 0; ++i) {
    const Tensor& t = tensors[i];
    EXLSP_CHECK(t.is_cuda() && t.device() == x.device() && t.is_contiguous(),
                "exlsp::%s: l2_prefetch tensor %s must be a contiguous CUDA tensor on x's device",
                to_str(op).c_str(), to_str((int64_t)i).c_str());
    const int64_t bytes = std::min<int64_t>(t.numel() * t.element_size(), max_bytes);
    pf.ptr[i] = static_cast<const char*>(t.data_ptr());
    pf.bytes[i] = bytes;
    max_bytes -= bytes;
  }
  return pf;
}

// The row scale of the RMSNorm before a GEMV (kernels.h GemvEpilogue::row_sumsq): x's rows are
// h * weight from quant_gemv_tc_add_norm, row_sumsq their (M, K / 32) tile sums of h^2.
void set_row_norm(const char* op, const Tensor& x, const std::optional<Tensor>& row_sumsq, double row_eps,
                  GemvEpilogue& epilogue) {
  if (!row_sumsq) return;
  const int64_t M = x.size(0), K = x.size(1);
  check_cuda(*row_sumsq, op, "row_sumsq");
  EXLSP_CHECK(row_sumsq->scalar_type() == at::kFloat && row_sumsq->dim() == 2 && row_sumsq->size(0) == M &&
                  row_sumsq->size(1) == K / 32 && row_sumsq->device() == x.device(),
              "exlsp::%s: row_sumsq must be float32 (M, K / 32) = (%s, %s) on x's device, got %s %s",
              to_str(op).c_str(), to_str(M).c_str(), to_str(K / 32).c_str(),
              to_str(row_sumsq->scalar_type()).c_str(), to_str(row_sumsq->sizes()).c_str());
  EXLSP_CHECK(K <= kRowNormMaxK, "exlsp::%s: row_sumsq needs K <= %s, got K=%s", to_str(op).c_str(),
              to_str((int64_t)kRowNormMaxK).c_str(), to_str(K).c_str());
  epilogue.row_sumsq = row_sumsq->data_ptr<float>();
  epilogue.row_eps = (float)row_eps;
}

// The tensor-core GEMV with one of its epilogues (kernels.h GemvEpilogue); shapes checked by the op.
void run_gemv_tc(const char* op, const Tensor& x, const Tensor& qweight, const Tensor& scales, const Tensor& zeros,
                 const std::optional<Tensor>& bias, const GemvEpilogue& epilogue, int64_t group_size, Tensor& out,
                 const std::optional<Tensor>& partials, const std::optional<Tensor>& counters, int64_t splits,
                 at::TensorList l2_prefetch, int64_t l2_prefetch_bytes) {
  const Dtype dtype = model_dtype(x, op);
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0) * 16;
  EXLSP_CHECK(quant_gemv_tc_supports(4, (int)K, (int)N, (int)group_size),
              "exlsp::%s: needs K a multiple of 128, N and group_size multiples of 32 and K of "
              "group_size, got K=%s N=%s group_size=%s",
              to_str(op).c_str(), to_str(K).c_str(), to_str(N).c_str(), to_str(group_size).c_str());
  const auto [partials_ptr, counters_ptr] = check_splits(op, M, K, N, partials, counters, splits);
  const L2Prefetch prefetch = check_l2_prefetch(op, x, l2_prefetch, l2_prefetch_bytes);
  if (M == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(launch_quant_gemv_tc(dtype, x.data_ptr(), qweight.data_ptr<int32_t>(), scales.data_ptr(),
                                    zeros.data_ptr(), opt_ptr(bias), epilogue, out.data_ptr(), partials_ptr,
                                    counters_ptr, (int)M, (int)K, (int)N, (int)group_size, (int)splits, prefetch,
                                    c10::cuda::getCurrentCUDAStream()),
               op);
}

// Tensor-core variant: 4-bit, integer zeros (the caller knows; the kernel does not check values).
void quant_gemv_tc(const Tensor& x, const Tensor& qweight, const Tensor& scales, const Tensor& zeros,
                   const std::optional<Tensor>& bias, const std::optional<Tensor>& residual, int64_t group_size,
                   Tensor& out, const std::optional<Tensor>& partials, const std::optional<Tensor>& counters,
                   int64_t splits, std::optional<at::TensorList> l2_prefetch, int64_t l2_prefetch_bytes,
                   const std::optional<Tensor>& row_sumsq, double row_eps) {
  const char* op = "quant_gemv_tc";
  check_gemv(op, x, qweight, scales, zeros, bias, residual, 4, group_size, out, -1, "N", true);
  GemvEpilogue epilogue;
  epilogue.residual = opt_ptr(residual);
  set_row_norm(op, x, row_sumsq, row_eps, epilogue);
  run_gemv_tc(op, x, qweight, scales, zeros, bias, epilogue, group_size, out, partials, counters, splits,
              l2_prefetch.value_or(at::TensorList()), l2_prefetch_bytes);
}

// x (M, K) @ [gate | up] (K, 2I) -> out (M, I) = silu(gate) * up, in one kernel.
void quant_gemv_tc_silu_mul(const Tensor& x, const Tensor& qweight, const Tensor& scales, const Tensor& zeros,
                            const std::optional<Tensor>& bias, int64_t group_size, Tensor& out,
                            const std::optional<Tensor>& partials, const std::optional<Tensor>& counters,
                            int64_t splits, std::optional<at::TensorList> l2_prefetch, int64_t l2_prefetch_bytes,
                            const std::optional<Tensor>& row_sumsq, double row_eps) {
  const char* op = "quant_gemv_tc_silu_mul";
  const int64_t N = check_strips(op, qweight);
  check_gemv(op, x, qweight, scales, zeros, bias, std::nullopt, 4, group_size, out, N / 2, "N / 2", true);
  GemvEpilogue epilogue;
  epilogue.kind = GemvEpilogueKind::kSiluMul;
  set_row_norm(op, x, row_sumsq, row_eps, epilogue);
  run_gemv_tc(op, x, qweight, scales, zeros, bias, epilogue, group_size, out, partials, counters, splits,
              l2_prefetch.value_or(at::TensorList()), l2_prefetch_bytes);
}

// x (M, K) @ [q | k | v] (K, (Hq + 2 Hkv) D) in one kernel: q rotated into q_out (M, Hq, D), k rotated
// and v written to their slots of kv_cache_layer (2, num_blocks, block_size, Hkv, D).
void quant_gemv_tc_rotary_kv(const Tensor& x, const Tensor& qweight, const Tensor& scales, const Tensor& zeros,
                             const std::optional<Tensor>& bias, int64_t group_size, const Tensor& positions,
                             const Tensor& cos_sin_cache, Tensor& kv_cache_layer, const Tensor& slot_mapping,
                             Tensor& q_out, const std::optional<Tensor>& partials,
                             const std::optional<Tensor>& counters, int64_t splits,
                             std::optional<at::TensorList> l2_prefetch, int64_t l2_prefetch_bytes,
                             const std::optional<Tensor>& row_sumsq, double row_eps) {
  const char* op = "quant_gemv_tc_rotary_kv";
  check_cuda(q_out, op, "q_out");
  EXLSP_CHECK(q_out.dim() == 3, "exlsp::%s: q_out must be (M, Hq, D), got %s", to_str(op).c_str(),
              to_str(q_out.sizes()).c_str());
  const int64_t M = x.size(0), Hq = q_out.size(1), D = q_out.size(2), N = check_strips(op, qweight);
  EXLSP_CHECK(D % 32 == 0 && N % D == 0 && (N / D - Hq) > 0 && (N / D - Hq) % 2 == 0,
              "exlsp::%s: qweight's %s columns are not q | k | v heads of D = %s (a multiple of 32) with Hq = %s",
              to_str(op).c_str(), to_str(N).c_str(), to_str(D).c_str(), to_str(Hq).c_str());
  const int64_t Hkv = (N / D - Hq) / 2;
  Tensor out2d = q_out.view({q_out.size(0), Hq * D});
  check_gemv(op, x, qweight, scales, zeros, bias, std::nullopt, 4, group_size, out2d, Hq * D, "Hq * D", true);
  GemvEpilogue epilogue;
  epilogue.kind = GemvEpilogueKind::kRotaryKv;
  RotaryArgs& r = epilogue.rotary;
  r.num_tokens = (int)M;
  r.num_q_heads = (int)Hq;
  r.num_kv_heads = (int)Hkv;
  r.head_dim = (int)D;
  r.apply_rotary = true;
  check_rotary_table(op, x, positions, cos_sin_cache, M, D, r);
  check_kv_cache(op, x, kv_cache_layer, slot_mapping, M, Hkv, D, r);
  set_row_norm(op, x, row_sumsq, row_eps, epilogue);
  run_gemv_tc(op, x, qweight, scales, zeros, bias, epilogue, group_size, out2d, partials, counters, splits,
              l2_prefetch.value_or(at::TensorList()), l2_prefetch_bytes);
}

// The GEMV before an RMSNorm, the norm finished by the GEMV after it (kernels.h kAddNorm): h = x W (+ bias)
// + residual -> residual_out (M, N); h * norm_weight -> out (M, N), at column norm_index[n] where given;
// the 32-column tiles' sums of h^2 -> sumsq_tiles (M, N / 32) float32.
void quant_gemv_tc_add_norm(const Tensor& x, const Tensor& qweight, const Tensor& scales, const Tensor& zeros,
                            const std::optional<Tensor>& bias, int64_t group_size, const Tensor& residual,
                            const Tensor& norm_weight, const std::optional<Tensor>& norm_index, Tensor& out,
                            Tensor& residual_out, Tensor& sumsq_tiles, const std::optional<Tensor>& partials,
                            const std::optional<Tensor>& counters, int64_t splits,
                            std::optional<at::TensorList> l2_prefetch, int64_t l2_prefetch_bytes) {
  const char* op = "quant_gemv_tc_add_norm";
  const auto [M, K, N] = check_gemv(op, x, qweight, scales, zeros, bias, residual, 4, group_size, out, -1, "N", true);
  check_same(residual_out, x, op, "residual_out");
  EXLSP_CHECK(residual_out.sizes() == out.sizes(), "exlsp::%s: residual_out must be (M, N)", to_str(op).c_str());
  check_same(norm_weight, x, op, "norm_weight");
  EXLSP_CHECK(norm_weight.numel() == N, "exlsp::%s: norm_weight must have N = %s elements, got %s",
              to_str(op).c_str(), to_str(N).c_str(), to_str(norm_weight.numel()).c_str());
  if (norm_index) {
    check_cuda(*norm_index, op, "norm_index");
    EXLSP_CHECK(norm_index->scalar_type() == at::kInt && norm_index->numel() == N &&
                    norm_index->device() == x.device(),
                "exlsp::%s: norm_index must be int32 with N = %s elements on x's device", to_str(op).c_str(),
                to_str(N).c_str());
  }
  check_cuda(sumsq_tiles, op, "sumsq_tiles");
  EXLSP_CHECK(sumsq_tiles.scalar_type() == at::kFloat && sumsq_tiles.dim() == 2 && sumsq_tiles.size(0) == M &&
                  sumsq_tiles.size(1) == N / 32 && sumsq_tiles.device() == x.device(),
              "exlsp::%s: sumsq_tiles must be float32 (M, N / 32) = (%s, %s) on x's device", to_str(op).c_str(),
              to_str(M).c_str(), to_str(N / 32).c_str());
  GemvEpilogue epilogue;
  epilogue.kind = GemvEpilogueKind::kAddNorm;
  epilogue.residual = residual.data_ptr();
  epilogue.norm_weight = norm_weight.data_ptr();
  epilogue.norm_index = norm_index ? norm_index->data_ptr<int32_t>() : nullptr;
  epilogue.residual_out = residual_out.data_ptr();
  epilogue.sumsq_tiles = sumsq_tiles.data_ptr<float>();
  run_gemv_tc(op, x, qweight, scales, zeros, bias, epilogue, group_size, out, partials, counters, splits,
              l2_prefetch.value_or(at::TensorList()), l2_prefetch_bytes);
}

int64_t quant_gemv_tc_splits(int64_t K, int64_t splits) {
  return quant_gemv_tc_effective_splits((int)K, (int)splits);
}

void set_quant_gemv_tc_tuning(int64_t block_warps, bool wide_batches, bool rolling) {
  EXLSP_CHECK(block_warps == 0 || (block_warps >= 2 && block_warps <= 8),
              "exlsp::set_quant_gemv_tc_tuning: block_warps must be 0 (the launcher chooses) or 2..8, got %s",
              to_str(block_warps).c_str());
  set_gemv_tuning((int)block_warps, wide_batches, rolling);
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
  // Column strips (a run of whole strips: N-slices of 16 columns) or a canonical column slice; the
  // scales and zeros are canonical column slices either way.
  EXLSP_CHECK(qweight.is_cuda(), "exlsp::dequantize: qweight must be a CUDA tensor");
  const bool strips = qweight.dim() == 3;
  if (strips) check_strips(op, qweight);
  const int64_t K = qweight.size(strips ? 1 : 0) * 32 / bits;
  const int64_t N = strips ? qweight.size(0) * 16 : qweight.size(1);
  const int64_t ld = strips ? scales.stride(0) : qweight.stride(0);  // the row stride of every slice
  EXLSP_CHECK(ld >= N, "exlsp::dequantize: %s row stride %s is below the width %s", strips ? "scales" : "qweight",
              to_str(ld).c_str(), to_str(N).c_str());
  if (!strips) check_column_slice(qweight, ld, op, "qweight");
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
                                 out.data_ptr(), (int)K, (int)N, (int)ld, (int)bits, (int)group_size, strips,
                                 c10::cuda::getCurrentCUDAStream()),
               op);
}

}  // namespace
}  // namespace exlsp

TORCH_LIBRARY_FRAGMENT(exlsp, m) {
  m.def(
      "quant_gemv(Tensor x, Tensor qweight, Tensor scales, Tensor zeros, Tensor? bias, Tensor? residual, int bits, "
      "int group_size, Tensor(a!) out) -> ()");
  m.def(
      "quant_gemv_tc(Tensor x, Tensor qweight, Tensor scales, Tensor zeros, Tensor? bias, Tensor? residual, "
      "int group_size, Tensor(a!) out, Tensor(b!)? partials=None, Tensor(c!)? counters=None, int splits=1, "
      "Tensor[]? l2_prefetch=None, int l2_prefetch_bytes=0, Tensor? row_sumsq=None, float row_eps=0.0) -> ()");
  m.def(
      "quant_gemv_tc_silu_mul(Tensor x, Tensor qweight, Tensor scales, Tensor zeros, Tensor? bias, int group_size, "
      "Tensor(a!) out, Tensor(b!)? partials=None, Tensor(c!)? counters=None, int splits=1, "
      "Tensor[]? l2_prefetch=None, int l2_prefetch_bytes=0, Tensor? row_sumsq=None, float row_eps=0.0) -> ()");
  m.def(
      "quant_gemv_tc_rotary_kv(Tensor x, Tensor qweight, Tensor scales, Tensor zeros, Tensor? bias, int group_size, "
      "Tensor positions, Tensor cos_sin_cache, Tensor(a!) kv_cache_layer, Tensor slot_mapping, Tensor(b!) q_out, "
      "Tensor(c!)? partials=None, Tensor(d!)? counters=None, int splits=1, Tensor[]? l2_prefetch=None, "
      "int l2_prefetch_bytes=0, Tensor? row_sumsq=None, float row_eps=0.0) -> ()");
  m.def(
      "quant_gemv_tc_add_norm(Tensor x, Tensor qweight, Tensor scales, Tensor zeros, Tensor? bias, int group_size, "
      "Tensor residual, Tensor norm_weight, Tensor? norm_index, Tensor(a!) out, Tensor(b!) residual_out, "
      "Tensor(c!) sumsq_tiles, Tensor(d!)? partials=None, Tensor(e!)? counters=None, int splits=1, "
      "Tensor[]? l2_prefetch=None, int l2_prefetch_bytes=0) -> ()");
  m.def("quant_gemv_tc_splits(int K, int splits) -> int", &exlsp::quant_gemv_tc_splits);
  m.def("set_quant_gemv_tc_tuning(int block_warps, bool wide_batches, bool rolling=True) -> ()",
        &exlsp::set_quant_gemv_tc_tuning);
  m.def("dequantize(Tensor qweight, Tensor scales, Tensor zeros, int bits, int group_size, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(exlsp, CUDA, m) {
  m.impl("quant_gemv", &exlsp::quant_gemv);
  m.impl("quant_gemv_tc", &exlsp::quant_gemv_tc);
  m.impl("quant_gemv_tc_silu_mul", &exlsp::quant_gemv_tc_silu_mul);
  m.impl("quant_gemv_tc_rotary_kv", &exlsp::quant_gemv_tc_rotary_kv);
  m.impl("quant_gemv_tc_add_norm", &exlsp::quant_gemv_tc_add_norm);
  m.impl("dequantize", &exlsp::dequantize);
}
