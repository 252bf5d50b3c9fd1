"""Probe: a model's prefill under variants of the prefill path, same weights and cache, the variants
alternated over rounds: cold prompts of 2k and 8k tokens in one pass (bench_gpu.py's prefill figure)
and an 8k prompt in 2048-token chunks (the engine's serving path).

    --compare scratch   the prefill GEMM's dequantized-weight scratch (engine/ops/cuda.py
                        DEQUANT_SCRATCH_ELEMENTS): 8, 16 and 32 MB (the default). A slice that
                        stays in L2 between its dequantize and its GEMM saves a DRAM round trip of
                        the fp16 weight, but gives cuBLAS fewer columns per call.
    --compare attention the prefill's causal attention kernel (engine/ops/cuda_prefill_attention.py):
                        cuDNN for calls of 512 new tokens or more (the default) or flash for all.
                        After a cached prefix (each chunk after the first) cuDNN's answer is two
                        parts merged. The kernel that ran is printed beside each variant.

    python bench/probes/prefill_variants.py [--model llama3-8b] [--compare scratch] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.engine_step import chunked_prefill, cold_prompt, first_token_id, served_model  # noqa: E402
from bench.gpu_shapes import kernels_ready  # noqa: E402
from bench.gpu_timing import median_ms  # noqa: E402
from engine.ops import cuda, cuda_prefill_attention  # noqa: E402

MB = 1 << 20


def scratch(nbytes: int) -> Callable[[], None]:
    def apply() -> None:
        cuda.DEQUANT_SCRATCH_ELEMENTS = nbytes // 2  # fp16 elements

    return apply


def attention(kernel: str) -> Callable[[], None]:
    return lambda: cuda_prefill_attention.set_prefill_attention(kernel)


COMPARISONS: dict[str, dict[str, Callable[[], None]]] = {
    "scratch": {"8 MB": scratch(8 * MB), "16 MB": scratch(16 * MB), "32 MB": scratch(32 * MB)},
    "attention": {"cudnn": attention("cudnn"), "flash": attention("flash")},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="scratch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not kernels_ready("prefill_variants"):
        return 1
    torch.set_grad_enabled(False)
    model, kv_cache = served_model(args.model)
    cases = {}
    for length in (2048, 8192):
        prompt = cold_prompt(model.config.vocab_size, length)
        cases[f"one pass {length}"] = (length, lambda p=prompt: first_token_id(model, kv_cache, *p))
    cases["8192 in 2048s"] = (8192, lambda: chunked_prefill(model, kv_cache, 8192, 2048))
    variants = COMPARISONS[args.compare]
    default_scratch = cuda.DEQUANT_SCRATCH_ELEMENTS
    runs: dict[tuple[str, str], list[float]] = {(v, c): [] for v in variants for c in cases}
    ran: dict[str, str | None] = {}
    try:
        for r in range(args.rounds):
            for variant in variants if r % 2 == 0 else reversed(list(variants)):
                variants[variant]()
                for name, (tokens, fn) in cases.items():
                    runs[variant, name].append(tokens * 1e3 / median_ms(fn, warmup=1, iters=5))
                ran[variant] = cuda_prefill_attention.last_kernel
    finally:
        cuda.DEQUANT_SCRATCH_ELEMENTS = default_scratch
        cuda_prefill_attention.set_prefill_attention("cudnn")
    print(f"{torch.cuda.get_device_name()}  {args.model}  prefill tok/s (median of {args.rounds} rounds)")
    print(f"{'variant':10s} {'attention':9s} " + " ".join(f"{name:>15s}" for name in cases))
    for variant in variants:
        cells = " ".join(f"{statistics.median(runs[variant, name]):15.0f}" for name in cases)
        print(f"{variant:10s} {ran[variant] or '-':9s} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
