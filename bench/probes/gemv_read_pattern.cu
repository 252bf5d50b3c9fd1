// Probe: how fast can the GEMV's weight-read pattern alone go (no math)? Reads a (K/8, N) int32
// packed weight (4096 x 14336 4-bit, 29 MB), rotating 4 copies so L2 holds none, with
//   tc:   the tensor-core kernel's pattern (lane g,t reads row 4c+t, columns 4g..4g+3 of a 32-column
//         strip; 8 warps split K), 128 bytes contiguous per row per warp-load;
//   row:  a warp reads 512 contiguous bytes of one row (32 lanes x 16 B), 8 warps split K;
// each with __ldcs (evict-first) or __ldg, U loads in flight. Prints GB/s per variant.
#include <cstdio>
#include <cuda_runtime.h>

#define CHECK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

template <int U, bool STREAM, bool ROW>
__global__ void __launch_bounds__(256) read_kernel(const uint4* __restrict__ w, int rows, int n4, unsigned* sink) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  unsigned acc = 0;
  if (!ROW) {
    const int g = lane / 4, t = lane % 4;
    const int col4 = blockIdx.x * 8 + g;  // in uint4 units (4 columns)
    const int chunks = rows / 4, per = (chunks + 7) / 8;
    const int cb = warp * per, ce = min(chunks, cb + per);
    for (int c = cb; c < ce; c += U) {
      uint4 v[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (c + u < ce) v[u] = STREAM ? __ldcs(w + (size_t)((c + u) * 4 + t) * n4 + col4) : __ldg(w + (size_t)((c + u) * 4 + t) * n4 + col4);
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (c + u < ce) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
  } else {
    const int col4 = blockIdx.x * 32 + lane;
    const int block_rows = rows / gridDim.y, row0 = blockIdx.y * block_rows;  // 4 blocks share a strip
    const int per = (block_rows + 7) / 8, rb = row0 + warp * per, re = min(row0 + block_rows, rb + per);
    for (int r = rb; r < re; r += U) {
      uint4 v[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (r + u < re) v[u] = STREAM ? __ldcs(w + (size_t)(r + u) * n4 + col4) : __ldg(w + (size_t)(r + u) * n4 + col4);
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (r + u < re) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

template <int U, bool STREAM, bool ROW>
int run(const char* name, uint4** bufs, int rows, int n4, unsigned* sink) {
  dim3 grid(ROW ? n4 / 32 : n4 / 8, ROW ? 4 : 1);
  for (int i = 0; i < 8; ++i) read_kernel<U, STREAM, ROW><<<grid, 256>>>(bufs[i % 4], rows, n4, sink);
  CHECK(cudaGetLastError());
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float best = 1e9;
  for (int rep = 0; rep < 20; ++rep) {
    cudaEventRecord(a);
    for (int i = 0; i < 40; ++i) read_kernel<U, STREAM, ROW><<<grid, 256>>>(bufs[i % 4], rows, n4, sink);
    cudaEventRecord(b);
    CHECK(cudaEventSynchronize(b));
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    best = ms < best ? ms : best;
  }
  const double bytes = (double)rows * n4 * 16 * 40;
  printf("%-22s %7.1f us/call %7.0f GB/s (best of 20 x 40 calls)\n", name, best * 1e3 / 40, bytes / best / 1e6);
  return 0;
}

int main() {
  const int K = 4096, N = 14336, rows = K / 8, n4 = N / 4;
  uint4* bufs[4];
  unsigned* sink;
  for (auto& p : bufs) {
    CHECK(cudaMalloc(&p, (size_t)rows * n4 * 16));
    CHECK(cudaMemset(p, 0x5a, (size_t)rows * n4 * 16));
  }
  CHECK(cudaMalloc(&sink, 4));
  run<4, true, false>("tc-pattern ldcs U4", bufs, rows, n4, sink);
  run<4, false, false>("tc-pattern ldg U4", bufs, rows, n4, sink);
  run<8, true, false>("tc-pattern ldcs U8", bufs, rows, n4, sink);
  run<4, true, true>("row-512B ldcs U4", bufs, rows, n4, sink);
  run<8, true, true>("row-512B ldcs U8", bufs, rows, n4, sink);
  run<8, false, true>("row-512B ldg U8", bufs, rows, n4, sink);
  return 0;
}
