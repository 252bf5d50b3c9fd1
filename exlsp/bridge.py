"""The one seam between the asyncio loop of the server and the engine's own thread.

The engine (engine/engine.py) is built in a background thread, because loading a model takes
seconds and imports torch, and `initialize` must be answered at once. After that, `generate`
submits a prompt and awaits its result on the loop without blocking it; cancelling the awaiting
task (a `$/cancelRequest`, a newer keystroke) cancels the request inside the engine, which stops it
at its next step and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from engine.request import GenerationResult, SamplingParams


class EngineState(StrEnum):
    IDLE = "idle"  # not started yet
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class EngineBridge:
    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self.state = EngineState.IDLE
        self.error: str | None = None
        self.engine: Any = None
        self.load_seconds: float | None = None
        self._ready: asyncio.Future[bool] | None = None

    def start(self, on_done: Callable[[EngineBridge], None] | None = None) -> None:
        """Build the engine in a thread; `on_done` runs on the loop once it is ready or failed."""
        if self.state is not EngineState.IDLE:
            return
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self.state = EngineState.LOADING

        def finish(engine: Any, error: str | None, seconds: float) -> None:
            self.engine, self.error, self.load_seconds = engine, error, seconds
            self.state = EngineState.READY if error is None else EngineState.FAILED
            if not self._ready.done():
                self._ready.set_result(error is None)
            if on_done is not None:
                on_done(self)

        def load() -> None:
            started = time.perf_counter()
            engine, error = None, None
            try:
                engine = self._factory()
            except BaseException as exc:  # a failed load must never take the server down
                error = f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - started
            try:
                loop.call_soon_threadsafe(finish, engine, error, seconds)
            except RuntimeError:  # loop closed: the server is exiting
                if engine is not None:
                    engine.close()

        threading.Thread(target=load, name="exlsp-engine-load", daemon=True).start()

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        if self.state is EngineState.READY:
            return True
        if self._ready is None:
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            return False

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    async def generate(
        self,
        prompt: list[int] | str,
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        on_submit: Callable[[Any], None] | None = None,
    ) -> GenerationResult:
        """Run one request to the end. Cancelling the awaiting task cancels it in the engine."""
        assert self.engine is not None, "generate() before the engine is ready"
        handle = self.engine.submit(prompt, params)
        if on_submit is not None:
            on_submit(handle)
        try:
            if on_text is not None:
                async for chunk in handle:
                    if chunk.text:
                        on_text(chunk.text)
            return await handle.wait()
        except BaseException:
            handle.cancel()  # idempotent; takes effect at the engine's next step
            raise

    def stats(self) -> dict:
        if self.engine is None:
            return {}
        try:
            return dict(self.engine.stats())
        except Exception as exc:  # stats are informative; never fail a status request on them
            return {"error": str(exc)}

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()
