"""Probe: torch's prefill attention kernels on a Llama-3-8B layer's shape (32 query heads, 8 K/V
heads, head dim 128, fp16, causal): time, TFLOP/s and agreement with flash, the kernel the engine
falls back to (engine/ops/cuda_prefill_attention.py). Torch's kernels only: no exlsp build.

    python bench/probes/attention_backends.py

A 2k prefill spends 9.6% of its time in flash attention at ~215 TFLOP/s, and an 8k one ~35% by the
2k figure scaled (bench/NOTES.md 80): the cuDNN kernels (Hopper's wgmma) may do the same work in
half the time. Shapes: a cold 2k and 8k prompt (as many keys as queries) and 512 new tokens after a
1.5k cached prefix, where the causal mask's alignment matters (flash aligns it to the bottom right,
the new tokens last; a kernel aligned to the top left disagrees there, which the error column shows).
Variants: flash; cuDNN with 8 K/V heads as given (GQA); cuDNN with the K/V heads repeated to 32;
SDPA restricted to cuDNN with enable_gqa.

Last, what a shape not seen before costs (cuDNN builds an execution plan per shape, and an editor's
prompts come in every length): the first call at each of 8 fresh (new tokens, keys) shapes, wall
time to the result, against the same call once warm. Then the engine's whole 2048-token chunks planned
as its load plans them (warm_cudnn_plans, up to 16k keys): the cost, and each chunk shape's first call
after it beside an unplanned shape's.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu_timing import median_ms  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
SHAPES = ((2048, 2048), (8192, 8192), (512, 2048))  # (new tokens, keys)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def variants(q, k, v, scale):
    group = HEADS // KV_HEADS

    def flash():
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=scale)[0]

    def cudnn_gqa():
        return torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, False, 0.0, True, False, scale=scale
        )[0]

    def cudnn_repeated():
        kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, kr, vr, None, False, 0.0, True, False, scale=scale
        )[0]

    def sdpa_cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)

    return {
        "flash": flash,
        "cudnn gqa": cudnn_gqa,
        "cudnn repeated": cudnn_repeated,
        "sdpa cudnn": sdpa_cudnn,
    }


def main() -> int:
    if not torch.cuda.is_available():
        print("attention_backends: needs a CUDA GPU")
        return 1
    torch.manual_seed(0)
    print(
        f"{torch.cuda.get_device_name()}  torch {torch.__version__}  cuDNN {torch.backends.cudnn.version()}"
    )
    for new, keys in SHAPES:
        q = torch.randn(1, HEADS, new, HEAD_DIM, device="cuda", dtype=torch.float16)
        k = torch.randn(1, KV_HEADS, keys, HEAD_DIM, device="cuda", dtype=torch.float16)
        v = torch.randn(1, KV_HEADS, keys, HEAD_DIM, device="cuda", dtype=torch.float16)
        fns = variants(q, k, v, HEAD_DIM**-0.5)
        ref = fns["flash"]()
        flops = 4 * new * (keys - new / 2) * HEAD_DIM * HEADS  # QK^T and PV over the causal part
        for name, fn in fns.items():
            try:
                err = relative_error(fn(), ref)
                ms = median_ms(fn)
            except Exception as exc:  # a backend that refuses the shape says why
                print(
                    f"{new:5d} new, {keys:5d} keys  {name:15s} failed: {type(exc).__name__}: {str(exc)[:160]}"
                )
                continue
            print(
                f"{new:5d} new, {keys:5d} keys  {name:15s} {ms:8.3f} ms {flops / ms / 1e9:6.0f} TFLOP/s"
                f"  error vs flash {err:.1e}"
            )
    fresh_shapes(HEAD_DIM**-0.5)
    warmed_chunks()
    return 0


def fresh_shapes(scale: float) -> None:
    for name in ("flash", "cudnn gqa"):
        cold, warm = [], []
        for i in range(8):
            new, keys = 40 + 37 * i, 3000 + 113 * i + 40 + 37 * i
            q = torch.randn(1, HEADS, new, HEAD_DIM, device="cuda", dtype=torch.float16)
            k = torch.randn(1, KV_HEADS, keys, HEAD_DIM, device="cuda", dtype=torch.float16)
            v = torch.randn_like(k)
            fn = variants(q, k, v, scale)[name]
            for times in (cold, warm):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                try:
                    fn()
                    torch.cuda.synchronize()
                except Exception as exc:
                    print(f"fresh shapes  {name:15s} failed: {type(exc).__name__}: {str(exc)[:160]}")
                    return
                times.append((time.perf_counter() - t0) * 1e3)
        print(
            f"fresh shapes  {name:15s} first call median {statistics.median(cold):7.2f} ms, max {max(cold):7.2f};"
            f" warm {statistics.median(warm):6.3f} ms"
        )


def warmed_chunks(chunk: int = 2048, max_tokens: int = 16384) -> None:
    """The engine's whole prefill chunks planned at load (warm_cudnn_plans): what it costs there, and
    each chunk shape's first call after it against a shape planned by nothing (a chunk of 1536)."""
    from engine.ops import cuda_prefill_attention as prefill

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    warmed = prefill.warm_cudnn_plans(HEADS, KV_HEADS, HEAD_DIM, torch.float16, chunk, max_tokens)
    torch.cuda.synchronize()
    print(f"warm_cudnn_plans: {warmed} shapes in {(time.perf_counter() - t0) * 1e3:.0f} ms")
    for new, keys in ((chunk, chunk), (chunk, 4 * chunk), (chunk, max_tokens), (1536, 1536)):
        q = torch.randn(new, HEADS, HEAD_DIM, device="cuda", dtype=torch.float16).transpose(0, 1).unsqueeze(0)
        kv = torch.randn(2, keys, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.float16)
        k, v = (kv[i].transpose(0, 1).unsqueeze(0) for i in (0, 1))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        prefill.causal_attention(q, k, v, HEAD_DIM**-0.5)
        torch.cuda.synchronize()
        print(
            f"  first call {new:5d} new, {keys:5d} keys: {(time.perf_counter() - t0) * 1e3:7.2f} ms ({prefill.last_kernel})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
