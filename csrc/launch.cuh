// Kernel launches with programmatic dependent launch (PDL, sm_90+).
//
// A decode step is ~10 small kernels per layer; between two of them the GPU drains one grid and
// ramps up the next, a microsecond or more each time. With PDL the next kernel is launched while the
// current one still runs: it does the part that needs nothing from its predecessor (the GEMV issues
// its first weight loads), then waits in pdl_wait() until the predecessor has finished and its
// writes are visible.
//
// The rule every kernel launched through launch_pdl() follows, which keeps this race-free:
//   - before pdl_wait(): read only data no kernel of the step writes (weights, scales), write nothing;
//   - pdl_wait() waits for the predecessor's completion (not its trigger), so where a kernel
//     triggers decides only how early its dependents may start their own pre-wait part. Most
//     trigger right after their wait. The RMSNorm triggers at entry: it writes nothing before its
//     wait either, and a norm block is tiny, so the GEMV after it is launched while the GEMV before
//     it still runs and requests its first weights in that GEMV's tail (norm_trigger_at_entry).
//     Then three grids overlap; correctness holds the same way, since every wait is for completion,
//     and a grid completes only after its own wait, i.e. after its predecessor.
// Kernels launched the ordinary way (torch's, cuBLAS) are unaffected: they start after the previous
// kernel completes, as always. Before sm_90 pdl_wait/pdl_trigger compile to nothing and launches are
// ordinary.
#pragma once

#include <cuda_runtime.h>

namespace exlsp {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// -1: on where the device supports it (the default); 0: off (for comparisons); 1: on.
inline int& pdl_mode() {
  static int mode = -1;
  return mode;
}

// Whether the RMSNorm triggers its dependents at entry (the default) or after its wait. H100,
// Llama-3-8B decode, graph steps queued: 453-454 / 413-414 / 345-346 tok/s at ctx 32 / 2k / 8k
// against 447-449 / 410-411 / 339 after the wait (bench/NOTES.md 57).
inline bool& norm_trigger_at_entry() {
  static bool entry = true;
  return entry;
}

inline bool pdl_enabled() {
  if (pdl_mode() >= 0) return pdl_mode() == 1;
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  return major >= 9;
}

// An attribute of the current device, asked once per device (`fallback` past 64 devices).
template <cudaDeviceAttr kAttr>
inline int device_attribute(int fallback) {
  static int cached[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) return fallback;
  if (!cached[dev]) cudaDeviceGetAttribute(&cached[dev], kAttr, dev);
  return cached[dev];
}

// Streaming multiprocessors of the current device, for the launchers that size their grids by it.
inline int sm_count() { return device_attribute<cudaDevAttrMultiProcessorCount>(132); }

template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = pdl_enabled() ? 1 : 0;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = 1;
  cudaError_t err = cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
  return err != cudaSuccess ? err : cudaGetLastError();
}

}  // namespace exlsp
