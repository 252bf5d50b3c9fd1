// The torch-facing ops of vocab_rows.cu: the greedy argmax over logits and the quantized embedding
// lookup. Checks and messages as in torch_bindings.cpp.
#include "binding_checks.h"

namespace exlsp {
namespace {

void argmax_rows(const Tensor& logits, Tensor& out) {
  const char* op = "argmax_rows";
  EXLSP_CHECK(logits.is_cuda() && logits.scalar_type() == at::kFloat && logits.dim() == 2 && logits.stride(1) == 1,
              "exlsp::argmax_rows: logits must be a CUDA float32 (rows, vocab) tensor with contiguous rows, got %s %s",
              to_str(logits.scalar_type()).c_str(), to_str(logits.sizes()).c_str());
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  EXLSP_CHECK(vocab >= 1 && vocab < INT32_MAX, "exlsp::argmax_rows: vocab must be in [1, 2^31 - 1), got %s",
              to_str(vocab).c_str());
  check_cuda(out, op, "out");
  EXLSP_CHECK(out.scalar_type() == at::kLong && out.numel() == rows && out.device() == logits.device(),
              "exlsp::argmax_rows: out must be int64 (%s,) on the logits' device", to_str(rows).c_str());
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(launch_argmax_rows(logits.data_ptr<float>(), out.data_ptr<int64_t>(), (int)rows, (int)vocab,
                                  logits.stride(0), c10::cuda::getCurrentCUDAStream()),
               op);
}

void quant_embedding(const Tensor& ids, const Tensor& codes, const Tensor& scales, const std::optional<Tensor>& offsets,
                     int64_t bits, Tensor& out) {
  const char* op = "quant_embedding";
  const Dtype dtype = model_dtype(scales, op);
  check_cuda(ids, op, "ids");
  EXLSP_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
              "exlsp::quant_embedding: ids must be int64 or int32, got %s", to_str(ids.scalar_type()).c_str());
  EXLSP_CHECK(bits == 4 || bits == 8, "exlsp::quant_embedding: bits must be 4 or 8, got %s", to_str(bits).c_str());
  check_cuda(codes, op, "codes");
  EXLSP_CHECK(codes.dim() == 2 && codes.scalar_type() == (bits == 8 ? at::kChar : at::kByte) &&
                  codes.device() == ids.device() && reinterpret_cast<uintptr_t>(codes.data_ptr()) % 16 == 0,
              "exlsp::quant_embedding: codes must be a 16-byte aligned (V, H * bits / 8) %s tensor on the ids' device",
              bits == 8 ? "int8" : "uint8");
  const int64_t V = codes.size(0), H = codes.size(1) * 8 / bits;
  check_cuda(scales, op, "scales");
  EXLSP_CHECK(scales.dim() == 2 && scales.size(0) == V && scales.size(1) >= 1 && H % scales.size(1) == 0 &&
                  (H / scales.size(1)) % 8 == 0 && scales.device() == ids.device(),
              "exlsp::quant_embedding: scales must be (V, H / group_size) = (%s, H / group) with group a multiple of 8",
              to_str(V).c_str());
  EXLSP_CHECK(bits == 8 || offsets.has_value(), "exlsp::quant_embedding: 4-bit codes need their offsets");
  if (offsets) {
    check_same(*offsets, scales, op, "offsets");
    EXLSP_CHECK(offsets->sizes() == scales.sizes(), "exlsp::quant_embedding: offsets must have the scales' shape");
  }
  check_same(out, scales, op, "out");
  EXLSP_CHECK(out.numel() == ids.numel() * H, "exlsp::quant_embedding: out must be (num_ids, %s)", to_str(H).c_str());
  const c10::cuda::CUDAGuard guard(ids.device());
  check_launch(launch_quant_embedding(dtype, ids.data_ptr(), ids.scalar_type() == at::kLong, (int)ids.numel(),
                                      codes.data_ptr(), scales.data_ptr(), opt_ptr(offsets), out.data_ptr(), (int)H,
                                      (int)(H / scales.size(1)), (int)bits, c10::cuda::getCurrentCUDAStream()),
               op);
}

}  // namespace
}  // namespace exlsp

TORCH_LIBRARY_FRAGMENT(exlsp, m) {
  m.def("argmax_rows(Tensor logits, Tensor(a!) out) -> ()");
  m.def("quant_embedding(Tensor ids, Tensor codes, Tensor scales, Tensor? offsets, int bits, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(exlsp, CUDA, m) {
  m.impl("argmax_rows", &exlsp::argmax_rows);
  m.impl("quant_embedding", &exlsp::quant_embedding);
}
