"""What a caller asks of the engine and what it gets back. Pure data, no torch.

These types are the seam between the language server (exlsp/) and the engine: the server builds
`SamplingParams`, submits a prompt, iterates `StreamChunk`s and finally reads a `GenerationResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class Priority(IntEnum):
    """Lower value is scheduled first: a keystroke's completion outranks a chat answer."""

    COMPLETION = 0
    CHAT = 1
    BACKGROUND = 2


FINISH_REASONS = ("eos", "stop", "length", "cancelled", "deadline", "error")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before the first one
    stop_token_ids: tuple[int, ...] = ()  # in addition to the tokenizer's EOS ids
    ignore_eos: bool = False
    time_budget_ms: float | None = None  # after this the request returns what it has (finish "deadline")
    priority: Priority = Priority.COMPLETION
    truncate_prompt: bool = False  # left-truncate a prompt longer than the context instead of failing

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass(frozen=True)
class StreamChunk:
    """Text produced since the previous chunk. Never splits a UTF-8 character."""

    text: str
    token_ids: tuple[int, ...]


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    finish_reason: str  # one of FINISH_REASONS
    error: str | None = None  # set when finish_reason == "error"
    timings_ms: dict[str, float] = field(default_factory=dict)  # queue, prefill, decode, total
