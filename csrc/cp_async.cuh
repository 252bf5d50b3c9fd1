// cp.async (sm_80+): 16-byte copies from global to shared memory that run in the background until the
// block waits for their group; the attention kernels' K/V stages and the GEMV's staged input use them.
#pragma once

#include <cstdint>

namespace exlsp {

// valid false: the 16 bytes are zero-filled and gmem is not read (it must still be a mapped address).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid = true) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
// The same through L1 (.ca): for data every block of an SM copies, so that the SM asks L2 once. (With
// .cg, the tensor-core GEMV's 896 blocks of gate|up each fetched the same 512 bytes from L2 at once,
// a hot spot that cost ~2 us per call: bench/NOTES.md 73.)
__device__ __forceinline__ void cp_async16_ca(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace exlsp
