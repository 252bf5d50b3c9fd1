"""Probe: the sampler's argmax over a vocabulary row on the GPU (engine/sampler.py: x.argmax(-1)),
torch's one pass against two passes (the maxima of chunks of the row, then the argmax of those),
checked equal first. The two passes were not adopted (bench/NOTES.md 43): 26.5 -> 11.8 us for
Llama-3's 128256 tokens, but 9.3 -> 11.2 us for Qwen2.5's 151936.

    python bench/probes/argmax.py

Each is timed as a CUDA graph of 50 calls (GPU time only: in the engine the host enqueues the
sampler while the step's graph runs) and eagerly, 50 calls between two events (host-bound); fp32
logits as the sampler sees them. Prints microseconds per call.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu_timing import graph_of, median_ms  # noqa: E402

CALLS = 50


def two_pass_argmax(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """x (N, V) -> (N,): the first maximum of each row, as x.argmax(dim=-1), for V % chunk == 0."""
    num_rows, vocab = x.shape
    values, within = x.view(num_rows, vocab // chunk, chunk).max(dim=-1)  # (N, C) first max per chunk
    best = values.argmax(dim=-1, keepdim=True)  # (N, 1) the first chunk holding the maximum
    return (best * chunk + within.gather(1, best)).squeeze(1)


def chunk_for(vocab: int) -> int:
    """The divisor of `vocab` in [128, 4096] closest to its square root (128256: 334, 151936: 128)."""
    divisors = [d for d in range(128, 4097) if vocab % d == 0]
    return min(divisors, key=lambda d: abs(d - math.isqrt(vocab)))


def per_call_us(fn, graph: bool) -> float:
    """Microseconds per call: CALLS calls replayed as one CUDA graph, or enqueued eagerly."""
    if graph:
        return median_ms(graph_of(fn, CALLS).replay, iters=15) * 1e3 / CALLS
    return median_ms(lambda: [fn() for _ in range(CALLS)], iters=15) * 1e3 / CALLS


def main() -> int:
    if not torch.cuda.is_available():
        print("argmax: needs a CUDA GPU")
        return 1
    print(f"{torch.cuda.get_device_name()}: argmax per call, us (graph / eager)")
    for vocab in (128256, 151936):
        for rows in (1, 8):
            x = torch.randn(rows, vocab, device="cuda")
            chunk = chunk_for(vocab)
            assert torch.equal(two_pass_argmax(x, chunk), x.argmax(dim=-1))
            torch_argmax = lambda x=x: x.argmax(dim=-1)  # noqa: E731
            two_passes = lambda x=x, c=chunk: two_pass_argmax(x, c)  # noqa: E731
            one = (per_call_us(torch_argmax, True), per_call_us(torch_argmax, False))
            two = (per_call_us(two_passes, True), per_call_us(two_passes, False))
            print(
                f"vocab {vocab:6d} rows {rows}: torch {one[0]:6.1f} / {one[1]:6.1f}   "
                f"two passes {two[0]:6.1f} / {two[1]:6.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
