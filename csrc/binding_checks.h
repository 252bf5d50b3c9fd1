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

}  // namespace exlsp
