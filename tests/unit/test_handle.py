"""RequestHandle as its callers see it: result() blocks until the request finishes (streamed chunks
do not end the wait), honours its timeout, and every reader sees every chunk."""

from __future__ import annotations

import threading

import pytest

from engine.handle import RequestHandle
from engine.request import GenerationResult, StreamChunk


def finished(text: str) -> GenerationResult:
    return GenerationResult(
        text=text, token_ids=[1, 2], num_prompt_tokens=3, num_cached_tokens=0, finish_reason="length"
    )


def test_result_times_out_while_chunks_stream_and_returns_once_finished():
    handle = RequestHandle(7, cancel=lambda request_id: None)
    handle._push(StreamChunk(text="a", token_ids=(1,)))
    with pytest.raises(TimeoutError, match="request 7 did not finish"):
        handle.result(timeout=0.05)
    assert not handle.done()

    got = []
    waiter = threading.Thread(target=lambda: got.append(handle.result(timeout=10)))
    waiter.start()
    handle._push(StreamChunk(text="b", token_ids=(2,)))  # a chunk alone does not end the wait
    handle._finish(finished("ab"))
    waiter.join(timeout=10)
    assert [r.text for r in got] == ["ab"] and handle.done()
    assert handle.result(timeout=0).text == "ab"  # finished: returns at once, any number of times
    assert [c.text for c in handle] == ["a", "b"]
