"""Probe: a model's prefill under variants of the prefill path, same weights and cache, the variants
alternated over rounds: cold prompts of 2k and 8k tokens in one pass (bench_gpu.py's prefill figure)
and an 8k prompt in 2048-token chunks (the engine's serving path).

    --compare scratch   the prefill GEMM's dequantized-weight scratch (engine/ops/cuda_quant_linear.py
                        DEQUANT_SCRATCH_ELEMENTS): 8, 16 and 32 MB (the default). A slice that
                        stays in L2 between its dequantize and its GEMM saves a DRAM round trip of
                        the fp16 weight, but gives cuBLAS fewer columns per call.
    --compare attention the prefill's causal attention kernel (engine/ops/cuda_prefill_attention.py):
                        cuDNN for the shapes it takes (the default: cudnn_takes) or flash for all.
                        After a cached prefix (each chunk after the first) cuDNN's answer is two
                        parts merged. The kernel that ran is printed beside each variant.

With --profile, each variant's 2k pass is then profiled once: its wall time against the sum of its
kernels' CUDA time (the difference is time the GPU waited on the host) and its costliest kernels.
A 2k pass is ~54 ms of kernels (bench/NOTES.md 80) but its wall time varies from run to run.

    python bench/probes/prefill_variants.py [--model llama3-8b] [--compare scratch] [--rounds 3] [--profile]
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
from engine.ops import cuda_prefill_attention, cuda_quant_linear  # noqa: E402

MB = 1 << 20


def profile_pass(label: str, fn: Callable[[], torch.Tensor]) -> None:
    """One pass under the profiler: wall ms, kernel ms, and the five costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
    rows = sorted(prof.key_averages(), key=lambda r: r.self_device_time_total, reverse=True)
    kernel_ms = sum(r.self_device_time_total for r in rows) / 1e3
    wall_ms = start.elapsed_time(end)
    print(
        f"{label}: wall {wall_ms:.2f} ms, kernels {kernel_ms:.2f} ms, GPU idle {wall_ms - kernel_ms:.2f} ms"
    )
    for r in rows[:5]:
        print(f"    {r.self_device_time_total / 1e3:7.2f} ms {r.count:5d}x  {r.key[:80]}")


def scratch(nbytes: int) -> Callable[[], None]:
    def apply() -> None:
        cuda_quant_linear.DEQUANT_SCRATCH_ELEMENTS = nbytes // 2  # fp16 elements

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
    parser.add_argument("--profile", action="store_true", help="then profile each variant's 2k pass")
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
    default_scratch = cuda_quant_linear.DEQUANT_SCRATCH_ELEMENTS
    runs: dict[tuple[str, str], list[float]] = {(v, c): [] for v in variants for c in cases}
    ran: dict[str, str | None] = {}
    peak_gb: dict[tuple[str, str], float] = {}  # above the model and its cache
    base_bytes = torch.cuda.memory_allocated()
    try:
        for r in range(args.rounds):
            for variant in variants if r % 2 == 0 else reversed(list(variants)):
                variants[variant]()
                for name, (tokens, fn) in cases.items():
                    torch.cuda.reset_peak_memory_stats()
                    runs[variant, name].append(tokens * 1e3 / median_ms(fn, warmup=1, iters=5))
                    peak_gb[variant, name] = (torch.cuda.max_memory_allocated() - base_bytes) / 1e9
                ran[variant] = cuda_prefill_attention.last_kernel
        if args.profile:  # last: a profiler session slows every later eager launch (NOTES 80)
            for variant in variants:
                variants[variant]()
                profile_pass(f"{variant} one pass 2048", cases["one pass 2048"][1])
    finally:
        cuda_quant_linear.DEQUANT_SCRATCH_ELEMENTS = default_scratch
        cuda_prefill_attention.set_prefill_attention("cudnn")
    print(
        f"{torch.cuda.get_device_name()}  {args.model}  prefill tok/s, median (best) of {args.rounds} rounds"
    )
    print(f"{'variant':10s} {'attention':9s} " + " ".join(f"{name:>17s}" for name in cases))
    for variant in variants:
        cells = " ".join(
            f"{statistics.median(runs[variant, name]):9.0f} ({max(runs[variant, name]):5.0f})"
            for name in cases
        )
        print(f"{variant:10s} {ran[variant] or '-':9s} {cells}")
    print("peak memory above the weights and cache, GB")
    for variant in variants:
        print(f"{variant:20s} " + " ".join(f"{peak_gb[variant, name]:17.3f}" for name in cases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
