"""Probe: an 8k prompt prefilled in 512/1024/2048-token chunks (the engine's eager prefill path),
tok/s for each, on the model code of the current directory (so two checkouts can be compared on one
machine: run it from each checkout's root).

    python /path/to/bench/probes/chunked_prefill.py [--model llama3-8b]
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())

from bench.engine_step import chunked_prefill, served_model  # noqa: E402
from bench.gpu_shapes import kernels_ready  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama3-8b")
    args = parser.parse_args()
    if not kernels_ready("chunked_prefill"):
        return 1
    torch.set_grad_enabled(False)
    model, kv_cache = served_model(args.model)
    for chunk in (512, 1024, 2048):
        chunked_prefill(model, kv_cache, 8192, chunk)
        times = []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            chunked_prefill(model, kv_cache, 8192, chunk).item()
            times.append(time.perf_counter() - t0)
        print(
            f"{os.path.basename(os.getcwd())} chunk {chunk}: {8192 / sorted(times)[2]:.0f} tok/s", flush=True
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
