"""Debounce (a burst of requests for one document generates once) and the status percentiles."""

from __future__ import annotations

import asyncio

from exlsp.debounce import Debouncer
from exlsp.status import Counters, percentile


def test_only_the_newest_request_of_a_burst_survives():
    async def burst():
        debouncer = Debouncer()
        results = await asyncio.gather(
            *(debouncer.settle("doc", 20) for _ in range(4)), debouncer.settle("other", 20)
        )
        return results, debouncer.num_superseded

    results, superseded = asyncio.run(burst())
    assert results == [False, False, False, True, True]
    assert superseded == 3


def test_zero_delay_still_lets_a_newer_request_win():
    debouncer = Debouncer()
    first = debouncer.arrive("d")
    second = debouncer.arrive("d")
    assert not debouncer.is_latest("d", first) and debouncer.is_latest("d", second)


def test_percentiles_are_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95)) == (50.0, 95.0)


def test_counters_snapshot():
    counters = Counters(num_prompt_tokens=200, num_cached_prompt_tokens=150)
    for ms in (10.0, 20.0, 30.0):
        counters.record_latency(ms)
    snap = counters.snapshot()
    assert snap["prefixCacheHitRate"] == 0.75
    assert snap["latencyMs"] == {"p50": 20.0, "p95": 30.0, "count": 3}
