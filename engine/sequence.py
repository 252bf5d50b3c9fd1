"""One request's state inside the engine: its tokens, how many have KV in the cache, its output text
and why it finished. Pure Python.

Prefill and decode are the same operation here: each step computes the KV of
token_ids[num_computed_tokens : num_computed_tokens + n], and when that reaches the last token the
step also samples the next one. A prompt is computed in chunks; a decode step is a chunk of one
token (the previously sampled one); a preempted sequence is recomputed the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from engine.detokenizer import IncrementalDetokenizer
from engine.request import GenerationResult, SamplingParams, StreamChunk
from engine.stop_strings import StopStringMatcher


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # not admitted yet, or preempted: holds no blocks
    RUNNING = "running"  # holds blocks; scheduled every step it gets budget
    FINISHED = "finished"


class Sequence:
    def __init__(
        self,
        request_id: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        arrival_time_s: float,
        eos_token_ids: frozenset[int] = frozenset(),
        max_model_len_tokens: int | None = None,
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        assert prompt_token_ids, "a sequence needs at least one prompt token"
        self.request_id = request_id
        self.params = params
        self.token_ids = list(prompt_token_ids)  # prompt followed by output
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0  # tokens whose KV is in the cache
        self.num_cached_tokens: int | None = None  # prefix-cache hit at first admission
        self.max_model_len_tokens = max_model_len_tokens
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.num_preemptions = 0

        self.stop_token_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else eos_token_ids
        )
        self._eos_token_ids = frozenset() if params.ignore_eos else eos_token_ids

        self.arrival_time_s = arrival_time_s
        budget = params.time_budget_ms
        self.deadline_s = None if budget is None else arrival_time_s + budget / 1000.0
        self.first_scheduled_time_s: float | None = None
        self.first_token_time_s: float | None = None
        self.finish_time_s: float | None = None

        self._detokenizer = IncrementalDetokenizer(decode, prompt_token_ids) if decode else None
        self._stop_matcher = StopStringMatcher(params.stop)
        self.text = ""  # released output text (stop strings cut, held-back text excluded)
        self._num_streamed_tokens = 0
        self._num_streamed_chars = 0

    # ---- shape of the work -----------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Only the last sampled token is left to compute."""
        return self.num_uncomputed_tokens == 1 and self.num_tokens > self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def rank(self) -> tuple[int, float, int]:
        """Scheduling order: lower runs first (priority class, then arrival)."""
        return (int(self.params.priority), self.arrival_time_s, self.request_id)

    # ---- output ----------------------------------------------------------------------------------

    def append_output(self, token_id: int) -> str | None:
        """Record a sampled token. Returns a finish reason, or None to keep going."""
        if token_id in self.stop_token_ids:
            return "eos" if token_id in self._eos_token_ids else "stop"
        self.token_ids.append(token_id)
        if self._detokenizer is not None:
            self.text += self._stop_matcher.push(self._detokenizer.push(token_id))
            if self._stop_matcher.stopped:
                return "stop"
        if len(self.token_ids) - self.num_prompt_tokens >= self.params.max_new_tokens:
            return "length"
        if self.max_model_len_tokens is not None and self.num_tokens >= self.max_model_len_tokens:
            return "length"
        return None

    def finish(self, reason: str, now_s: float, error: str | None = None) -> None:
        assert not self.is_finished, self.request_id
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.error = error
        self.finish_time_s = now_s
        if self._detokenizer is not None and not self._stop_matcher.stopped:
            self.text += self._stop_matcher.push(self._detokenizer.flush())
            if not self._stop_matcher.stopped:
                self.text += self._stop_matcher.flush()

    def take_stream_chunk(self) -> StreamChunk | None:
        """What was produced since the previous call, or None when nothing was."""
        new_ids = tuple(self.token_ids[self.num_prompt_tokens + self._num_streamed_tokens :])
        new_text = self.text[self._num_streamed_chars :]
        if not new_ids and not new_text:
            return None
        self._num_streamed_tokens += len(new_ids)
        self._num_streamed_chars = len(self.text)
        return StreamChunk(text=new_text, token_ids=new_ids)

    def result(self) -> GenerationResult:
        assert self.is_finished and self.finish_reason is not None
        timings_ms: dict[str, float] = {}
        if self.finish_time_s is not None:
            timings_ms["total"] = (self.finish_time_s - self.arrival_time_s) * 1000.0
            if self.first_scheduled_time_s is not None:
                timings_ms["queue"] = (self.first_scheduled_time_s - self.arrival_time_s) * 1000.0
                if self.first_token_time_s is not None:
                    timings_ms["prefill"] = (self.first_token_time_s - self.first_scheduled_time_s) * 1000.0
                    timings_ms["decode"] = (self.finish_time_s - self.first_token_time_s) * 1000.0
        return GenerationResult(
            text=self.text,
            token_ids=self.output_token_ids,
            num_prompt_tokens=self.num_prompt_tokens,
            num_cached_tokens=self.num_cached_tokens or 0,
            finish_reason=self.finish_reason,
            error=self.error,
            timings_ms=timings_ms,
        )
