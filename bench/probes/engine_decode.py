"""Probe: decode tok/s through the engine's own step against the served step of bench_gpu.py, one
model, same run.

    python bench/probes/engine_decode.py [--model llama3-8b] [--steps 200]
    python bench/probes/engine_decode.py --compare-head [--rounds 3]   (2k context only)

The engine's step is what engine/engine.py _step runs, without its thread and request handles:
Scheduler.schedule, ModelRunner.execute (the step's integers packed and copied to the device, the
decode graph, the head, the sampler, the one device -> host sync) and Scheduler.update. The served
step (bench/engine_step.py ServedStep) is the graph, the head and an argmax, timed with the steps
queued and with the token read every step. The difference between the engine and the synced
served step is the host's share of a token that a user waits for.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.block_manager import BlockManager  # noqa: E402
from engine.model_runner import ModelRunner  # noqa: E402
from engine.request import SamplingParams  # noqa: E402
from engine.scheduler import Scheduler  # noqa: E402
from engine.sequence import Sequence  # noqa: E402

BLOCK = 16
CONTEXTS = (32, 2048, 8192)


def engine_decode_tok_s(runner: ModelRunner, ctx: int, steps: int, warmup: int = 5) -> tuple[float, int]:
    """(tok/s, tokens generated) of one greedy sequence decoding `steps` tokens after a random
    `ctx`-token prompt (prefilled first, untimed), stepped as the engine steps it."""
    block_manager = BlockManager(runner.num_cache_blocks, BLOCK, enable_prefix_cache=False)
    scheduler = Scheduler(block_manager, max_batch_size=1, prefill_chunk_tokens=2048)
    prompt = torch.randint(0, runner.config.vocab_size, (ctx,)).tolist()
    params = SamplingParams(max_new_tokens=steps + warmup + 1, ignore_eos=True)
    seq = Sequence(1, prompt, params, arrival_time_s=0.0)
    scheduler.add(seq)

    def step() -> None:
        out = scheduler.schedule()
        scheduler.update(out, runner.execute(out.scheduled, block_manager))

    while seq.num_computed_tokens < ctx:  # the prompt, in the scheduler's chunks
        step()
    for _ in range(warmup):
        step()
    generated = len(seq.token_ids)
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    generated = len(seq.token_ids) - generated
    scheduler.cancel(seq.request_id)
    scheduler.schedule()  # frees the sequence's blocks
    return generated / elapsed, generated


def compare_head(args) -> int:
    """The engine's step at 2k, its decode graph with the head inside (the default) and without (the
    head launched eagerly after the replay), alternated: the host's share of each."""
    from bench.engine_step import served_model
    from engine.cuda_graph import DecodeGraphs

    model, kv_cache = served_model(args.model)
    del kv_cache
    torch.cuda.empty_cache()
    blocks = (2048 + 2 * args.steps) // BLOCK + 8
    results: dict[str, list[float]] = {"head in the graph": [], "head eager": []}
    for _ in range(args.rounds):
        for label in results:
            runner = ModelRunner(model, num_cache_blocks=blocks, block_size=BLOCK)
            if label == "head eager":
                runner._graphs = DecodeGraphs(
                    lambda ids, pos, attn, r=runner: model.forward_paged(ids, pos, attn, r.kv_cache),
                    device=runner.device,
                    block_size=BLOCK,
                    max_seq_len=blocks * BLOCK,
                )
            results[label].append(engine_decode_tok_s(runner, 2048, args.steps)[0])
            del runner
            torch.cuda.empty_cache()
    print(f"{torch.cuda.get_device_name()}  {args.model}  the engine's step at 2k, tok/s per round")
    for label, values in results.items():
        print(f"{label:18}  " + "  ".join(f"{v:6.1f}" for v in values))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--compare-head",
        action="store_true",
        help="the engine's step at 2k with the head inside the decode graph and launched eagerly, alternated",
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from bench.bench_gpu import time_decode
    from bench.engine_step import ServedStep, served_model
    from bench.gpu_shapes import kernels_ready

    if not kernels_ready("engine_decode"):
        return 1
    torch.set_grad_enabled(False)
    if args.compare_head:
        return compare_head(args)
    model, kv_cache = served_model(args.model)
    served = ServedStep(model, kv_cache)
    served_tok_s = {ctx: [1e3 / ms for ms in time_decode(served, ctx)] for ctx in CONTEXTS}
    del served, kv_cache
    torch.cuda.empty_cache()
    runner = ModelRunner(
        model, num_cache_blocks=(max(CONTEXTS) + 2 * args.steps) // BLOCK + 8, block_size=BLOCK
    )
    rows = []
    for ctx in CONTEXTS:
        tok_s, generated = engine_decode_tok_s(runner, ctx, args.steps)
        assert generated == args.steps, (generated, args.steps)
        rows.append((ctx, *served_tok_s[ctx], tok_s))
    print(f"{torch.cuda.get_device_name()}  {args.model}  decode tok/s, {args.steps} steps")
    print(
        f"{'ctx':>6}  {'served, queued':>15}  {'served, synced':>15}  {'engine step':>12}  {'host us/token':>13}"
    )
    for ctx, queued, synced, engine in rows:
        host_us = (1 / engine - 1 / queued) * 1e6
        print(f"{ctx:>6}  {queued:15.1f}  {synced:15.1f}  {engine:12.1f}  {host_us:13.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
