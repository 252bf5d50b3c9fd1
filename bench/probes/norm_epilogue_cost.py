"""Probe: what the RMSNorm's work costs inside the GEMVs beside it (engine/layers/norm.py
linear_add_norm), per call, on the Llama-3-8B decode shapes at batch 1.

    python bench/probes/norm_epilogue_cost.py [--rows 1]

Each line times one GEMV both ways in the same binary, 50 calls per CUDA graph (the decode step's
back-to-back, early-launched calls), median of 20 replays: the plain store against the producer's
residual add, weight and sums (quant_gemv_tc_add_norm) for o and down; the plain GEMV against the
same GEMV scaling its rows (row_sumsq) for q|k|v and gate|up (the fused epilogues as the step runs
them). Speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu_shapes import kernels_ready  # noqa: E402
from bench.gpu_timing import graph_of, median_ms  # noqa: E402
from engine.ops import cuda_quant_linear  # noqa: E402
from tests.kernels.gpu import random_packed_weight  # noqa: E402

CALLS = 50


def per_call_us(fn) -> float:
    graph = graph_of(fn, CALLS)
    return median_ms(graph.replay) * 1000 / CALLS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args(argv)
    if not kernels_ready("norm_epilogue_cost"):
        return 1
    ops, m, dt = torch.ops.exlsp, args.rows, torch.float16

    def weight(k, n, seed):
        return cuda_quant_linear.prepare_quant_weight(
            random_packed_weight(k, n, bits=4, group_size=128, dtype=dt, seed=seed)
        )

    print(f"{torch.cuda.get_device_name()}  rows {m}  us per call (graph of {CALLS})")
    print(f"{'GEMV':<22} {'plain':>8} {'norm':>8} {'delta':>8}")
    for name, k, n in (("o 4096x4096", 4096, 4096), ("down 14336x4096", 14336, 4096)):
        w = weight(k, n, k + n)
        x = torch.randn((m, k), device="cuda").to(dt)
        residual = torch.randn((m, n), device="cuda").to(dt)
        norm_weight = torch.ones(n, device="cuda", dtype=dt)
        out, res_out = (
            torch.empty((m, n), device="cuda", dtype=dt),
            torch.empty((m, n), device="cuda", dtype=dt),
        )
        sumsq = torch.empty((m, n // 32), device="cuda")
        split = cuda_quant_linear._tc_split_args(x, w)

        def plain(w=w, x=x, out=out, split=split):
            ops.quant_gemv_tc(x, w.qweight, w.scales, w.zeros, None, None, 128, out, *split)

        def fused(w=w, x=x, out=out, split=split, residual=residual, nw=norm_weight, r=res_out, s=sumsq):
            ops.quant_gemv_tc_add_norm(
                x, w.qweight, w.scales, w.zeros, None, 128, residual, nw, None, out, r, s, *split
            )

        a, b = per_call_us(plain), per_call_us(fused)
        print(f"{name:<22} {a:8.2f} {b:8.2f} {b - a:+8.2f}")
    sums = torch.rand((m, 4096 // 32), device="cuda") * 100  # both read a 4096-wide h
    for name, k, n, kind in (
        ("q|k|v 4096x6144", 4096, 6144, "plain"),
        ("gate|up 4096x28672", 4096, 28672, "silu"),
    ):
        w = weight(k, n, k + n)
        x = torch.randn((m, k), device="cuda").to(dt)
        width = n // 2 if kind == "silu" else n
        out = torch.empty((m, width), device="cuda", dtype=dt)
        split = cuda_quant_linear._tc_split_args(x, w)
        op = ops.quant_gemv_tc_silu_mul if kind == "silu" else ops.quant_gemv_tc
        lead = () if kind == "silu" else (None,)  # quant_gemv_tc takes a residual before group_size

        def call(row, w=w, x=x, out=out, split=split, op=op, lead=lead, s=sums):
            extra = {"row_sumsq": s, "row_eps": 1e-5} if row else {}
            op(x, w.qweight, w.scales, w.zeros, None, *lead, 128, out, *split, **extra)

        a, b = per_call_us(lambda: call(False)), per_call_us(lambda: call(True))
        print(f"{name:<22} {a:8.2f} {b:8.2f} {b - a:+8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
