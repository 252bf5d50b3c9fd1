"""The engine's steps from scheduling to the sampled tokens, one decode step ahead where it may.

A step is scheduled, launched on the device (ModelRunner.launch), read (its tokens, the one device
-> host sync) and applied (Scheduler.update). Run synchronously the device idles while the host
reads, applies, schedules and packs the next step: 120-360 us a token for an 8B model on an H100
(bench/NOTES.md 48, 52, 54), 5-15% of a decode step. With `run_ahead` the pipeline queues the next decode
step (Scheduler.schedule_ahead: its inputs are the current step's samples, still on the device)
before reading the current one, so that host work overlaps the device's.

    pipeline.start()                 # launch a step unless one is queued; returns early finishers
    result = pipeline.finish(lambda: not inbox)  # queue the next decode step if it may, read and
                                                 # apply this one

The next step is queued once most of the current one has run (a CUDA graph records an event when all
but its last eighth of layers are done: engine/model_runner.py mark_layer), leaving the host ~0.5 ms
to prepare it before the device runs out of work. A caller with something new to schedule (a request in its
inbox) answers may_run_ahead() with False then: a request that arrives while a step runs waits for
that step only, unless it arrives in its last eighth.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.block_manager import BlockManager
from engine.scheduler import Scheduler, SchedulerOutput
from engine.sequence import Sequence

if TYPE_CHECKING:
    from engine.model_runner import LaunchedStep, ModelRunner


@dataclass
class StepResult:
    out: SchedulerOutput  # the step read and applied
    num_generated: int  # tokens appended: a sequence that stopped before (a step ahead) gets none
    finished: list[Sequence]  # sequences its update finished


class StepPipeline:
    def __init__(
        self, scheduler: Scheduler, runner: ModelRunner, block_manager: BlockManager, *, run_ahead: bool
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.block_manager = block_manager
        self.run_ahead = run_ahead
        self.steps_ahead = 0  # steps launched before the previous one was read
        self._queued: deque[tuple[SchedulerOutput, LaunchedStep]] = deque()  # launched, not read
        self._reading: SchedulerOutput | None = None  # popped by finish(), not yet applied

    def has_work(self) -> bool:
        return bool(self._queued) or self.scheduler.has_work()

    def start(self) -> list[Sequence]:
        """Schedule and launch a step unless one is queued. Returns the sequences that finished
        without running (cancelled, past their deadline) for the caller to answer now."""
        if self._queued:
            return []
        out = self.scheduler.schedule()
        if out.scheduled:
            self._queued.append((out, self.runner.launch(out.scheduled, self.block_manager)))
        return out.finished

    def finish(self, may_run_ahead: Callable[[], bool] | bool = True) -> StepResult | None:
        """Read and apply the oldest queued step (None when there is none), after queuing the
        decode step that follows it where run_ahead and may_run_ahead allow. may_run_ahead is asked
        once most of the step has run (LaunchedStep.wait_mostly_done): a request that arrived
        before then is scheduled after this step, not after one more queued for others."""
        if not self._queued:
            return None
        out, launched = self._queued.popleft()
        self._reading = out
        if self.run_ahead and not self._queued:
            launched.wait_mostly_done()
            allowed = may_run_ahead() if callable(may_run_ahead) else may_run_ahead
        else:
            allowed = False
        if allowed:
            ahead = self.scheduler.schedule_ahead(out)
            if ahead is not None:
                self._queued.append(
                    (ahead, self.runner.launch(ahead.scheduled, self.block_manager, launched))
                )
                self.steps_ahead += 1
        tokens = launched.tokens()
        live = [not item.seq.is_finished for item in out.scheduled]
        finished = self.scheduler.update(out, tokens)
        self._reading = None
        generated = sum(alive and t is not None for alive, t in zip(live, tokens, strict=True))
        return StepResult(out, generated, finished)

    def abandon(self) -> list[Sequence]:
        """After a fault: forget every queued step and return the sequences of those steps and of the
        one being read (the caller fails them)."""
        steps = ([self._reading] if self._reading is not None else []) + [out for out, _ in self._queued]
        self._queued.clear()
        self._reading = None
        return list({item.seq.request_id: item.seq for out in steps for item in out.scheduled}.values())

    def drain(self) -> None:
        """Wait for the queued steps without applying them (shutting down)."""
        while self._queued:
            self._queued.popleft()[1].tokens()
