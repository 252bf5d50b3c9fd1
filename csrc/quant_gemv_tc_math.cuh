// Register-level pieces of the tensor-core GEMV (quant_gemv_tc.cu): fp16/bf16 pair arithmetic on
// 32-bit registers, the m16n8k16 mma, and the one-LOP3 mask-and-or that turns 4-bit codes into fp16
// / bf16 values (the 1024.0 / 128.0 mantissa trick, per MmaTraits).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace exlsp {
namespace gemv_tc {

// The sum of v over the warp's 32 lanes, in every lane (the same tree in every call: deterministic).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
struct MmaTraits;
template <>
struct MmaTraits<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;      // fp16 1024.0 in both halves
  static constexpr uint32_t kSixteenth = 0x2C002C00u;  // fp16 1/16 in both halves
  static constexpr uint32_t kMinusOne = 0xBC00BC00u;   // fp16 -1.0 in both halves
  static constexpr uint32_t kMinus64 = 0xD400D400u;    // fp16 -64.0 in both halves
};
template <>
struct MmaTraits<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u;  // bf16 128.0 in both halves
};

__device__ __forceinline__ uint32_t fma2(uint32_t a, uint32_t b, uint32_t c, __half) {
  __half2 r = __hfma2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b), *reinterpret_cast<__half2*>(&c));
  return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t add2(uint32_t a, uint32_t b, __half) {
  __half2 r = __hadd2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t add2(uint32_t a, uint32_t b, __nv_bfloat16) {
  __nv_bfloat162 r = __hadd2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}
// The low or high half of a pair in both halves (the compiler folds it into the consumer's operand).
__device__ __forceinline__ uint32_t low2(uint32_t a, __half) {
  __half2 r = __low2half2(*reinterpret_cast<__half2*>(&a));
  return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t high2(uint32_t a, __half) {
  __half2 r = __high2half2(*reinterpret_cast<__half2*>(&a));
  return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t low2(uint32_t a, __nv_bfloat16) {
  __nv_bfloat162 r = __low2bfloat162(*reinterpret_cast<__nv_bfloat162*>(&a));
  return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t high2(uint32_t a, __nv_bfloat16) {
  __nv_bfloat162 r = __high2bfloat162(*reinterpret_cast<__nv_bfloat162*>(&a));
  return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b, __half) {
  __half2 r = __hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b, __nv_bfloat16) {
  __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// (w & kMask) | magic in one LOP3. Written plainly the compiler emits an AND and an OR: a LOP3 takes
// one immediate, and both constants are immediates. Here magic lives in a register.
template <uint32_t kMask>
__device__ __forceinline__ uint32_t mask_or(uint32_t w, uint32_t magic) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(w), "n"(kMask), "r"(magic));
  return r;
}

}  // namespace gemv_tc
}  // namespace exlsp
