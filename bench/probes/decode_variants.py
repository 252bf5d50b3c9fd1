"""Probe: decode tok/s of the served step under kernel variants, one model, same weights and cache,
alternated: the default, and without the GEMV's fused epilogues (SiLU * up after gate|up, rotary +
K/V write after q|k|v).

    python bench/probes/decode_variants.py [--model llama3-8b] [--rounds 2]

Each variant is its own CUDA graph of the served decode step (bench/engine_step.py ServedStep): the
op seam (engine.ops.set_fused_ops) is read when the graph is captured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.bench_gpu import time_decode  # noqa: E402
from bench.engine_step import ServedStep, served_model  # noqa: E402
from bench.gpu_shapes import kernels_ready  # noqa: E402
from engine import ops  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if not kernels_ready("decode_variants"):
        return 1
    model, kv_cache = served_model(args.model)
    variants = {"default": True, "unfused": False}
    rows = []
    for r in range(args.rounds):
        for label, fused in variants.items():
            ops.set_fused_ops(fused)
            served = ServedStep(model, kv_cache)
            tok_s = {ctx: 1e3 / time_decode(served, ctx)[0] for ctx in (32, 2048, 8192)}
            rows.append((r, label, tok_s))
            del served
    ops.set_fused_ops(True)
    print(f"{torch.cuda.get_device_name()}  {args.model}  decode tok/s (graph, steps queued)")
    print(f"{'round':>5}  {'variant':14}  {'ctx 32':>8}  {'ctx 2k':>8}  {'ctx 8k':>8}")
    for r, label, tok_s in rows:
        print(f"{r:>5}  {label:14}  {tok_s[32]:8.1f}  {tok_s[2048]:8.1f}  {tok_s[8192]:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
