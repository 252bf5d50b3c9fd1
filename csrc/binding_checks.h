// The checks every torch-facing op shares (torch_bindings.cpp, bindings_quant.cpp): dtype, device,
// contiguity and launch errors, each raised with the op's name and a message that says what was
// wrong.
#pragma once

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdio>
#include <string>

#include "kernels.h"

namespace exlsp {

using at::Tensor;

// Error messages are formatted with snprintf: streaming integers into TORCH_CHECK's message crashed
// (SIGSEGV) in this extension on the GPU machine's torch 2.11 build, while plain strings worked.
inline std::string to_str(const char* v) { return v; }
inline std::string to_str(const std::string& v) { return v; }
inline std::string to_str(int64_t v) { return std::to_string(v); }
inline std::string to_str(int v) { return std::to_string(v); }
inline std::string to_str(at::ScalarType v) { return c10::toString(v); }
inline std::string to_str(const c10::Device& v) { return v.str(); }
inline std::string to_str(at::IntArrayRef v) {
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

inline Dtype model_dtype(const Tensor& t, const char* op) {
  if (t.scalar_type() == at::kHalf) return Dtype::kHalf;
  if (t.scalar_type() == at::kBFloat16) return Dtype::kBFloat16;
  EXLSP_CHECK(false,
              "exlsp::%s: expected float16 or bfloat16, got %s", to_str(op).c_str(), to_str(t.scalar_type()).c_str());
  return Dtype::kHalf;  // unreachable
}

inline void check_cuda(const Tensor& t, const char* op, const char* name) {
  EXLSP_CHECK(t.is_cuda(), "exlsp::%s: %s must be a CUDA tensor", to_str(op).c_str(), to_str(name).c_str());
  EXLSP_CHECK(t.is_contiguous(), "exlsp::%s: %s must be contiguous", to_str(op).c_str(), to_str(name).c_str());
}

inline void check_same(const Tensor& t, const Tensor& like, const char* op, const char* name) {
  check_cuda(t, op, name);
  EXLSP_CHECK(t.scalar_type() == like.scalar_type(),
              "exlsp::%s: %s has dtype %s, expected %s", to_str(op).c_str(), to_str(name).c_str(),
              to_str(t.scalar_type()).c_str(), to_str(like.scalar_type()).c_str());
  EXLSP_CHECK(t.device() == like.device(),
              "exlsp::%s: %s is on %s, expected %s", to_str(op).c_str(), to_str(name).c_str(),
              to_str(t.device()).c_str(), to_str(like.device()).c_str());
}

inline void check_launch(cudaError_t err, const char* op) {
  EXLSP_CHECK(err == cudaSuccess,
              "exlsp::%s: kernel launch failed: %s", to_str(op).c_str(), to_str(cudaGetErrorString(err)).c_str());
}

inline const void* opt_ptr(const std::optional<Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

// The rotary table of T tokens: positions (T,) int64 and cos_sin_cache (max_pos, D) in float32 or
// the dtype of `like`; sets a's positions and table.
inline void check_rotary_table(const char* op, const Tensor& like, const Tensor& positions,
                               const Tensor& cos_sin_cache, int64_t T, int64_t D, RotaryArgs& a) {
  check_cuda(positions, op, "positions");
  EXLSP_CHECK(positions.scalar_type() == at::kLong && positions.numel() == T,
              "exlsp::%s: positions must be int64 (T,) with T = %s", to_str(op).c_str(), to_str(T).c_str());
  check_cuda(cos_sin_cache, op, "cos_sin_cache");
  EXLSP_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.size(1) == D,
              "exlsp::%s: cos_sin_cache must be (max_pos, head_dim = %s)", to_str(op).c_str(), to_str(D).c_str());
  a.cos_sin_is_float = cos_sin_cache.scalar_type() == at::kFloat;
  EXLSP_CHECK(a.cos_sin_is_float || cos_sin_cache.scalar_type() == like.scalar_type(),
              "exlsp::%s: cos_sin_cache must be float32 or the model dtype", to_str(op).c_str());
  a.positions = positions.data_ptr<int64_t>();
  a.cos_sin = cos_sin_cache.data_ptr();
}

// The paged cache of one layer, (2, num_blocks, block_size, Hkv, D) in the dtype of `like`, and the
// slots (T,) int64 of T tokens; sets a's cache and slots.
inline void check_kv_cache(const char* op, const Tensor& like, const Tensor& kv_cache_layer,
                           const Tensor& slot_mapping, int64_t T, int64_t Hkv, int64_t D, RotaryArgs& a) {
  check_same(kv_cache_layer, like, op, "kv_cache_layer");
  EXLSP_CHECK(kv_cache_layer.dim() == 5 && kv_cache_layer.size(0) == 2 && kv_cache_layer.size(3) == Hkv &&
                  kv_cache_layer.size(4) == D,
              "exlsp::%s: kv_cache_layer must be (2, num_blocks, block_size, Hkv = %s, D = %s), got %s",
              to_str(op).c_str(), to_str(Hkv).c_str(), to_str(D).c_str(), to_str(kv_cache_layer.sizes()).c_str());
  check_cuda(slot_mapping, op, "slot_mapping");
  EXLSP_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.numel() == T,
              "exlsp::%s: slot_mapping must be int64 (T,) with T = %s", to_str(op).c_str(), to_str(T).c_str());
  a.kv_cache = kv_cache_layer.data_ptr();
  a.slot_mapping = slot_mapping.data_ptr<int64_t>();
  a.cache_half_elems = kv_cache_layer.numel() / 2;
}

}  // namespace exlsp
