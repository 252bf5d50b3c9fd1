"""Server-side debounce: of a burst of requests for one document, only the last one generates.

Each request waits `delay_ms`; if a newer request for the same key arrived meanwhile, the older
one is superseded and answers empty. Lives on the asyncio loop; no threads.
"""

from __future__ import annotations

import asyncio


class Debouncer:
    def __init__(self) -> None:
        self._generation: dict[str, int] = {}
        self.num_superseded = 0

    def arrive(self, key: str) -> int:
        """Register a request; returns its ticket."""
        ticket = self._generation.get(key, 0) + 1
        self._generation[key] = ticket
        return ticket

    def is_latest(self, key: str, ticket: int) -> bool:
        return self._generation.get(key) == ticket

    async def settle(self, key: str, delay_ms: float) -> bool:
        """Wait out the debounce delay; True when this request is still the newest for `key`."""
        ticket = self.arrive(key)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        latest = self.is_latest(key, ticket)
        if not latest:
            self.num_superseded += 1
        return latest
