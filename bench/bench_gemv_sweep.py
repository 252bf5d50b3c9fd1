"""Tensor-core GEMV tunings and K splits side by side, one run: the launcher's choices, fixed 8-warp
blocks, and no batches of 8.

    python bench/bench_gemv_sweep.py [--json out.json] [--decode llama3-8b]

Prints one line per (shape, rows) with GB/s of each variant and the copy bandwidth of the run;
with --decode, the model's decode tok/s (CUDA graph, contexts 2k and 8k) under each tuning.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_gpu import gemv_gbs, time_decode  # noqa: E402
from bench.engine_step import ServedStep, served_model  # noqa: E402
from bench.gpu_shapes import kernels_ready  # noqa: E402
from bench.gpu_timing import copy_bandwidth_gbs  # noqa: E402

SHAPES = [(4096, 14336), (4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096), (4096, 1024), (896, 1152)]
# (label, warps per block (0: the launcher chooses), batches of 8 for small grids)
TUNINGS = [("auto", 0, True), ("w8", 8, True), ("u4", 0, False)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--rows", default="1,8,16")
    parser.add_argument("--decode", help="also time this model's decode under each tuning (e.g. llama3-8b)")
    args = parser.parse_args(argv)
    if not kernels_ready("bench_gemv_sweep"):
        return 1
    torch.set_grad_enabled(False)
    ops = torch.ops.exlsp
    copy_bw = copy_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}  copy {copy_bw:.0f} GB/s")
    results = {"card": torch.cuda.get_device_name(), "copy_GBs": copy_bw, "rows": []}
    for k, n in SHAPES:
        for rows in map(int, args.rows.split(",")):
            line = {"k": k, "n": n, "rows": rows}
            for label, warps, wide in TUNINGS:
                ops.set_quant_gemv_tc_tuning(warps, wide)
                for splits in (1, 2, 3, 4):
                    r = gemv_gbs(k, n, rows, torch.float16, splits=splits)
                    line[f"{label}/s{r['splits']}"] = round(r["gbs"])
                line[f"{label}/engine"] = round(gemv_gbs(k, n, rows, torch.float16)["gbs"])
            ops.set_quant_gemv_tc_tuning(0, True)
            results["rows"].append(line)
            best = max((v, key) for key, v in line.items() if "/" in key)
            cells = "  ".join(f"{key}={v}" for key, v in line.items() if "/" in key)
            print(
                f"{k}x{n} m{rows}: best {best[1]} {best[0]} GB/s ({best[0] / copy_bw:.0%})  {cells}",
                flush=True,
            )
    if args.decode:
        results["decode"] = decode_by_tuning(args.decode)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def decode_by_tuning(name: str) -> dict:
    """Decode tok/s of one model, its step recaptured under each tuning (launch shapes live in the
    graph), same weights and cache."""
    model, kv_cache = served_model(name)
    out = {}
    for label, warps, wide in TUNINGS:
        torch.ops.exlsp.set_quant_gemv_tc_tuning(warps, wide)
        served = ServedStep(model, kv_cache)
        for ctx in (2048, 8192):
            out[f"{label}/ctx{ctx}"] = round(1e3 / time_decode(served, ctx)[0], 1)
        del served
    torch.ops.exlsp.set_quant_gemv_tc_tuning(0, True)
    print(f"{name} decode tok/s: " + "  ".join(f"{k}={v}" for k, v in out.items()), flush=True)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
