"""Probe: the tensor-core GEMV of an earlier revision against the current one, on one machine.

    mkdir -p old && git show REV:csrc/quant_gemv_tc.cu > old/quant_gemv_tc.cu \\
        && git show REV:csrc/kernels.h > old/kernels.h
    python bench/probes/gemv_ab.py --old-source old     (on the device, carry "old")

(A revision whose kernel sits in csrc/quant_gemv_tc_kernel.cuh, from the split on, needs that file
in old/ too: old/ comes first on the include path.)

The old kernel is built beside the current build (bench/probes/gemv_ab_shim.cu: revisions up to
2b518fc). Each kernel runs as a CUDA graph of 40 launches over 4 weights in rotation (so L2 holds
none of them), PDL off in both, the two alternated 7 times; prints the median microseconds and GB/s
per shape at 1 and 16 rows, after checking that both give the same bits. bench_gpu.py's one-kernel
figure moves between machines by more than a 2% change in the kernel; this comparison does not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu_shapes import kernels_ready  # noqa: E402
from engine.quant.layout import to_column_strips  # noqa: E402
from tests.kernels.gpu import random_packed_weight  # noqa: E402

SHAPES = [(4096, 14336), (4096, 28672), (4096, 6144), (4096, 4096)]


def graph_timer(calls, repeats: int = 10):
    """A function timing one replay of a graph of `repeats` x calls: microseconds per call."""
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for call in calls:
            call()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(repeats):
                for call in calls:
                    call()
    torch.cuda.synchronize()

    def time_once() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / (repeats * len(calls))

    time_once()
    return time_once


def compare(old, rows: int, k: int, n: int) -> None:
    weights = [
        random_packed_weight(k, n, bits=4, group_size=128, dtype=torch.float16, seed=i) for i in range(4)
    ]
    x = torch.randn((rows, k), device="cuda").half()
    out_old = torch.empty((rows, n), device="cuda").half()
    out_new = torch.empty((rows, n), device="cuda").half()
    olds = [lambda w=w: old.gemv(x, w.qweight, w.scales, w.zeros, out_old, 128) for w in weights]
    news = [
        lambda w=w, q=to_column_strips(w.qweight): torch.ops.exlsp.quant_gemv_tc(
            x, q, w.scales, w.zeros, None, None, 128, out_new
        )
        for w in weights
    ]
    olds[0]()
    news[0]()
    torch.cuda.synchronize()
    assert torch.equal(out_old, out_new), "the two kernels disagree"
    time_old, time_new = graph_timer(olds), graph_timer(news)
    a, b = [], []
    for _ in range(7):
        a.append(time_old())
        b.append(time_new())
    nbytes = weights[0].qweight.numel() * 4 + weights[0].scales.numel() * 4  # codes, scales, zeros
    t_old, t_new = statistics.median(a), statistics.median(b)
    print(
        f"rows {rows:2d}  {k}x{n}: old {t_old:.2f} us ({nbytes / t_old / 1e3:.0f} GB/s)"
        f"  current {t_new:.2f} us ({nbytes / t_new / 1e3:.0f} GB/s)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--old-source", required=True, help="folder with the old quant_gemv_tc.cu and kernels.h"
    )
    args = parser.parse_args(argv)
    if not kernels_ready("gemv_ab"):
        return 1
    from torch.utils.cpp_extension import load

    here = Path(__file__).resolve().parent
    old = load(
        "exlsp_gemv_ab_old",
        [str(here / "gemv_ab_shim.cu")],
        extra_include_paths=[str(Path(args.old_source).resolve()), str(here.parents[1] / "csrc")],
        extra_cuda_cflags=["-O3", "--use_fast_math", "-gencode=arch=compute_90,code=sm_90"],
    )
    old.set_pdl(0)
    torch.ops.exlsp.set_launch_pdl(0)
    print(f"{torch.cuda.get_device_name()}: old vs current tensor-core GEMV, fp16, median of 7")
    for rows in (1, 16):
        for k, n in SHAPES:
            compare(old, rows, k, n)
    torch.ops.exlsp.set_launch_pdl(-1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
