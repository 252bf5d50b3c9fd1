"""Probe: why cold prefill at 2k varies from run to run (31.9k to 36.3k tok/s on one H100 build,
bench/NOTES.md 80) while 8k holds: every one-pass prefill timed on its own, with the GPU's clocks,
power draw and temperature read right after it, then one 2k prefill's kernels by CUDA time.

    python bench/probes/prefill_clocks.py [--model llama3-8b] [--rounds 6]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.engine_step import cold_prompt, first_token_id, served_model  # noqa: E402
from bench.gpu_shapes import kernels_ready  # noqa: E402

QUERY = "clocks.sm,clocks.mem,power.draw,temperature.gpu"


def gpu_state() -> str:
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader"], capture_output=True, text=True
    )
    return done.stdout.strip() or done.stderr.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if not kernels_ready("prefill_clocks"):
        return 1
    torch.set_grad_enabled(False)
    model, kv_cache = served_model(args.model)
    inputs = {length: cold_prompt(model.config.vocab_size, length) for length in (2048, 8192)}
    first_token_id(model, kv_cache, *inputs[2048])  # warm-up: cuBLAS handles, allocator
    print(f"{torch.cuda.get_device_name()}  nvidia-smi: {QUERY}")
    for r in range(args.rounds):
        for length, (ids, pos, attn) in inputs.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            first_token_id(model, kv_cache, ids, pos, attn)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
            print(
                f"round {r} {length:5d}: {ms:7.2f} ms {length / ms * 1e3:8.0f} tok/s  {gpu_state()}",
                flush=True,
            )
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        first_token_id(model, kv_cache, *inputs[2048])
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
