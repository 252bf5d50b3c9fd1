"""`exlsp bench`: the GPU benchmark of bench/bench_gpu.py (kernel GB/s against the device-copy
bandwidth, decode and prefill tokens/s, time to first token after a cached prefix, peak VRAM) on
random-weight GPTQ 4-bit models at real shapes. Needs a source checkout (the bench/ folder) and CUDA."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "GPU kernel and decode benchmarks (random-weight models at real shapes)"
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shapes",
        default="llama3-8b,qwen2.5-coder-7b,qwen2.5-coder-1.5b",
        help="comma-separated model shapes (bench/gpu_shapes.py); the first gets the full run",
    )
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--quick", action="store_true", help="decode at context 2k only")


def run(args: argparse.Namespace) -> int:
    if not (BENCH_DIR / "bench_gpu.py").is_file():
        print(f"exlsp bench: {BENCH_DIR} not found; run it from a source checkout", file=sys.stderr)
        return 1
    if args.model:
        print("exlsp bench: --model is ignored; benchmarks build random-weight models", file=sys.stderr)
    sys.path.insert(0, str(BENCH_DIR.parent))
    from bench.bench_gpu import main

    argv = (
        ["--models", args.shapes]
        + (["--json", args.json] if args.json else [])
        + (["--quick"] if args.quick else [])
    )
    return main(argv)
