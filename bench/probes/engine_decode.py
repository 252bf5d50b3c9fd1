"""Probe: decode tok/s through the engine's own step against the served step of bench_gpu.py, one
model, same run.

    python bench/probes/engine_decode.py [--model llama3-8b] [--steps 200]
    python bench/probes/engine_decode.py --compare-head [--rounds 3]   (2k context only)

The engine's step is what engine/engine.py _step runs, without its thread and request handles:
engine/step_pipeline.py (Scheduler.schedule, ModelRunner.launch: the step's integers packed and
copied to the device, the decode graph with its head, the sampler; the one device -> host read;
Scheduler.update), synchronous and one decode step ahead (the engine's GPU default). The served
step (bench/engine_step.py ServedStep) is the graph, the head and an argmax, timed with the steps
queued and with the token read every step. The difference between the engine and the queued
served step is the host's share of a token that a user waits for.

It also times a keystroke through the engine's step: a request of 16 new tokens after an 8k prefix
in the prefix cache, from Scheduler.add to its first token read (the prefix lookup, packing, the
prompt-token graph, the head on the last row, the read), beside the served step's keystroke
(decode_variants.keystroke_ms: the graph and head alone). And a keystroke that interrupts a
completion (as typing does: the running request cancelled, the new one submitted at a random moment
of its decoding), from its arrival to its first token, with the engine's loop on a thread:
synchronous, one step ahead deciding right after each launch, and one step ahead deciding once most
of the step has run (the engine's default).
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
from engine.step_pipeline import StepPipeline  # noqa: E402

BLOCK = 16
CONTEXTS = (32, 2048, 8192)


def engine_decode_tok_s(
    runner: ModelRunner, ctx: int, steps: int, warmup: int = 5, run_ahead: bool = False
) -> tuple[float, int]:
    """(tok/s, tokens generated) of one greedy sequence decoding `steps` tokens after a random
    `ctx`-token prompt (prefilled first, untimed), stepped as the engine steps it."""
    block_manager = BlockManager(runner.num_cache_blocks, BLOCK, enable_prefix_cache=False)
    scheduler = Scheduler(block_manager, max_batch_size=1, prefill_chunk_tokens=2048)
    pipeline = StepPipeline(scheduler, runner, block_manager, run_ahead=run_ahead)
    prompt = torch.randint(0, runner.config.vocab_size, (ctx,)).tolist()
    params = SamplingParams(max_new_tokens=steps + warmup + 10, ignore_eos=True)
    seq = Sequence(1, prompt, params, arrival_time_s=0.0)
    scheduler.add(seq)

    def step() -> None:
        pipeline.start()
        pipeline.finish(may_run_ahead=True)

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
    pipeline.drain()
    scheduler.schedule()  # frees the sequence's blocks
    return generated / elapsed, generated


def engine_keystroke_ms(
    runner: ModelRunner, prefix: int = 8192, suffix: int = 16, repeats: int = 20
) -> float:
    """Median ms from Scheduler.add to the first token of a request of `suffix` new tokens after a
    `prefix`-token prompt in the prefix cache, each request with a fresh suffix."""
    block_manager = BlockManager(runner.num_cache_blocks, BLOCK)
    scheduler = Scheduler(block_manager, max_batch_size=1, prefill_chunk_tokens=2048)
    pipeline = StepPipeline(scheduler, runner, block_manager, run_ahead=True)
    vocab = runner.config.vocab_size
    base = torch.randint(0, vocab, (prefix,)).tolist()
    one_token = SamplingParams(max_new_tokens=1, ignore_eos=True)  # finishes at its first token
    times = []
    for i in range(repeats + 4):  # the first fills the prefix cache, the next three warm up
        seq = Sequence(
            i, base + torch.randint(0, vocab, (suffix if i else 1,)).tolist(), one_token, arrival_time_s=0.0
        )
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        scheduler.add(seq)
        while not seq.is_finished:
            pipeline.start()
            pipeline.finish(may_run_ahead=True)
        if i >= 4:
            times.append((time.perf_counter() - start) * 1e3)
            assert seq.num_cached_tokens == prefix, seq.num_cached_tokens
    return sorted(times)[len(times) // 2]


def interrupting_keystroke_ms(
    runner: ModelRunner, mode: str, trials: int = 24, prefix: int = 8192, context: int = 2048
) -> tuple[float, float]:
    """(median, mean) ms from a keystroke's arrival to its first token while another request
    decodes at a 2k context: the engine's loop (engine/engine.py _loop) on a thread, the arrival
    (cancel the running request, add the new one: 16 tokens after an 8k prefix in the prefix cache)
    at a random moment. mode: "sync", "ahead-early" (the next step decided right after the launch),
    "ahead" (decided once most of the step has run: the default)."""
    import random
    import threading
    from collections import deque

    from engine import model_runner

    block_manager = BlockManager(runner.num_cache_blocks, BLOCK)
    scheduler = Scheduler(block_manager, max_batch_size=4, prefill_chunk_tokens=2048)
    pipeline = StepPipeline(scheduler, runner, block_manager, run_ahead=mode != "sync")
    wait_mark = model_runner.LaunchedStep.wait_mostly_done
    if mode == "ahead-early":
        model_runner.LaunchedStep.wait_mostly_done = lambda self: None
    vocab = runner.config.vocab_size
    base = torch.randint(0, vocab, (prefix,)).tolist()
    inbox: deque = deque()
    cond = threading.Condition()
    done = threading.Event()
    stop = False

    def loop() -> None:
        while True:
            with cond:
                while not inbox and not pipeline.has_work() and not stop:
                    cond.wait()
                if stop:
                    return
                actions = list(inbox)
                inbox.clear()
            for action in actions:
                action()
            pipeline.start()
            pipeline.finish(lambda: not inbox)
            if keystroke is not None and keystroke.is_finished:
                done.set()

    def post(*actions) -> None:
        with cond:
            inbox.extend(actions)
            cond.notify()

    rng = random.Random(0)
    next_id = iter(range(1, 10**6))
    keystroke = None
    warm = Sequence(0, base + [1], SamplingParams(max_new_tokens=1, ignore_eos=True), arrival_time_s=0.0)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    post(lambda: scheduler.add(warm))
    times = []
    try:
        for trial in range(trials + 3):
            completion = Sequence(
                next(next_id),
                base[:2048],
                SamplingParams(max_new_tokens=10**4, ignore_eos=True),
                arrival_time_s=0.0,
            )
            post(lambda c=completion: scheduler.add(c))
            time.sleep(rng.uniform(0.010, 0.020))  # it decodes a few steps
            keystroke = Sequence(
                next(next_id),
                base + torch.randint(0, vocab, (16,)).tolist(),
                SamplingParams(max_new_tokens=1, ignore_eos=True),
                arrival_time_s=0.0,
            )
            done.clear()
            start = time.perf_counter()
            post(lambda c=completion: scheduler.cancel(c.request_id), lambda k=keystroke: scheduler.add(k))
            assert done.wait(5.0), "the keystroke did not finish"
            if trial >= 3:
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        with cond:
            stop = True
            cond.notify()
        thread.join()
        pipeline.drain()
        model_runner.LaunchedStep.wait_mostly_done = wait_mark
    return sorted(times)[len(times) // 2], sum(times) / len(times)


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
    from bench.probes.decode_variants import keystroke_ms

    model, kv_cache = served_model(args.model)
    served = ServedStep(model, kv_cache)
    served_tok_s = {ctx: [1e3 / ms for ms in time_decode(served, ctx)] for ctx in CONTEXTS}
    served_keystroke = keystroke_ms(served, model.config.vocab_size)
    del served, kv_cache
    torch.cuda.empty_cache()
    runner = ModelRunner(
        model, num_cache_blocks=(max(CONTEXTS) + 2 * args.steps) // BLOCK + 8, block_size=BLOCK
    )
    rows = []
    for ctx in CONTEXTS:
        engine = {}
        for _ in range(args.rounds):  # synchronous and ahead alternated; the best of the rounds
            for ahead in (False, True):
                tok_s, generated = engine_decode_tok_s(runner, ctx, args.steps, run_ahead=ahead)
                assert generated == args.steps, (generated, args.steps)
                engine[ahead] = max(engine.get(ahead, 0.0), tok_s)
        rows.append((ctx, *served_tok_s[ctx], engine[False], engine[True]))
    engine_keystroke = engine_keystroke_ms(runner)
    modes = ("sync", "ahead-early", "ahead") * 2  # alternated, two rounds
    interrupted = [(mode, *interrupting_keystroke_ms(runner, mode)) for mode in modes]
    print(f"{torch.cuda.get_device_name()}  {args.model}  decode tok/s, {args.steps} steps")
    print(
        f"{'ctx':>6}  {'served, queued':>15}  {'served, synced':>15}  {'engine, sync':>12}  {'engine, ahead':>13}"
        f"  {'host us/token sync / ahead':>26}"
    )
    for ctx, queued, synced, sync, ahead in rows:
        host = [(1 / engine - 1 / queued) * 1e6 for engine in (sync, ahead)]
        print(
            f"{ctx:>6}  {queued:15.1f}  {synced:15.1f}  {sync:12.1f}  {ahead:13.1f}"
            f"  {host[0]:17.0f} / {host[1]:6.0f}"
        )
    print(
        f"keystroke (16 tokens after a cached 8k prefix): served {served_keystroke:.3f} ms, "
        f"engine {engine_keystroke:.3f} ms (host {1e3 * (engine_keystroke - served_keystroke):.0f} us)"
    )
    print(
        "a keystroke interrupting a completion at 2k, arrival to first token, median / mean ms: "
        + ", ".join(f"{mode} {median:.3f} / {mean:.3f}" for mode, median, mean in interrupted)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
