// Warming the weights the step reads next into L2 (kernels.h L2Prefetch); one line into L1.
//
// A decode step reads ~4.5 GB in ~130 kernels, and DRAM idles wherever no kernel is streaming: the
// tail of every GEMV (its last blocks finishing), the attention (latency-bound at short contexts),
// the norms, the launch gaps. A GEMV warp that is done with its own loads asks L2 for its share of
// the next weight, so those bytes arrive during the idle stretch and the next GEMV finds them in L2.
// A prefetch has no architectural effect and reads only weights (which no kernel of the step
// writes), so it needs no synchronisation. Measured on an H100 (bench/NOTES.md 41): 4 MB per GEMV
// +3.8% decode at 2k; 12 MB and more lose (the lines are evicted before their reader comes).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace exlsp {

// Worker `worker` of `workers` (one per warp of the grid): lane l prefetches one 128-byte line at a
// time, lines interleaved over all lanes of all workers. (One cp.async.bulk.prefetch per worker
// measured 1.6% slower in the decode step.)
__device__ __forceinline__ void prefetch_l2_share(const L2Prefetch& pf, int worker, int workers, int lane) {
  const int64_t stride = (int64_t)workers * 32;
  // Unrolled: a runtime index into the kernel's parameter struct would copy it to every thread's
  // local memory (72 bytes per thread: the GEMV ran 20% slower).
#pragma unroll
  for (int r = 0; r < L2Prefetch::kMaxRanges; ++r) {
    const int64_t lines = (pf.bytes[r] + 127) / 128;
#pragma unroll 1
    for (int64_t l = (int64_t)worker * 32 + lane; l < lines; l += stride)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(pf.ptr[r] + l * 128));
  }
}

// One line into L1 ahead of its use (a hint: no architectural effect, so no null check needed by the
// hardware, but callers pass real addresses).
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

}  // namespace exlsp
