// Probe: can a GEMV's weight stream reach the copy's rate on an H200, and at what fixed cost per call?
// (bench/NOTES.md 81e: the tensor-core GEMV's batch-1 time fits t = 3.7 us + bytes / 3.45 TB/s there,
// 83% of the 4.18 TB/s copy, where an H100 streamed at its copy's rate with 2.95 us fixed.)
//
// Reads a 4-bit K x N weight in column strips (the GEMV's layout: each 16-column strip's K/8 x 16
// words stored whole, so a 32-column tile is one contiguous 64 KB at K = 4096), no math: every
// variant XORs every word it reads into one checksum, checked against the host's, so a variant that
// skips or repeats bytes fails. Each variant runs as a CUDA graph of 40 launches over enough copies
// of the weight that L2 holds none (as bench/gpu_timing.py copies_past_l2), the median of 15
// replays; printed: us per call, GB/s, % of a 1 GiB device copy (read + write counted), at three
// widths so that t = fixed + bytes / rate can be fitted per variant.
//
//   regs U W      the GEMV's loads: a block per tile, W warps split its K, each lane 16-byte vectors,
//                 U in flight, refilled as consumed (quant_gemv_tc_kernel.cuh's rolling loads)
//   bulk S B      a block per tile, its 64 KB streamed through S shared-memory stages of B bytes by
//                 one thread's bulk copies (cp.async.bulk, completing on an mbarrier): bytes in
//                 flight no longer bounded by registers
//   bulk-p S B k  the same with k blocks per SM, each reading one contiguous share of the whole
//                 weight (a persistent grid: no tail of uneven tiles; a real GEMV would reduce the
//                 tiles' K slices that a share splits)
//   ring/warp     each warp of a tile's block through its own ring, as the GEMV's bulk loads ran them
//                 (branch gemv-bulk-ring), with or without the lanes' scale copies (+sz)
//   prod          a producer warp streaming the tile through block-wide stages for W consumer warps
//   +work         16 dependent multiply-adds per vector, standing in for the GEMV's math; perm: the
//                 consumers' reads without bank conflicts (a chunk's vectors transposed at load)
//   copy          cudaMemcpyAsync moving the same bytes (half read, half written) in the same graph
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/gemv_stream bench/probes/gemv_stream.cu && /tmp/gemv_stream
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#define CHECK(x)                                                               \
  do {                                                                         \
    cudaError_t e = (x);                                                       \
    if (e != cudaSuccess) {                                                    \
      printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

constexpr int kTileBytes32 = 32 * 1024;  // one 16-column strip at K = 4096, in bytes
__device__ __forceinline__ unsigned fold(const uint4& v) { return v.x ^ v.y ^ v.z ^ v.w; }

// Math-like work on a 16-byte vector: N dependent integer multiply-adds over its words (the
// tensor-core GEMV spends ~35 instructions per vector on dequantization, permutes and mma), summed
// into a second sink that is not checked: what a feed costs once each vector is also worked on.
template <int N>
__device__ __forceinline__ unsigned busy(const uint4& v) {
  unsigned h = v.x;
#pragma unroll
  for (int i = 0; i < N; ++i) h = (h * 1664525u + ((i & 1) ? v.y : v.z)) ^ v.w;
  return N ? h : 0u;
}

// ---- the GEMV's loads: lane l reads 16 bytes of chunk c (256 bytes per strip per 32 k) from the
// tile's strip l / 16, as the tensor-core kernel's lanes g < 4 and g >= 4 read the two strips.
template <int U, int W, int WORK = 0>
__global__ void __launch_bounds__(W * 32) regs_kernel(const uint4* __restrict__ w, int k, unsigned* sink,
                                                      unsigned* busy_sink = nullptr) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int chunks = k / 32, strip_vectors = k / 8 * 16 / 4;  // uint4 per strip
  const uint4* tile = w + (size_t)blockIdx.x * 2 * strip_vectors + (lane / 16) * strip_vectors + lane % 16;
  const int per = (chunks + W - 1) / W, cb = warp * per, ce = min(chunks, cb + per);
  unsigned acc = 0, work = 0;
  uint4 v[U];
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (cb + u < ce) v[u] = __ldcs(tile + (size_t)(cb + u) * 16);
  for (int c = cb; c < ce; c += U) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (c + u < ce) {
        const uint4 x = v[u];
        if (c + U + u < ce) v[u] = __ldcs(tile + (size_t)(c + U + u) * 16);
        acc ^= fold(x);
        work += busy<WORK>(x);
      }
    }
  }
  atomicXor(sink, acc);
  if (WORK) atomicAdd(busy_sink, work);
}

// ---- bulk copies into a shared-memory ring
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned arrivals = 1) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(arrivals));
}
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra WAIT_%=;\n}" ::"r"(
          smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// Block b streams bytes [b * share, min(total, (b + 1) * share)) through S stages of B bytes.
template <int S, int B>
__global__ void __launch_bounds__(256) bulk_kernel(const uint8_t* __restrict__ w, size_t total, size_t share,
                                                   unsigned* sink) {
  extern __shared__ __align__(128) uint8_t ring[];
  __shared__ __align__(8) uint64_t full[S];
  const size_t begin = (size_t)blockIdx.x * share, end = min(total, begin + share);
  const int stages = begin < end ? (int)((end - begin + B - 1) / B) : 0;
  auto stage_bytes = [&](int i) { return (uint32_t)min((size_t)B, end - begin - (size_t)i * B); };
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) mbar_init(&full[s]);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    for (int i = 0; i < S && i < stages; ++i) bulk_load(ring + i * B, w + begin + (size_t)i * B, stage_bytes(i), &full[i]);
  }
  __syncthreads();
  unsigned acc = 0;
  for (int i = 0; i < stages; ++i) {
    const int slot = i % S;
    mbar_wait(&full[slot], (i / S) & 1);
    const uint4* v = reinterpret_cast<const uint4*>(ring + slot * B);
    for (int j = threadIdx.x; j < (int)stage_bytes(i) / 16; j += blockDim.x) acc ^= fold(v[j]);
    __syncthreads();  // every thread is done with the slot
    if (threadIdx.x == 0 && i + S < stages)
      bulk_load(ring + slot * B, w + begin + (size_t)(i + S) * B, stage_bytes(i + S), &full[slot]);
  }
  atomicXor(sink, acc);
}

// ---- per-warp rings, as the GEMV's bulk loads run them (quant_gemv_tc_kernel.cuh kBulk): a block of
// W warps per tile, warp w streaming its contiguous share of the tile's two strips through SLOTS
// slots, each filled by two bulk copies of C bytes (one per strip) after a proxy fence. kScales: each
// lane also copies 2 x 8 bytes of a scale table per slot by cp.async, counted on the slot's barrier
// with an arrive.noinc (1 + 32 arrivals), as the GEMV's scales and zeros (read, not checksummed).
template <int W, int SLOTS, int C, bool kScales>
__global__ void __launch_bounds__(W * 32) warp_ring_kernel(const uint8_t* __restrict__ w, int k,
                                                           const uint8_t* __restrict__ scales, int n, unsigned* sink) {
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ __align__(8) uint64_t full[W][SLOTS];
  constexpr int kSlotBytes = 2 * C + (kScales ? 32 * 16 : 0);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const size_t strip_bytes = (size_t)k / 8 * 16 * 4;
  const uint8_t* strip0 = w + (size_t)blockIdx.x * 2 * strip_bytes;
  const int pieces = (int)(strip_bytes / C);
  const int pb = warp * pieces / W, pe = (warp + 1) * pieces / W, count = pe - pb;
  uint8_t* ring = smem + warp * SLOTS * kSlotBytes;
  if (lane == 0) {
    for (int s = 0; s < SLOTS; ++s) mbar_init(&full[warp][s], kScales ? 33 : 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncwarp();
  auto fill = [&](int i, int slot) {
    uint8_t* dst = ring + slot * kSlotBytes;
    const size_t at = (size_t)(pb + i) * C;
    if (lane == 0) {
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(&full[warp][slot])),
                   "r"(2 * C)
                   : "memory");
      for (int st = 0; st < 2; ++st)
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                smem_addr(dst + st * C)),
            "l"(strip0 + st * strip_bytes + at), "r"(C), "r"(smem_addr(&full[warp][slot]))
            : "memory");
    }
    if constexpr (kScales) {
      const uint8_t* src = scales + ((size_t)((pb + i) % (k / 128)) * n + blockIdx.x * 32 + (lane / 4) * 4) * 2;
      const unsigned d = smem_addr(dst + 2 * C + lane * 16);
      asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(d), "l"(src));
      asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(d + 8), "l"(src + (size_t)(k / 128) * n * 2));
      asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_addr(&full[warp][slot])) : "memory");
    }
  };
  for (int i = 0; i < SLOTS && i < count; ++i) fill(i, i);
  unsigned acc = 0;
  for (int i = 0; i < count; ++i) {
    const int slot = i % SLOTS;
    mbar_wait(&full[warp][slot], (i / SLOTS) & 1);
    const uint4* v = reinterpret_cast<const uint4*>(ring + slot * kSlotBytes);
#pragma unroll
    for (int j = 0; j < 2 * C / 16 / 32; ++j) acc ^= fold(v[j * 32 + lane]);
    __syncwarp();
    if (i + SLOTS < count) fill(i + SLOTS, slot);
  }
  atomicXor(sink, acc);
}

// ---- a producer warp and W consumer warps per tile's block: the producer's lane 0 streams the tile
// through S stages of B bytes (half from each strip, the same K range), waiting for a stage's W
// consumers to release it (an mbarrier of W arrivals) before refilling it; consumer warp w takes
// batches w, w + W, ... of each stage (a batch: 4 chunks of both strips) and reads each vector as
// the tensor-core GEMV's lane (g, t) does: vector t * 4 + g % 4 of a chunk's 16 in its strip (the
// strip layout: quarter-warps meet 2-way bank conflicts), or g % 4 * 4 + t (kPermuted: a layout
// with each chunk's 4 x 4 vectors transposed at load, conflict-free). One wait and one release per
// stage per warp, no refill work in the consumers: what the per-warp rings paid per batch.
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

template <int W, int S, int B, bool kPermuted, int WORK>
__global__ void __launch_bounds__((W + 1) * 32) producer_kernel(const uint8_t* __restrict__ w, int k, unsigned* sink,
                                                                unsigned* busy_sink) {
  extern __shared__ __align__(128) uint8_t ring[];
  __shared__ __align__(8) uint64_t full[S], empty[S];
  constexpr int kHalf = B / 2;  // bytes of each strip per stage
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const size_t strip_bytes = (size_t)k / 8 * 64;
  const uint8_t* strip0 = w + (size_t)blockIdx.x * 2 * strip_bytes;
  const int stages = (int)(strip_bytes / kHalf);
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], W);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  unsigned acc = 0, work = 0;
  if (warp == W) {
    if (lane == 0) {
      for (int i = 0; i < stages; ++i) {
        const int slot = i % S;
        if (i >= S) mbar_wait(&empty[slot], (i / S - 1) & 1);
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(&full[slot])), "r"(B)
                     : "memory");
        for (int st = 0; st < 2; ++st)
          asm volatile(
              "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                  smem_addr(ring + slot * B + st * kHalf)),
              "l"(strip0 + st * strip_bytes + (size_t)i * kHalf), "r"(kHalf), "r"(smem_addr(&full[slot]))
              : "memory");
      }
    }
  } else {
    const int g = lane / 4, t = lane % 4;
    const int within = kPermuted ? g % 4 * 4 + t : t * 4 + g % 4;
    constexpr int kBatches = kHalf / 1024;
    for (int i = 0; i < stages; ++i) {
      const int slot = i % S;
      mbar_wait(&full[slot], (i / S) & 1);
      const uint4* base = reinterpret_cast<const uint4*>(ring + slot * B + (g < 4 ? 0 : kHalf)) + within;
      for (int b = warp; b < kBatches; b += W) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const uint4 x = base[(b * 4 + u) * 16];
          acc ^= fold(x);
          work += busy<WORK>(x);
        }
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[slot]);
    }
  }
  atomicXor(sink, acc);
  if (WORK) atomicAdd(busy_sink, work);
}

// ---- harness
struct Weights {
  std::vector<uint8_t*> copies;
  size_t bytes;
  unsigned checksum;  // XOR of every 32-bit word of one copy
};

Weights make_weights(size_t bytes, size_t l2_bytes) {
  Weights w{{}, bytes, 0};
  std::vector<uint32_t> host(bytes / 4);
  uint32_t x = 12345u + (uint32_t)bytes;
  for (auto& h : host) {
    x = x * 1664525u + 1013904223u;
    h = x;
    w.checksum ^= x;
  }
  const int n = (int)std::max<size_t>(2, 2 * l2_bytes / bytes + 1);
  for (int i = 0; i < n; ++i) {
    uint8_t* p;
    CHECK(cudaMalloc(&p, bytes));
    CHECK(cudaMemcpy(p, host.data(), bytes, cudaMemcpyHostToDevice));
    w.copies.push_back(p);
  }
  return w;
}

constexpr int kLaunches = 40, kReplays = 15;

// Median us per launch of a graph of kLaunches calls of `launch(copy index)`.
template <typename F>
float graph_us(cudaStream_t stream, int copies, F launch) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < kLaunches; ++i) launch(i % copies);
  CHECK(cudaStreamEndCapture(stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CHECK(cudaGraphLaunch(exec, stream));  // warm-up
  CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> us;
  for (int r = 0; r < kReplays; ++r) {
    CHECK(cudaEventRecord(a, stream));
    CHECK(cudaGraphLaunch(exec, stream));
    CHECK(cudaEventRecord(b, stream));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    us.push_back(ms * 1e3f / kLaunches);
  }
  std::sort(us.begin(), us.end());
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  return us[us.size() / 2];
}

double copy_gbs(cudaStream_t stream) {
  const size_t bytes = 1ull << 30;
  void *src, *dst;
  CHECK(cudaMalloc(&src, bytes));
  CHECK(cudaMalloc(&dst, bytes));
  CHECK(cudaMemset(src, 1, bytes));
  const float us = graph_us(stream, 1, [&](int) { CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream)); });
  CHECK(cudaFree(src));
  CHECK(cudaFree(dst));
  return 2.0 * bytes / us / 1e3;
}

struct Row {
  const char* name;
  float us;
};

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  unsigned *sink, *busy_sink;
  CHECK(cudaMalloc(&sink, 4));
  CHECK(cudaMalloc(&busy_sink, 4));
  const double copy = copy_gbs(stream);
  printf("%s  %d SMs  L2 %d MB  copy %.0f GB/s (1 GiB, read + write)\n", prop.name, prop.multiProcessorCount,
         prop.l2CacheSize >> 20, copy);
  const int sms = prop.multiProcessorCount, k = 4096;
  // Dynamic shared memory past 48 KB must be asked for per kernel.
  auto allow = [](auto kernel, int bytes) { CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)); };
  allow(bulk_kernel<4, 8192>, 4 * 8192);
  allow(bulk_kernel<4, 16384>, 4 * 16384);
  allow(bulk_kernel<8, 16384>, 8 * 16384);
  allow(bulk_kernel<12, 16384>, 12 * 16384);
  allow(bulk_kernel<6, 16384>, 6 * 16384);
  uint8_t* scale_table;  // scales and zeros of the widest weight, group 128
  CHECK(cudaMalloc(&scale_table, (size_t)k / 128 * 28672 * 2 * 2));
  CHECK(cudaMemset(scale_table, 0, (size_t)k / 128 * 28672 * 2 * 2));
  for (int n : {4096, 14336, 28672}) {
    Weights w = make_weights((size_t)k * n / 2, prop.l2CacheSize);
    const int copies = (int)w.copies.size(), tiles = n / 32;
    const size_t tile_bytes = 2 * (size_t)kTileBytes32;
    std::vector<Row> rows;
    bool ok = true;
    auto run = [&](const char* name, auto launch) {
      CHECK(cudaMemset(sink, 0, 4));
      launch(0);
      CHECK(cudaStreamSynchronize(stream));
      unsigned got;
      CHECK(cudaMemcpy(&got, sink, 4, cudaMemcpyDeviceToHost));
      if (got != w.checksum) {
        printf("  %-24s CHECKSUM %08x != %08x\n", name, got, w.checksum);
        ok = false;
      }
      rows.push_back({name, graph_us(stream, copies, launch)});
    };
    const auto as_vec = [&](int i) { return reinterpret_cast<const uint4*>(w.copies[i]); };
    run("regs U4 W6", [&](int i) { regs_kernel<4, 6><<<tiles, 6 * 32, 0, stream>>>(as_vec(i), k, sink); });
    run("regs U4 W8", [&](int i) { regs_kernel<4, 8><<<tiles, 8 * 32, 0, stream>>>(as_vec(i), k, sink); });
    run("regs U8 W4", [&](int i) { regs_kernel<8, 4><<<tiles, 4 * 32, 0, stream>>>(as_vec(i), k, sink); });
    // the GEMV's bulk loads: 1 KB copies are a batch of 4 chunks of one strip
    auto warp_ring = [&](auto kernel, int slot_bytes) {
      allow(kernel, 6 * slot_bytes);
      return [=](int i) { kernel<<<tiles, 6 * 32, 6 * slot_bytes, stream>>>(w.copies[i], k, scale_table, n, sink); };
    };
    // with math-like work per vector (16 multiply-adds and XORs), as the GEMV's warps have it
    run("regs U4 W6 +work", [&](int i) {
      regs_kernel<4, 6, 16><<<tiles, 6 * 32, 0, stream>>>(as_vec(i), k, sink, busy_sink);
    });
    auto producer = [&](auto kernel, int warps, int bytes) {
      allow(kernel, bytes);
      return [=](int i) { kernel<<<tiles, (warps + 1) * 32, bytes, stream>>>(w.copies[i], k, sink, busy_sink); };
    };
    run("prod W8 3 x 16K", producer(producer_kernel<8, 3, 16384, false, 0>, 8, 3 * 16384));
    run("prod W8 3 x 16K +work", producer(producer_kernel<8, 3, 16384, false, 16>, 8, 3 * 16384));
    run("prod W8 3 x 16K +work perm", producer(producer_kernel<8, 3, 16384, true, 16>, 8, 3 * 16384));
    run("prod W8 4 x 8K +work perm", producer(producer_kernel<8, 4, 8192, true, 16>, 8, 4 * 8192));
    run("prod W4 4 x 8K +work perm", producer(producer_kernel<4, 4, 8192, true, 16>, 4, 4 * 8192));
    run("ring/warp 2 x 1K", warp_ring(warp_ring_kernel<6, 2, 1024, false>, 2 * 2048));
    run("ring/warp 4 x 1K", warp_ring(warp_ring_kernel<6, 4, 1024, false>, 4 * 2048));
    run("ring/warp 4 x 1K +sz", warp_ring(warp_ring_kernel<6, 4, 1024, true>, 4 * 2560));
    run("ring/warp 2 x 2K", warp_ring(warp_ring_kernel<6, 2, 2048, false>, 2 * 4096));
    run("ring/warp 3 x 2K +sz", warp_ring(warp_ring_kernel<6, 3, 2048, true>, 3 * 4608));
    run("ring/warp 2 x 4K", warp_ring(warp_ring_kernel<6, 2, 4096, false>, 2 * 8192));
    run("ring/warp 2 x 4K +sz", warp_ring(warp_ring_kernel<6, 2, 4096, true>, 2 * 8704));
    run("bulk 4 x 8K", [&](int i) {
      bulk_kernel<4, 8192><<<tiles, 256, 4 * 8192, stream>>>(w.copies[i], w.bytes, tile_bytes, sink);
    });
    run("bulk 4 x 16K", [&](int i) {
      bulk_kernel<4, 16384><<<tiles, 256, 4 * 16384, stream>>>(w.copies[i], w.bytes, tile_bytes, sink);
    });
    auto persistent = [&](auto kernel, int stages, int per_sm) {
      const int grid = sms * per_sm;
      const size_t share = (w.bytes / grid + 15) / 16 * 16;
      return [=](int i) { kernel<<<grid, 256, stages * 16384, stream>>>(w.copies[i], w.bytes, share, sink); };
    };
    run("bulk-p 8 x 16K x1", persistent(bulk_kernel<8, 16384>, 8, 1));
    run("bulk-p 12 x 16K x1", persistent(bulk_kernel<12, 16384>, 12, 1));
    run("bulk-p 6 x 16K x2", persistent(bulk_kernel<6, 16384>, 6, 2));
    run("bulk-p 4 x 16K x3", persistent(bulk_kernel<4, 16384>, 4, 3));
    void* dst;
    CHECK(cudaMalloc(&dst, w.bytes / 2));
    rows.push_back({"copy, same bytes", graph_us(stream, copies, [&](int i) {
                      CHECK(cudaMemcpyAsync(dst, w.copies[i], w.bytes / 2, cudaMemcpyDeviceToDevice, stream));
                    })});
    CHECK(cudaFree(dst));
    printf("%d x %d (%.1f MB, %d tiles, %.2f per SM, %d copies)%s\n", k, n, w.bytes / 1e6, tiles, (double)tiles / sms,
           copies, ok ? "" : "  CHECKSUM FAILED");
    for (const Row& r : rows)
      printf("  %-22s %7.2f us %7.0f GB/s %5.1f%%\n", r.name, r.us, w.bytes / r.us / 1e3, 100.0 * w.bytes / r.us / 1e3 / copy);
    for (uint8_t* p : w.copies) CHECK(cudaFree(p));
  }
  return 0;
}
