"""Counters and latency percentiles behind `exlsp/status`. Pure; local only, never sent anywhere."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

LATENCY_WINDOW = 512  # the percentiles cover this many most recent completions


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100.0 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Counters:
    num_requests: int = 0  # inline + fallback completion requests
    num_generations: int = 0  # requests that reached the engine
    num_cache_hits: int = 0  # answered by the type-through cache
    num_debounced: int = 0  # superseded by a newer request for the same document
    num_cancelled: int = 0  # cancelled by the client or a newer request
    num_errors: int = 0
    num_shown: int = 0  # suggestions returned to the editor
    num_accepted: int = 0  # exlsp.accept commands received
    num_prompt_tokens: int = 0
    num_cached_prompt_tokens: int = 0  # prompt tokens the engine's prefix cache served
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def record_latency(self, ms: float) -> None:
        self.latencies_ms.append(ms)

    def snapshot(self) -> dict:
        latencies = list(self.latencies_ms)
        return {
            "requests": self.num_requests,
            "generations": self.num_generations,
            "typeThroughHits": self.num_cache_hits,
            "debounced": self.num_debounced,
            "cancelled": self.num_cancelled,
            "errors": self.num_errors,
            "shown": self.num_shown,
            "accepted": self.num_accepted,
            "promptTokens": self.num_prompt_tokens,
            "cachedPromptTokens": self.num_cached_prompt_tokens,
            "prefixCacheHitRate": (
                self.num_cached_prompt_tokens / self.num_prompt_tokens if self.num_prompt_tokens else None
            ),
            "latencyMs": {
                "p50": percentile(latencies, 50),
                "p95": percentile(latencies, 95),
                "count": len(latencies),
            },
        }
