"""Probe: where the host's share of a keystroke through the engine goes, part by part.

    python bench/probes/keystroke_parts.py [--model llama3-8b] [--prefix 8192] [--repeats 20]

Runs engine_decode.engine_keystroke_ms (a request of 16 new tokens after a prefix in the prefix
cache, from Scheduler.add to its first token) with the engine's calls on the way timed on the host:
the scheduler's add, schedule (the prefix lookup) and update (freeing the finished request's
blocks), the runner's launch and, inside it, the graph inputs' copy (load_rows), the replay, the
head and the sampler; the step's read (which waits for the GPU). Prints, per part, the median over
keystrokes of its time within one keystroke, beside the whole keystroke and the served step's
(graph, head and argmax alone: decode_variants.keystroke_ms). The parts that are neither the read
nor the served step's own work are what the engine adds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.probes.engine_decode import BLOCK, engine_keystroke_ms  # noqa: E402
from engine import model_runner  # noqa: E402
from engine.cuda_graph import DecodeGraphs  # noqa: E402
from engine.model_runner import LaunchedStep, ModelRunner  # noqa: E402
from engine.scheduler import Scheduler  # noqa: E402

# (owner, attribute, label): the calls timed, in the order a keystroke makes them
PARTS = (
    (Scheduler, "add", "Scheduler.add"),
    (Scheduler, "schedule", "Scheduler.schedule"),
    (ModelRunner, "launch", "ModelRunner.launch"),
    (DecodeGraphs, "load_rows", "  load_rows"),
    (DecodeGraphs, "replay", "  replay"),
    (model_runner, "sample", "  sample"),
    (LaunchedStep, "tokens", "LaunchedStep.tokens (waits for the GPU)"),
    (Scheduler, "update", "Scheduler.update"),
)


@contextlib.contextmanager
def timed_parts():
    """Yields {label: [seconds per keystroke]}: each part's calls summed per keystroke, a keystroke
    starting at each Scheduler.add."""
    per_keystroke: list[collections.Counter] = []
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in PARTS]

    def wrap(fn, label):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if label == "Scheduler.add":
                per_keystroke.append(collections.Counter())
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if per_keystroke:
                    per_keystroke[-1][label] += time.perf_counter() - start

        return timed

    for (owner, name, label), (_, _, fn) in zip(PARTS, originals, strict=True):
        setattr(owner, name, wrap(fn, label))
    try:
        yield per_keystroke
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def keystroke_parts_ms(runner: ModelRunner, prefix: int, repeats: int) -> tuple[float, dict[str, float]]:
    """(median keystroke ms, {part: median ms per keystroke}), the first 4 keystrokes (the prefix's
    prefill and warm-up) left out as engine_keystroke_ms leaves them out."""
    with timed_parts() as per_keystroke:
        total = engine_keystroke_ms(runner, prefix=prefix, repeats=repeats)
    kept = per_keystroke[4:]
    parts = {label: 1e3 * statistics.median(k[label] for k in kept) for _, _, label in PARTS}
    return total, parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--prefix", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    from bench.engine_step import ServedStep, served_model
    from bench.gpu_shapes import kernels_ready
    from bench.probes.decode_variants import keystroke_ms

    if not kernels_ready("keystroke_parts"):
        return 1
    torch.set_grad_enabled(False)
    model, kv_cache = served_model(args.model)
    served = keystroke_ms(ServedStep(model, kv_cache), model.config.vocab_size, prefix=args.prefix)
    del kv_cache
    torch.cuda.empty_cache()
    runner = ModelRunner(model, num_cache_blocks=args.prefix // BLOCK + 64, block_size=BLOCK)
    total, parts = keystroke_parts_ms(runner, args.prefix, args.repeats)
    print(
        f"{torch.cuda.get_device_name()}  {args.model}  keystroke: 16 tokens after a cached {args.prefix}-token prefix"
    )
    print(f"through the engine {total:.3f} ms, the served step {served:.3f} ms; per keystroke, median ms:")
    for label, ms in parts.items():
        print(f"  {label:44s} {ms:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
