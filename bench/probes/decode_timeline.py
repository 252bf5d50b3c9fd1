"""Probe: where a graphed decode step's time goes, kernel by kernel, from a CUPTI timeline.

    python bench/probes/decode_timeline.py [--model llama3-8b] [--ctx 2048] [--keystroke 16]

Replays the served decode step (bench/engine_step.py ServedStep) under torch.profiler with PDL off,
then on. With PDL off each kernel's duration is its own; the step's wall minus the union of kernel
intervals is launch gaps. With PDL on a kernel's interval includes the time its blocks wait for the
previous kernel, so durations overlap; what a kernel adds to the step is then its end minus the end
of the kernel before it (every exlsp kernel waits for its predecessor to complete before it
finishes, so kernels end in stream order). Prints per kernel family: calls per step, mean us, total
us per step (PDL off: durations; PDL on: those critical-path increments). With --keystroke N the step is a keystroke's instead: N new tokens after a cached
prefix of --ctx tokens, as one-token sequences through the same graph, the head on the last row
(what bench_gpu.py times as TTFT on the graph path).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.engine_step import (  # noqa: E402
    ServedStep,
    decode_metadata,
    served_model,
    suffix_metadata,
)
from bench.gpu_shapes import kernels_ready  # noqa: E402


def family(name: str) -> str:
    m = re.search(r"exlsp::(?:\(anonymous namespace\)::)?(\w+)(<[^>]*>)?", name)
    if m:
        # the GEMV's instances tell its layers apart (q|k|v, o, gate|up, down differ in batch width
        # and epilogue)
        return m.group(1) + (m.group(2) or "") if m.group(1) == "quant_gemv_tc_kernel" else m.group(1)
    return re.sub(r"<.*", "", name)[:48]


def timeline(step, ids, pos, attn, steps: int, rows: slice) -> tuple[float, list[tuple[str, float, float]]]:
    for _ in range(3):
        step.run(ids, pos, attn, rows)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step.run(ids, pos, attn, rows)
        torch.cuda.synchronize()
    kernels = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower():
            kernels.append((e.name, e.time_range.start, e.time_range.end))
    kernels.sort(key=lambda k: k[1])
    wall = (kernels[-1][2] - kernels[0][1]) / steps
    return wall, kernels


def union_us(kernels) -> float:
    busy, end = 0.0, -1e30
    for _, s, e in kernels:
        if s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy


def print_families(kernels, steps: int, increments: bool) -> None:
    """Per family: durations, or (increments) each kernel's end minus the previous kernel's end
    (the first kernel of each step follows the previous step's last)."""
    fam = collections.defaultdict(list)
    for i, (name, start, end) in enumerate(kernels):
        fam[family(name)].append(end - (kernels[i - 1][2] if increments and i else start))
    table = sorted(fam.items(), key=lambda kv: -sum(kv[1]))
    print(f"{'kernel':48s} {'calls/step':>10s} {'mean us':>8s} {'us/step':>8s}")
    for name, ds in table:
        print(f"{name:48s} {len(ds) / steps:10.1f} {sum(ds) / len(ds):8.2f} {sum(ds) / steps:8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--min-partition", type=int, help="decode attention tokens per partition (engine default: 128)"
    )
    parser.add_argument(
        "--separate-merge", action="store_true", help="merge decode partitions in their own kernel"
    )
    parser.add_argument("--keystroke", type=int, help="time a keystroke of this many new tokens instead")
    parser.add_argument("--unfused", action="store_true", help="without the GEMV's fused epilogues")
    parser.add_argument(
        "--norm-after-wait", action="store_true", help="the RMSNorm triggers after its wait, not at entry"
    )
    args = parser.parse_args()
    if not kernels_ready("decode_timeline"):
        return 1
    torch.set_grad_enabled(False)
    from engine.ops import cuda_attention

    if args.min_partition:  # every partition that long, none grown
        cuda_attention.MIN_PARTITION = args.min_partition
        cuda_attention.GROWN_PARTITION = 0
    if args.separate_merge:
        cuda_attention._merge_counters = lambda device, count: None
    torch.ops.exlsp.set_norm_trigger_at_entry(not args.norm_after_wait)
    model, kv_cache = served_model(args.model)
    if args.unfused:
        from engine import ops

        ops.set_fused_ops(False)
    ids, pos, attn = decode_metadata(args.ctx)
    rows = slice(None)
    if args.keystroke:
        from engine.cuda_graph import token_level_metadata

        n = args.keystroke
        ids = torch.randint(0, model.config.vocab_size, (n,), device="cuda")
        pos = torch.arange(args.ctx, args.ctx + n, device="cuda")
        attn, rows = token_level_metadata(suffix_metadata(args.ctx, n), n), slice(-1, None)
    for pdl in (0, 1):
        torch.ops.exlsp.set_launch_pdl(pdl)
        step = ServedStep(model, kv_cache)
        wall, kernels = timeline(step, ids, pos, attn, args.steps, rows)
        busy = union_us(kernels) / args.steps
        print(
            f"\nPDL {'on' if pdl else 'off'}: step wall {wall:.0f} us, kernels busy {busy:.0f} us, gaps {wall - busy:.0f} us"
        )
        del step
        print_families(kernels, args.steps, increments=bool(pdl))
    torch.ops.exlsp.set_launch_pdl(-1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
