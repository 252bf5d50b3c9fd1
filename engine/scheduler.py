"""Which sequences run in the next forward pass, and how many tokens each computes. Pure Python.

Each step:
  1. Cancelled requests and those past their deadline finish (their blocks return to the pool).
  2. Every running sequence that is decoding gets its one token, best rank first (priority class,
     then arrival). When the pool runs dry the worst-ranked running sequence is preempted: its blocks
     are freed and it is recomputed later (through the prefix cache, often cheaply).
  3. Prefill shares a budget of `prefill_chunk_tokens` per step, best rank first, among running
     sequences with a prompt left to compute and waiting sequences (admitted while the batch has
     room). A long prompt therefore delays everyone else by at most one chunk per step, and a
     completion request that arrives behind a chat prompt takes the budget at the next step.

A request the whole pool could never hold finishes with an error instead of waiting forever; a
sequence that alone fills the pool while decoding stops with "length".

Running one step ahead (schedule_ahead): while a decode step runs on the GPU, the engine may already
launch the next one, each sequence's input being the token the running step samples, which the
host has not read yet (`input_pending`). That is only done when the next step is certain to be that
decode step (every running sequence samples now, nothing waits, no repetition penalty needs the
token on the host, the slots are free without preempting anyone); a sequence that then stops has
its extra token discarded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSequence:
    seq: Sequence
    start: int  # first position computed this step (== seq.num_computed_tokens when scheduled)
    num_tokens: int  # tokens computed this step
    # The step's one input token is the previous step's sample, still on the device (schedule_ahead).
    input_pending: bool = False
    samples: bool = field(init=False)  # this step reaches the last token: its logits give the next one

    def __post_init__(self) -> None:
        self.samples = self.input_pending or self.start + self.num_tokens == self.seq.num_tokens

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)  # finished without running this step

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_batch_size: int = 8,
        prefill_chunk_tokens: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be >= 1, got {prefill_chunk_tokens}")
        self.block_manager = block_manager
        self.max_batch_size = max_batch_size
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.clock = clock
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._finished_early: list[Sequence] = []  # finished between steps (cancel, bad size)
        self.num_preemptions = 0

    # ---- requests in and out ---------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        assert seq.status is SequenceStatus.WAITING
        if seq.params.max_new_tokens == 0:
            self._finish(seq, "length")
            return
        need = self.block_manager.num_blocks_for(seq.num_tokens)
        if need > self.block_manager.num_blocks:
            bm = self.block_manager
            self._finish(
                seq,
                "error",
                f"the prompt needs {need} KV-cache blocks of {bm.block_size} tokens "
                f"({seq.num_tokens} tokens) but the whole cache has {bm.num_blocks} blocks; "
                "shorten the prompt or start the engine with a larger cache",
            )
            return
        self.waiting.append(seq)

    def cancel(self, request_id: int) -> bool:
        """Finish the request now, returning its blocks. False when it is unknown or already done."""
        for queue in (self.running, self.waiting):
            for seq in queue:
                if seq.request_id == request_id:
                    self._finish(seq, "cancelled")
                    return True
        return False

    def fail(self, seqs: Seq[Sequence], message: str) -> list[Sequence]:
        """Finish these sequences with an error (a step raised); returns those that were still live."""
        failed = []
        for seq in seqs:
            if not seq.is_finished:
                self._finish(seq, "error", message, report=False)
                failed.append(seq)
        return failed

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._finished_early)

    # ---- one step --------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        now = self.clock()
        for seq in self.running + self.waiting:
            if seq.deadline_s is not None and now >= seq.deadline_s:
                self._finish(seq, "deadline")
        self.running.sort(key=Sequence.rank)
        scheduled: dict[int, ScheduledSequence] = {}

        # Decoding sequences: one token each.
        for seq in list(self.running):
            if seq.status is SequenceStatus.RUNNING and seq.is_decoding:
                if self._ensure_slots(seq, seq.num_tokens, scheduled):
                    scheduled[seq.request_id] = ScheduledSequence(seq, seq.num_computed_tokens, 1)

        # Prefill: running sequences with prompt left, then admissions, sharing one token budget.
        prefill_ids: set[int] = set()
        admitting = True  # cleared when the best-ranked waiting request must wait: none overtakes it
        candidates = sorted([s for s in self.running if not s.is_decoding] + self.waiting, key=Sequence.rank)
        for seq in candidates:
            budget = self.prefill_chunk_tokens - sum(
                scheduled[i].num_tokens for i in prefill_ids if i in scheduled
            )
            if budget <= 0:
                break
            if seq.status is SequenceStatus.WAITING:
                num_tokens = self._admit(seq, budget, scheduled) if admitting else 0
                if num_tokens == 0:
                    admitting = False
                    continue
            elif seq.status is SequenceStatus.RUNNING:
                num_tokens = min(seq.num_uncomputed_tokens, budget)
                if not self._ensure_slots(seq, seq.num_computed_tokens + num_tokens, scheduled):
                    continue
            else:
                continue  # finished or preempted earlier in this step
            scheduled[seq.request_id] = ScheduledSequence(seq, seq.num_computed_tokens, num_tokens)
            prefill_ids.add(seq.request_id)

        out = SchedulerOutput(scheduled=sorted(scheduled.values(), key=lambda s: s.seq.rank()))
        for item in out.scheduled:
            if item.seq.first_scheduled_time_s is None:
                item.seq.first_scheduled_time_s = now
        out.finished, self._finished_early = self._finished_early, []
        return out

    def schedule_ahead(self, out: SchedulerOutput) -> SchedulerOutput | None:
        """The decode step that follows `out`, scheduled before `out`'s samples are known: one token
        per sequence of `out` that could go on, its input the token `out` samples for it. None when
        the next step may be anything else (the engine then waits for `out` and schedules it as
        usual): a request waiting or finished in between, a sequence of `out` still prefilling, one
        running sequence left out of `out`, a repetition penalty (it reads the sampled tokens on
        the host), or a block the pool cannot give without preempting. A sequence whose pending
        token must be its last (max_new_tokens, the context, its deadline) is left out."""
        if self.waiting or self._finished_early or not out.scheduled:
            return None
        items = [item for item in out.scheduled if not item.seq.is_finished]
        if len(items) != len(self.running) or not all(item.samples for item in items):
            return None
        now = self.clock()
        ahead = []
        for item in items:
            seq = item.seq
            if seq.params.repetition_penalty != 1.0:
                return None
            tokens_after = seq.num_tokens + 1  # with the pending token
            if (
                tokens_after - seq.num_prompt_tokens >= seq.params.max_new_tokens
                or (seq.max_model_len_tokens is not None and tokens_after >= seq.max_model_len_tokens)
                or (seq.deadline_s is not None and now >= seq.deadline_s)
            ):
                continue
            if not self.block_manager.ensure_slots(seq.request_id, tokens_after):
                return None  # the slots taken so far are the next step's anyway
            ahead.append(ScheduledSequence(seq, seq.num_tokens, 1, input_pending=True))
        return SchedulerOutput(scheduled=ahead) if ahead else None

    def update(self, out: SchedulerOutput, sampled_token_ids: Seq[int | None]) -> list[Sequence]:
        """Apply a step's results: `sampled_token_ids[i]` is the token sampled for `out.scheduled[i]`
        (None where that entry does not sample). Returns the sequences that finished."""
        assert len(sampled_token_ids) == len(out.scheduled)
        now = self.clock()
        finished = []
        for item, token_id in zip(out.scheduled, sampled_token_ids, strict=True):
            seq = item.seq
            if seq.is_finished:
                continue  # cancelled while the step ran, or stopped at the pending token
            assert seq.num_computed_tokens == item.start, (
                seq.request_id,
                seq.num_computed_tokens,
                item.start,
            )
            seq.num_computed_tokens = item.end
            self.block_manager.commit(seq.request_id, seq.token_ids, seq.num_computed_tokens)
            if not item.samples:
                continue
            assert token_id is not None, seq.request_id
            if seq.first_token_time_s is None:
                seq.first_token_time_s = now
            reason = seq.append_output(token_id)
            if reason is not None:
                self._finish(seq, reason, report=False)
                finished.append(seq)
        return finished

    # ---- internals -------------------------------------------------------------------------------

    def _admit(self, seq: Sequence, budget: int, scheduled: dict[int, ScheduledSequence]) -> int:
        """Move a waiting sequence to running with its cached prefix and the blocks for its first
        chunk. Returns the chunk's token count, or 0 when it must keep waiting."""
        bm = self.block_manager
        if bm.num_blocks_for(seq.num_tokens) > bm.num_blocks:
            # A preempted sequence whose output grew past what the whole cache holds.
            self._finish(seq, "length")
            return 0
        while len(self.running) >= self.max_batch_size:
            victim = self._victim_for(seq, strictly_lower_priority=True)
            if victim is None:
                return 0
            self._preempt(victim, scheduled)
        num_cached = bm.allocate_prefix(seq.request_id, seq.token_ids)
        num_tokens = min(seq.num_tokens - num_cached, budget)
        while not bm.ensure_slots(seq.request_id, num_cached + num_tokens):
            victim = self._victim_for(seq, strictly_lower_priority=True)
            if victim is None:
                bm.free(seq.request_id)
                return 0
            self._preempt(victim, scheduled)
        if seq.num_cached_tokens is None:
            seq.num_cached_tokens = num_cached
        seq.num_computed_tokens = num_cached
        self.waiting.remove(seq)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        return num_tokens

    def _ensure_slots(self, seq: Sequence, num_tokens: int, scheduled: dict[int, ScheduledSequence]) -> bool:
        """Grow the sequence's table to `num_tokens` slots, preempting worse-ranked sequences (or, as
        a last resort, this one) when the pool is dry. False when `seq` does not run this step."""
        bm = self.block_manager
        while not bm.ensure_slots(seq.request_id, num_tokens):
            victim = self._victim_for(seq, strictly_lower_priority=False)
            if victim is not None:
                self._preempt(victim, scheduled)
                continue
            if len(self.running) == 1 and seq.is_decoding:
                # Alone and still no room for one more token: the cache is this request's context limit.
                self._finish(seq, "length")
                return False
            self._preempt(seq, scheduled)
            return False
        return True

    def _victim_for(self, seq: Sequence, *, strictly_lower_priority: bool) -> Sequence | None:
        """The worst-ranked running sequence ranked below `seq`, or None."""
        others = [s for s in self.running if s is not seq]
        if not others:
            return None
        victim = max(others, key=Sequence.rank)
        if strictly_lower_priority:
            return victim if victim.params.priority > seq.params.priority else None
        return victim if victim.rank() > seq.rank() else None

    def _preempt(self, seq: Sequence, scheduled: dict[int, ScheduledSequence]) -> None:
        scheduled.pop(seq.request_id, None)
        self.running.remove(seq)
        self.block_manager.free(seq.request_id)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(seq)

    def _finish(self, seq: Sequence, reason: str, error: str | None = None, *, report: bool = True) -> None:
        """Finish a sequence and return its blocks. `report`: list it in the next schedule() output
        (update() and fail() return theirs directly)."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if self.block_manager.has(seq.request_id):
            self.block_manager.free(seq.request_id)
        seq.finish(reason, self.clock(), error)
        if report:
            self._finished_early.append(seq)
