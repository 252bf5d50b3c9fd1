"""Engine: the cached, scheduled generator. A background thread owns the model, the KV cache and the
scheduler; any thread (or asyncio loop) submits prompts and reads handles.

    engine = Engine(checkpoint_folder)
    engine.generate("def fib(n):", max_new_tokens=32).text          # blocking
    handle = engine.submit(prompt, SamplingParams(...))               # streaming, cancellable
    for chunk in handle: ...   /   async for chunk in handle: ...
    handle.cancel(); handle.result(); await handle.wait()

Only the engine thread touches the scheduler, block manager and model runner; submit() and cancel()
post to an inbox the thread drains before each step, so a cancel takes effect at the next step.

On a GPU the thread runs one decode step ahead (engine/step_pipeline.py): while step N runs on the
device it queues step N+1, whose inputs are step N's samples, and only then reads step N's tokens,
so the host's work per token overlaps the device's. It decides once most of step N has run, and
not while the inbox or the scheduler holds anything new: a request that arrives while a step runs
waits for that step only, unless it comes in the step's last eighth.

Bad input (token ids outside the vocabulary, a prompt longer than the context) raises ValueError
from submit(); a failure inside a step finishes that step's requests with finish_reason "error" and
the engine keeps serving.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.block_manager import BlockManager
from engine.handle import RequestHandle
from engine.request import GenerationResult, SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence as EngineSequence
from engine.step_pipeline import StepPipeline

log = logging.getLogger(__name__)


def default_prefill_chunk_tokens(device) -> int:
    """Prompt tokens prefilled per step, shared by all sequences: a long prompt delays the others by at
    most one chunk. On a GPU every chunk dequantizes each linear's weight once
    (engine/ops/cuda_quant_linear.py), which 512-token chunks cannot amortize: an 8k prompt prefilled
    at 17-19k tokens/s in 512-token chunks on an H100, half its one-pass rate (bench/RESULTS.md). On
    the CPU 512 tokens are ~50 ms."""
    return 2048 if getattr(device, "type", str(device)) == "cuda" else 512


class Engine:
    def __init__(
        self,
        model_path: str | Path,
        *,
        device: Any = None,
        dtype: Any = None,
        block_size: int = 16,
        num_cache_blocks: int | None = None,
        cache_tokens: int | None = None,
        max_batch_size: int = 8,
        prefill_chunk_tokens: int | None = None,
        enable_prefix_cache: bool = True,
        head_bits: int | None = None,
        embed_bits: int | None = None,
        run_ahead: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from engine.loader import check_checkpoint_folder, choose_device, default_vocab_bits, load_model
        from engine.model_runner import ModelRunner, default_num_cache_blocks
        from engine.tokenizer import Tokenizer

        if num_cache_blocks is not None and cache_tokens is not None:
            raise ValueError("give num_cache_blocks or cache_tokens, not both")
        folder = check_checkpoint_folder(model_path)
        default_head, default_embed = default_vocab_bits(choose_device(device))
        model = load_model(
            folder,
            device=device,
            dtype=dtype,
            head_bits=default_head if head_bits is None else head_bits,
            embed_bits=default_embed if embed_bits is None else embed_bits,
        )
        if model.device.type == "cpu":
            from engine.host_memory import keep_freed_memory

            keep_freed_memory()  # a resident CPU engine reuses its activations' pages (host_memory.py)
        self.config = model.config
        self.device = model.device
        self.tokenizer = Tokenizer.from_folder(folder, self.config.eos_token_ids)
        if cache_tokens is not None:
            num_cache_blocks = -(-cache_tokens // block_size)
        if num_cache_blocks is None:
            num_cache_blocks = default_num_cache_blocks(
                self.config, model.dtype, self.device, block_size, max_batch_size
            )
        # The runner allocates the cache first: it sizes it down when the memory is not there.
        self.runner = ModelRunner(model, num_cache_blocks=num_cache_blocks, block_size=block_size)
        self.block_manager = BlockManager(self.runner.num_cache_blocks, block_size, enable_prefix_cache)
        self.scheduler = Scheduler(
            self.block_manager,
            max_batch_size=max_batch_size,
            prefill_chunk_tokens=(
                default_prefill_chunk_tokens(self.device)
                if prefill_chunk_tokens is None
                else prefill_chunk_tokens
            ),
            clock=clock,
        )
        self.runner.warm_prefill_attention(self.scheduler.prefill_chunk_tokens)
        self.model = model
        # One step ahead pays where the device runs apart from the host; on a CPU it only adds the
        # discarded steps (run_ahead=True there is for tests).
        self.run_ahead = self.device.type == "cuda" if run_ahead is None else run_ahead
        self._steps = StepPipeline(self.scheduler, self.runner, self.block_manager, run_ahead=self.run_ahead)
        self._clock = clock
        self._decode_fn = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)

        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._handles: dict[int, RequestHandle] = {}  # engine thread only
        self._closed = False
        self._stats = {
            "prompt_tokens": 0,
            "generated_tokens": 0,
            "steps": 0,
            "step_errors": 0,
        }
        self._thread = threading.Thread(target=self._loop, name="exlsp-engine", daemon=True)
        self._thread.start()

    # ---- public API ------------------------------------------------------------------------------

    def submit(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, **kwargs: Any
    ) -> RequestHandle:
        """Queue a request; returns at once. Thread-safe. Raises ValueError for bad input."""
        params = self._params(params, kwargs)
        token_ids = self._prompt_ids(prompt, params)
        request_id = next(self._ids)
        seq = EngineSequence(
            request_id,
            token_ids,
            params,
            arrival_time_s=self._clock(),
            eos_token_ids=self.tokenizer.eos_ids,
            max_model_len_tokens=self.config.max_position_embeddings,
            decode=self._decode_fn,
        )
        handle = RequestHandle(request_id, self._cancel)
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._inbox.append(("submit", (seq, handle)))
            self._cond.notify()
        return handle

    def generate(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, **kwargs: Any
    ) -> GenerationResult:
        """Blocking: submit and wait for the result."""
        return self.submit(prompt, params, **kwargs).result()

    def stats(self) -> dict[str, int]:
        from engine.quant.vocab import vocab_bits

        bm, sched = self.block_manager, self.scheduler
        head_bits, embed_bits = vocab_bits(self.model)
        return {
            "head_bits": head_bits,
            "embed_bits": embed_bits,
            "num_cache_blocks": bm.num_blocks,
            "block_size": bm.block_size,
            "num_free_blocks": bm.num_free_blocks,
            "num_cached_blocks": bm.num_cached_blocks,
            "prefix_cache_hit_tokens": bm.num_hit_tokens,
            "prefix_cache_query_tokens": bm.num_hit_queries_tokens,
            "num_running": len(sched.running),
            "num_waiting": len(sched.waiting),
            "num_preemptions": sched.num_preemptions,
            "steps_ahead": self._steps.steps_ahead,
            **self._stats,
        }

    def close(self) -> None:
        """Stop the engine thread; unfinished requests finish as "cancelled". Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- input checks (caller's thread) ----------------------------------------------------------

    @staticmethod
    def _params(params: SamplingParams | None, kwargs: dict[str, Any]) -> SamplingParams:
        params = params or SamplingParams()
        if "stop" in kwargs:
            stop = kwargs["stop"]
            kwargs["stop"] = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        if "stop_token_ids" in kwargs:
            kwargs["stop_token_ids"] = tuple(kwargs["stop_token_ids"] or ())
        unknown = set(kwargs) - {f.name for f in dataclasses.fields(SamplingParams)}
        if unknown:
            raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(params, **kwargs) if kwargs else params

    def _prompt_ids(self, prompt: str | Sequence[int], params: SamplingParams) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            vocab = self.config.vocab_size
            ids = []
            for i, t in enumerate(prompt):
                try:
                    token_id = operator.index(t)  # int, numpy or 0-d torch integers; not floats
                except TypeError:
                    raise ValueError(f"prompt token {i} is {t!r}, not an integer token id") from None
                if isinstance(t, bool) or not 0 <= token_id < vocab:
                    raise ValueError(f"prompt token {i} is {t!r}, outside the vocabulary [0, {vocab})")
                ids.append(token_id)
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        max_len = self.config.max_position_embeddings
        if len(ids) > max_len:
            if not params.truncate_prompt:
                raise ValueError(
                    f"the prompt has {len(ids)} tokens but the model's context is {max_len}; "
                    "shorten it or pass truncate_prompt=True to keep its end"
                )
            # Keep the end (nearest the cursor), leaving room to generate, but at least half the context.
            keep = max(max_len - params.max_new_tokens, max_len // 2)
            ids = ids[len(ids) - keep :]
        return ids

    def _cancel(self, request_id: int) -> None:
        with self._cond:
            self._inbox.append(("cancel", request_id))
            self._cond.notify()

    # ---- engine thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        self.runner.adopt_thread()
        while True:
            with self._cond:
                while (
                    not self._inbox
                    and not self.scheduler.has_work()
                    and not self._steps.has_work()
                    and not self._closed
                ):
                    self._cond.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, deque()
            for kind, payload in inbox:
                if kind == "submit":
                    seq, handle = payload
                    self._handles[seq.request_id] = handle
                    self._stats["prompt_tokens"] += seq.num_prompt_tokens
                    self.scheduler.add(seq)
                else:
                    self.scheduler.cancel(payload)
            self._step()
        self._shutdown()

    def _step(self) -> None:
        try:
            self._deliver(self._steps.start())
            # A request in the inbox would wait behind a step queued ahead.
            result = self._steps.finish(may_run_ahead=lambda: not self._inbox)
            if result is None:
                return
            self._stats["steps"] += 1
            self._stats["generated_tokens"] += result.num_generated
            for item in result.out.scheduled:
                if not item.seq.is_finished:
                    self._stream(item.seq)
            self._deliver(result.finished)
        except Exception as exc:  # a failing step must not take the engine down
            log.exception("engine step failed")
            self._stats["step_errors"] += 1
            victims = self._steps.abandon() or list(self.scheduler.running)
            message = f"engine step failed: {type(exc).__name__}: {exc}"
            self.scheduler.fail(victims, message)
            # Every victim is finished now, some perhaps normally before the fault: answer them all.
            self._deliver([seq for seq in victims if seq.request_id in self._handles])

    def _stream(self, seq: EngineSequence) -> None:
        chunk = seq.take_stream_chunk()
        handle = self._handles.get(seq.request_id)
        if chunk is not None and handle is not None:
            handle._push(chunk)

    def _deliver(self, finished: Sequence[EngineSequence]) -> None:
        for seq in finished:
            self._stream(seq)
            self.runner.release(seq.request_id)
            handle = self._handles.pop(seq.request_id, None)
            if handle is not None:
                handle._finish(seq.result())

    def _shutdown(self) -> None:
        self._steps.drain()  # their requests are cancelled below
        with self._cond:
            inbox, self._inbox = self._inbox, deque()
        for kind, payload in inbox:
            if kind == "submit":
                seq, handle = payload
                self._handles[seq.request_id] = handle
                self.scheduler.add(seq)
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self.scheduler.cancel(seq.request_id)
        self._deliver(self.scheduler.schedule().finished)
