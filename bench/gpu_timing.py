"""Timing primitives of the GPU benchmarks: the median of CUDA-event timings, many calls captured in
one graph, the device's copy bandwidth and what a single call of a given size can reach (a copy of
the same bytes, the graph's launch gap), and how many operands to rotate over so that L2 holds none.
"""

from __future__ import annotations

import math
import statistics

import torch


def median_ms(fn, *, warmup: int = 3, iters: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_of(fn, repeats: int) -> torch.cuda.CUDAGraph:
    """`repeats` calls of fn captured in one graph (after a warm-up call)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    return graph


def copy_bandwidth_gbs() -> float:
    src = torch.randn(2**28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6  # bytes read + written


def copies_past_l2(nbytes: int, at_least: int = 4) -> int:
    """How many copies of an nbytes operand a benchmark rotates over so that L2 holds none of them
    when its turn comes again: together twice the L2 (a 4096 x 4096 weight is 8.4 MB, and four of
    them fit the H100's 50 MB L2)."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(at_least, math.ceil(2 * l2 / nbytes))


def same_bytes_copy_gbs(nbytes: int, repeats: int = 10) -> float:
    """GB/s of device copies moving nbytes each (half read, half written), rotating over buffers that
    together overflow L2, captured in one graph as gemv_gbs captures its calls: what a single call of
    that size can reach, launch and first-load latency included (bench/NOTES.md 79)."""
    num_buffers = copies_past_l2(nbytes)
    pairs = [
        (
            torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda"),
            torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda"),
        )
        for _ in range(num_buffers)
    ]

    def calls():
        for dst, src in pairs:
            dst.copy_(src)

    graph = graph_of(calls, repeats)
    ms = median_ms(graph.replay) / (repeats * num_buffers)
    return nbytes / ms / 1e6


def launch_gap_us(kernels: int = 40) -> float:
    """Microseconds per kernel of a graph of one-element kernels: what a call costs before any work."""
    t = torch.zeros(1, device="cuda")
    graph = graph_of(lambda: t.add_(1), kernels)
    return median_ms(graph.replay) / kernels * 1e3
