"""Probe: a model's prefill with each attention kernel (engine/ops/cuda_prefill_attention.py
set_prefill_attention), same weights and cache, the kernels alternated over rounds: cold prompts of
2k and 8k tokens in one pass (bench_gpu.py's prefill figure) and an 8k prompt in 2048-token chunks
(the engine's serving path: each chunk after the first attends to a cached prefix, where cuDNN's
answer is two parts merged).

    python bench/probes/prefill_attention.py [--model llama3-8b] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.bench_gpu import median_ms  # noqa: E402
from bench.engine_step import BLOCK_SIZE, chunked_prefill, first_token_id, served_model  # noqa: E402
from bench.gpu_shapes import kernels_ready  # noqa: E402
from engine.models.base import dense_attention_metadata  # noqa: E402
from engine.ops import cuda_prefill_attention  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not kernels_ready("prefill_attention"):
        return 1
    torch.set_grad_enabled(False)
    model, kv_cache = served_model(args.model)
    cases = {}
    for length in (2048, 8192):
        ids = torch.randint(0, model.config.vocab_size, (length,), device="cuda")
        pos = torch.arange(length, device="cuda")
        attn = dense_attention_metadata(1, length, BLOCK_SIZE, torch.device("cuda"))
        cases[f"one pass {length}"] = (
            length,
            lambda i=ids, p=pos, a=attn: first_token_id(model, kv_cache, i, p, a),
        )
    cases["8192 in 2048s"] = (8192, lambda: chunked_prefill(model, kv_cache, 8192, 2048))
    kernels = cuda_prefill_attention.KERNELS
    runs = {(k, c): [] for k in kernels for c in cases}
    ran = {}
    try:
        for r in range(args.rounds):
            for kernel in kernels if r % 2 == 0 else reversed(kernels):
                cuda_prefill_attention.set_prefill_attention(kernel)
                for name, (tokens, fn) in cases.items():
                    runs[kernel, name].append(tokens * 1e3 / median_ms(fn, warmup=1, iters=5))
                    ran[kernel] = cuda_prefill_attention.last_kernel
    finally:
        cuda_prefill_attention.set_prefill_attention("cudnn")
    print(f"{torch.cuda.get_device_name()}  {args.model}  prefill tok/s (median of rounds)")
    print(f"{'kernel':8s} {'ran':8s} " + " ".join(f"{name:>15s}" for name in cases))
    for kernel in kernels:
        cells = " ".join(f"{statistics.median(runs[kernel, name]):15.0f}" for name in cases)
        print(f"{kernel:8s} {ran[kernel] or '-':8s} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
