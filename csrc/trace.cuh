// Per-block timestamps for probing where a decode step's time goes inside and between kernels
// (bench/probes/kernel_trace.py). Compiled in only with -DEXLSP_TRACE (the probe builds such a
// library of its own); otherwise every EXLSP_TRACE_MARK is nothing and the kernels are unchanged.
//
// A mark: thread 0 of the block stores the global nanosecond timer, its SM and the point's number
// into a fixed slot, (region, block, point), with a plain store: no atomic, nothing the block waits
// for, so the kernel's end is not delayed. A region per kind, and for the GEMV per shape (K + N in
// 128s, mod 61: apart for the q|k|v, o, gate|up and down of Llama-3-8B and Qwen2.5-Coder 7B/1.5B),
// so the instances of one step land apart. Launches of one instance overwrite each other: after one
// traced step a region holds that instance's last launch (the last layer's), and a mark that only
// some launches reach (a split GEMV's last block of a tile) may be an earlier layer's, which
// kernel_trace.py drops. Each translation unit has its own buffer; trace_read collects them.
#pragma once

#include <cstdint>

#ifdef EXLSP_TRACE
#include <vector>

#include <cuda_runtime.h>

namespace exlsp {
namespace trace {

constexpr int kPoints = 8;          // marks per block
constexpr int kRegionBlocks = 1024;  // blocks traced per launch (the rest are not)
constexpr int kRegions = 64;

// 32 bytes: written by thread 0 as two 16-byte stores.
struct Record {
  uint64_t time_ns;      // %globaltimer
  uint32_t kind_point;   // kind << 8 | point
  uint32_t block;        // linear block index
  uint32_t sm;           // %smid
  uint32_t a, b;         // the kind's two shape numbers (GEMV: K, N)
  uint32_t grid_blocks;  // blocks in the launch
};

struct Buffer {
  Record records[kRegions][kRegionBlocks][kPoints];
};

// The getters of every translation unit's buffer (defined in elementwise.cu).
using AddressFn = void* (*)();
std::vector<AddressFn>& buffers();

namespace {  // per translation unit: its buffer, its marks, its registration

__device__ Buffer g_buffer;

__device__ __forceinline__ void mark(uint32_t kind, uint32_t a, uint32_t b, uint32_t point) {
  if (threadIdx.x != 0 || threadIdx.y != 0 || threadIdx.z != 0) return;
  const uint32_t block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (block >= (uint32_t)kRegionBlocks || point >= (uint32_t)kPoints) return;
  uint64_t t;
  uint32_t sm;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  const uint32_t region = kind == 1 ? 2 + (a / 128 + b / 128) % 61 : kind & 1;
  Record r{t, kind << 8 | point, block, sm, a, b, gridDim.x * gridDim.y * gridDim.z};
  const uint4* src = reinterpret_cast<const uint4*>(&r);
  uint4* dst = reinterpret_cast<uint4*>(&g_buffer.records[region][block][point]);
  dst[0] = src[0];
  dst[1] = src[1];
}

void* buffer_address() {
  void* p = nullptr;
  return cudaGetSymbolAddress(&p, g_buffer) == cudaSuccess ? p : nullptr;
}
struct Registrar {
  Registrar() { buffers().push_back(&buffer_address); }
};
Registrar registrar;

}  // namespace

}  // namespace trace
}  // namespace exlsp

// Kinds: 1 GEMV (a = K, b = N), 2 decode attention (a = b = 0), 3 RMSNorm (a = hidden).
#define EXLSP_TRACE_MARK(kind, a, b, point) ::exlsp::trace::mark((kind), (a), (b), (point))
#else
#define EXLSP_TRACE_MARK(kind, a, b, point) \
  do {                                      \
  } while (0)
#endif
