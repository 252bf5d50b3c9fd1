"""Inline completion end to end, as VS Code and Neovim use it, against the real engine."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from tests.lsp import harness

pytestmark = pytest.mark.asyncio(loop_scope="module")
MAX_TOKENS = 16
SOURCE = "".join(f"def f{i}(a, b):\n    return a * {i} + b\n\n" for i in range(12)) + "def mul(a, b):\n    "


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("ws")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(code_model, workspace):
    c = await harness.start(
        harness.server_config(code_model, workspace),
        options={"maxTokens": MAX_TOKENS, "debounceMs": 0},
        workspace=workspace,
    )
    yield c
    await harness.stop(c)


@pytest.fixture(scope="module")
def engine(code_model):
    from engine import Engine

    e = Engine(code_model)
    yield e
    e.close()


def last_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1])


async def test_inline_completion_equals_the_pipeline_run_in_process(client, workspace, engine):
    uri = (workspace / "m.py").as_uri()
    harness.open_doc(client, uri, SOURCE)
    line, character = last_position(SOURCE)
    items = await harness.inline(client, uri, line, character)
    expected = harness.reference_suggestion(
        engine, SOURCE, len(SOURCE), path="m.py", repo_name=workspace.name, max_tokens=MAX_TOKENS
    )
    assert expected  # the tiny model's greedy output survives post-processing
    assert len(items) == 1
    item = items[0]
    assert item.insert_text == expected
    at = types.Position(line=line, character=character)
    assert item.range == types.Range(start=at, end=at)  # one line
    assert item.command.command == "exlsp.accept"

    before = (await harness.status(client))["completions"]["accepted"]
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=item.command.command, arguments=item.command.arguments)
    )
    assert (await harness.status(client))["completions"]["accepted"] == before + 1


async def test_fallback_completion_for_clients_without_inline_completion(client, workspace):
    uri = (workspace / "fallback.py").as_uri()
    harness.open_doc(client, uri, SOURCE)
    line, character = last_position(SOURCE)
    inline = await harness.inline(client, uri, line, character)
    result = await harness.menu(client, uri, line, character)
    assert result.is_incomplete is True
    (item,) = result.items
    assert item.label == inline[0].insert_text.split("\n")[0].strip()
    assert item.text_edit.new_text == inline[0].insert_text
    assert item.command.command == "exlsp.accept"


async def test_the_second_keystroke_is_served_from_the_prefix_cache(client, workspace):
    uri = (workspace / "keys.py").as_uri()
    harness.open_doc(client, uri, SOURCE)
    line, character = last_position(SOURCE)
    await harness.inline(client, uri, line, character)
    first = await harness.status(client)
    harness.type_text(client, uri, line, character, "q")
    await harness.inline(client, uri, line, character + 1)
    second = await harness.status(client)
    prompt = second["completions"]["promptTokens"] - first["completions"]["promptTokens"]
    cached = second["completions"]["cachedPromptTokens"] - first["completions"]["cachedPromptTokens"]
    assert prompt > 200
    # Everything before the cursor's 16-line block is shared, rounded down to the cache's blocks.
    assert cached >= prompt - 160, (cached, prompt)


async def test_typing_through_the_suggestion_answers_from_the_cache(client, workspace):
    uri = (workspace / "through.py").as_uri()
    harness.open_doc(client, uri, SOURCE)
    line, character = last_position(SOURCE)
    (item,) = await harness.inline(client, uri, line, character)
    text = item.insert_text
    assert len(text) >= 2
    before = (await harness.status(client))["completions"]
    harness.type_text(client, uri, line, character, text[0])
    (again,) = await harness.inline(client, uri, line, character + 1)
    after = (await harness.status(client))["completions"]
    assert again.insert_text == text[1:]
    assert after["typeThroughHits"] == before["typeThroughHits"] + 1
    assert after["generations"] == before["generations"]  # the model was not asked


async def test_a_burst_of_requests_produces_one_generation(client, workspace):
    await harness.set_settings(client, debounceMs=300, maxTokens=MAX_TOKENS)
    try:
        uri = (workspace / "burst.py").as_uri()
        harness.open_doc(client, uri, SOURCE)
        line, character = last_position(SOURCE)
        before = (await harness.status(client))["completions"]
        results = await asyncio.gather(*(harness.inline(client, uri, line, character) for _ in range(5)))
        after = (await harness.status(client))["completions"]
        assert after["generations"] - before["generations"] == 1
        assert after["debounced"] - before["debounced"] == 4
        assert [len(r) for r in results] == [0, 0, 0, 0, 1]
    finally:
        await harness.set_settings(client, debounceMs=0)


async def test_cancel_request_stops_the_generation_in_the_engine(client, workspace):
    await harness.set_settings(client, maxTokens=3000, timeBudgetMs=60000)
    try:
        uri = (workspace / "cancel.py").as_uri()
        harness.open_doc(client, uri, SOURCE)
        line, character = last_position(SOURCE)
        before = await harness.status(client)
        pending = harness.request(
            client,
            types.TEXT_DOCUMENT_INLINE_COMPLETION,
            harness.inline_params(uri, line, character),
            "long-one",
        )
        started = before["engine"]["generated_tokens"]
        await harness.wait_for(client, lambda s: s["engine"]["generated_tokens"] > started + 10)
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="long-one"))
        with pytest.raises(JsonRpcRequestCancelled):
            await pending
        after = await harness.wait_for(client, lambda s: s["engine"]["num_running"] == 0, timeout_s=5)
        generated = after["engine"]["generated_tokens"] - before["engine"]["generated_tokens"]
        assert 0 < generated < 3000
        assert after["completions"]["cancelled"] == before["completions"]["cancelled"] + 1
        assert after["engine"]["num_free_blocks"] == after["engine"]["num_cache_blocks"]
    finally:
        await harness.set_settings(client, maxTokens=MAX_TOKENS, timeBudgetMs=2000)


async def test_a_newer_request_for_the_document_cancels_the_older_one(client, workspace):
    await harness.set_settings(client, maxTokens=3000, timeBudgetMs=60000)
    try:
        uri = (workspace / "newer.py").as_uri()
        harness.open_doc(client, uri, SOURCE)
        line, character = last_position(SOURCE)
        before = await harness.status(client)
        older = asyncio.ensure_future(harness.inline(client, uri, line, character))
        started = before["engine"]["generated_tokens"]
        await harness.wait_for(client, lambda s: s["engine"]["generated_tokens"] > started + 10)
        newer = harness.request(
            client,
            types.TEXT_DOCUMENT_INLINE_COMPLETION,
            harness.inline_params(uri, line, character),
            "newer",
        )
        assert await older == []  # superseded: answered empty, stopped in the engine
        mid = await harness.status(client)
        assert mid["completions"]["cancelled"] == before["completions"]["cancelled"] + 1
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="newer"))
        with pytest.raises(JsonRpcRequestCancelled):
            await newer
        await harness.wait_for(client, lambda s: s["engine"]["num_running"] == 0, timeout_s=5)
    finally:
        await harness.set_settings(client, maxTokens=MAX_TOKENS, timeBudgetMs=2000)


async def test_the_time_budget_ends_a_long_generation_with_what_it_has(client, workspace):
    await harness.set_settings(client, maxTokens=3000, timeBudgetMs=1500)
    try:
        uri = (workspace / "budget.py").as_uri()
        harness.open_doc(client, uri, SOURCE)
        line, character = last_position(SOURCE)
        before = await harness.status(client)
        loop = asyncio.get_running_loop()
        started = loop.time()
        items = await harness.inline(client, uri, line, character)
        assert loop.time() - started < 6
        after = await harness.status(client)
        assert 0 < after["engine"]["generated_tokens"] - before["engine"]["generated_tokens"] < 3000
        assert len(items) == 1
    finally:
        await harness.set_settings(client, maxTokens=MAX_TOKENS, timeBudgetMs=2000)


async def test_status_reports_the_engine_and_the_counters(client):
    current = await harness.status(client)
    assert current["state"] == "ready" and current["device"] == "cpu"
    assert current["backend"] is not None
    assert current["engine"]["num_cache_blocks"] > 0
    completions = current["completions"]
    assert completions["shown"] >= 1 and completions["latencyMs"]["p50"] is not None
    assert completions["latencyMs"]["p95"] >= completions["latencyMs"]["p50"]
    assert 0 < completions["prefixCacheHitRate"] < 1


async def test_clients_with_inline_completion_get_no_duplicate_in_the_menu(code_model, tmp_path):
    c = await harness.start(
        harness.server_config(code_model, tmp_path), "neovim", inline=True, options={"debounceMs": 0}
    )
    try:
        uri = (tmp_path / "n.py").as_uri()
        harness.open_doc(c, uri, SOURCE)
        line, character = last_position(SOURCE)
        result = await harness.menu(c, uri, line, character)
        assert list(result.items) == []
        assert len(await harness.inline(c, uri, line, character)) == 1
    finally:
        await harness.stop(c)


async def test_neovim_recorded_capabilities_get_the_menu_fallback(code_model, tmp_path):
    """Neovim 0.11's recorded capabilities declare no inline completion: the menu item carries it."""
    c = await harness.start(harness.server_config(code_model, tmp_path), "neovim", options={"debounceMs": 0})
    try:
        uri = (tmp_path / "nv.py").as_uri()
        harness.open_doc(c, uri, SOURCE)
        line, character = last_position(SOURCE)
        result = await harness.menu(c, uri, line, character)
        (item,) = result.items
        (inline,) = await harness.inline(c, uri, line, character)
        assert item.text_edit.new_text == inline.insert_text
    finally:
        await harness.stop(c)


async def test_completion_outranks_a_long_chat_which_the_editor_can_cancel(client, workspace):
    await harness.set_settings(client, chatMaxTokens=3000, maxTokens=MAX_TOKENS)
    try:
        known = set(client.progress_reports)
        before = await harness.status(client)
        chat = asyncio.ensure_future(
            client.workspace_execute_command_async(
                types.ExecuteCommandParams(
                    command="exlsp.chat", arguments=[{"message": "tell me everything"}]
                )
            )
        )
        started = before["engine"]["generated_tokens"]
        await harness.wait_for(client, lambda s: s["engine"]["generated_tokens"] > started + 10)
        uri = (workspace / "during_chat.py").as_uri()
        harness.open_doc(client, uri, SOURCE)
        line, character = last_position(SOURCE)
        assert len(await harness.inline(client, uri, line, character)) == 1  # answered mid-chat
        assert not chat.done()

        (token,) = set(client.progress_reports) - known
        assert client.progress_reports[token][0].cancellable is True
        client.protocol.notify(
            types.WINDOW_WORK_DONE_PROGRESS_CANCEL, types.WorkDoneProgressCancelParams(token=token)
        )
        result = await chat
        assert result["finishReason"] == "cancelled"
        after = await harness.wait_for(client, lambda s: s["engine"]["num_running"] == 0, timeout_s=5)
        assert after["engine"]["generated_tokens"] - started < 3000
    finally:
        await harness.set_settings(client, chatMaxTokens=512)


async def test_cancel_request_stops_a_chat_in_the_engine(client):
    """$/cancelRequest with the chat's own request id: the client gets the cancelled error and the
    engine stops decoding (pygls alone would only drop the response and let the chat run on)."""
    await harness.set_settings(client, chatMaxTokens=3000, maxTokens=MAX_TOKENS)
    try:
        before = await harness.status(client)
        started = before["engine"]["generated_tokens"]
        msg_id = "chat-to-cancel"
        chat = harness.request(
            client,
            types.WORKSPACE_EXECUTE_COMMAND,
            types.ExecuteCommandParams(command="exlsp.chat", arguments=[{"message": "tell me everything"}]),
            msg_id,
        )
        await harness.wait_for(client, lambda s: s["engine"]["generated_tokens"] > started + 10)
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
        with pytest.raises(JsonRpcRequestCancelled):
            await chat
        after = await harness.wait_for(client, lambda s: s["engine"]["num_running"] == 0, timeout_s=5)
        assert after["engine"]["generated_tokens"] - started < 3000
    finally:
        await harness.set_settings(client, chatMaxTokens=512)
