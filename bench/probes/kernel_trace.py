"""Probe: inside a graphed decode step, when each block of the last layer's kernels starts, passes
its PDL wait, finishes its loads and its work, from per-block timestamps (csrc/trace.cuh).

    python bench/probes/kernel_trace.py [--model llama3-8b] [--ctx 32 2048 8192] [--steps 3]

Builds a library of its own with -DEXLSP_TRACE (engine/ops/build.py's EXLSP_NVCC_DEFINES; its own
build key, so the ordinary build stays), replays the served decode step, clears the marks, replays
one more step and reads them. Each kernel instance of the step keeps its last launch's marks: the
last layer's q|k|v, attention, o, gate|up and down, and the final RMSNorm. Thread 0 of a block
marks; times are %globaltimer in microseconds from the first mark of the q|k|v GEMV.
For each instance and mark: blocks that reached it, and the earliest, median and latest time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ["EXLSP_NVCC_DEFINES"] = "EXLSP_TRACE"  # before anything loads the kernels

from bench.engine_step import ServedStep, decode_metadata, served_model  # noqa: E402
from bench.gpu_shapes import kernels_ready  # noqa: E402

RECORD = np.dtype(
    [
        ("t", "<u8"),
        ("kind_point", "<u4"),
        ("block", "<u4"),
        ("sm", "<u4"),
        ("a", "<u4"),
        ("b", "<u4"),
        ("grid", "<u4"),
    ]
)
KINDS = {1: "gemv", 2: "attention", 3: "rms_norm"}
POINTS = {
    "gemv": ["entry", "waited", "loop done", "reduced", "not last", "stored"],
    "attention": ["entry", "staged", "waited", "data in", "scores", "softmax", "p.V out", "exit"],
    "rms_norm": ["entry", "waited", "stored"],
}


def instance_name(kind: str, a: int, b: int, hidden: int, inter: int, qkv: int) -> str:
    if kind == "gemv":
        return {
            (hidden, qkv): "q|k|v",
            (hidden, hidden): "o",
            (hidden, 2 * inter): "gate|up",
            (inter, hidden): "down",
        }.get((a, b), f"gemv {a}x{b}")
    return kind


def read_marks() -> np.ndarray:
    """The step's marks, without those a block left in an earlier layer's launch and did not
    overwrite in the last one (a split GEMV's last block per tile differs between launches)."""
    raw = torch.ops.exlsp.trace_read().numpy()
    recs = raw.view(RECORD)
    recs = recs[recs["t"] != 0]
    entry = {}
    for rec in recs[(recs["kind_point"] & 0xFF) == 0]:
        entry[(int(rec["kind_point"]) >> 8, int(rec["a"]), int(rec["b"]), int(rec["block"]))] = int(rec["t"])
    keep = [
        int(rec["t"])
        >= entry.get((int(rec["kind_point"]) >> 8, int(rec["a"]), int(rec["b"]), int(rec["block"])), 0)
        for rec in recs
    ]
    return recs[np.array(keep, dtype=bool)]


def report(recs: np.ndarray, config) -> None:
    hidden, inter = config.hidden_size, config.intermediate_size
    qkv = config.q_size + 2 * config.kv_size
    groups: dict[tuple, np.ndarray] = {}
    kinds = recs["kind_point"] >> 8
    for key in sorted(set(zip(kinds.tolist(), recs["a"].tolist(), recs["b"].tolist(), strict=True))):
        sel = (kinds == key[0]) & (recs["a"] == key[1]) & (recs["b"] == key[2])
        groups[key] = recs[sel]
    named = []
    for (kind_id, a, b), g in groups.items():
        kind = KINDS.get(kind_id, f"kind {kind_id}")
        named.append((int(g["t"].min()), instance_name(kind, a, b, hidden, inter, qkv), kind, g))
    named.sort(key=lambda item: item[0])
    qkv_first = [t for t, name, _, _ in named if name == "q|k|v"]
    t0 = qkv_first[0] if qkv_first else named[0][0]
    ts = np.unique(recs["t"])
    steps = np.diff(ts)
    print(f"timer: smallest step between distinct marks {steps[steps > 0].min() if len(steps) else 0} ns")
    print(f"{'instance':10s} {'mark':10s} {'blocks':>6s} {'first':>8s} {'median':>8s} {'last':>8s}  (us)")
    for _, name, kind, g in named:
        point = g["kind_point"] & 0xFF
        grid = int(g["grid"].max())
        for p, label in enumerate(POINTS.get(kind, [])):
            t = g["t"][point == p]
            if not len(t):
                continue
            us = (t.astype(np.int64) - t0) / 1e3
            print(
                f"{name:10s} {label:10s} {len(t):6d} {us.min():8.2f} {np.median(us):8.2f} {us.max():8.2f}"
                + (f"  grid {grid}, SMs {len(np.unique(g['sm']))}" if p == 0 else "")
            )
        if kind == "gemv":
            per_sm_spread(name, g, t0)


def per_sm_spread(name: str, g: np.ndarray, t0: int) -> None:
    """Whether a block's K loop ends later on an SM that holds more of the grid's blocks."""
    point = g["kind_point"] & 0xFF
    entries, done = g[point == 0], g[point == 2]
    blocks_on = {int(sm): int((entries["sm"] == sm).sum()) for sm in np.unique(entries["sm"])}
    by_count: dict[int, list[float]] = {}
    for rec in done:
        by_count.setdefault(blocks_on.get(int(rec["sm"]), 0), []).append((int(rec["t"]) - t0) / 1e3)
    parts = [
        f"{n} per SM: {len(v)} blocks, loop done median {np.median(v):.2f}"
        for n, v in sorted(by_count.items())
    ]
    print(f"{name:10s} " + "; ".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--ctx", type=int, nargs="+", default=[32, 2048, 8192])
    parser.add_argument("--steps", type=int, default=3, help="untraced warm-up steps before the traced one")
    parser.add_argument("--save", type=Path, help="also write each context's marks to DIR/marks_<ctx>.npy")
    parser.add_argument(
        "--norm-after-wait",
        choices=["attention", "mlp"],
        help="the layers' norms of this role trigger after their wait (decode_variants --compare entry)",
    )
    args = parser.parse_args()
    if not kernels_ready("kernel_trace"):
        return 1
    if not hasattr(torch.ops.exlsp, "trace_read"):
        print(
            "kernel_trace: the loaded library has no trace ops (built without EXLSP_TRACE)", file=sys.stderr
        )
        return 1
    torch.set_grad_enabled(False)
    model, kv_cache = served_model(args.model)
    if args.norm_after_wait:
        from bench.probes.decode_variants import mark_norm_roles, norm_entry_by_role

        mark_norm_roles(model)
        norm_entry_by_role(args.norm_after_wait)()
    step = ServedStep(model, kv_cache)
    for ctx in args.ctx:
        ids, pos, attn = decode_metadata(ctx)
        for _ in range(args.steps):
            step.run(ids, pos, attn)
        torch.cuda.synchronize()
        torch.ops.exlsp.trace_clear()
        step.run(ids, pos, attn)
        torch.cuda.synchronize()
        print(f"\n== {args.model}, decode at context {ctx} ==")
        marks = read_marks()
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            np.save(args.save / f"marks_{ctx}.npy", marks)
        report(marks, model.config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
