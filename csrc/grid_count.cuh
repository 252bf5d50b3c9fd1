// The last block to finish a piece of shared work finishes it: the tensor-core GEMV's K slices are
// summed by the last slice of a tile, the decode attention's partitions merged by the last
// partition of a (sequence, KV head). Each block counts itself in once its results are written.
#pragma once

namespace exlsp {

// Called by every thread of the block after writing its results: true, in every thread, for the
// last of `expected` blocks to count themselves in on `counter`. One thread's acq_rel atomic after
// the block's barrier orders all of the block's writes before its count (a release covers what the
// barrier ordered before it, as in CUTLASS's semaphores), and the last block's reads after the
// barrier that follows its count: no sequentially consistent fence (__threadfence) in every thread,
// on either side. Results written by other blocks are read through L2 (__ldcg), never a stale L1.
__device__ __forceinline__ bool count_in_last(int* counter, int expected) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    int before;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(before) : "l"(counter) : "memory");
    last = before == expected - 1;
  }
  __syncthreads();
  return last;
}

}  // namespace exlsp
