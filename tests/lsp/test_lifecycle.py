"""Server start-up as editors see it: initialize at once, the model loading as $/progress, torch
imported only when the engine starts, a failed load reported and survived."""

from __future__ import annotations

import asyncio
import time

import pytest
from lsprotocol import types

from tests.lsp import harness

pytestmark = pytest.mark.asyncio


async def test_initialize_answers_before_the_engine_and_loading_shows_progress(code_model, tmp_path):
    client = await harness.server_config(code_model, tmp_path).start()
    try:
        client.capabilities = harness.capabilities("visual-studio-code")
        started = time.monotonic()
        result = await client.initialize_async(
            types.InitializeParams(capabilities=harness.capabilities("visual-studio-code"), process_id=None)
        )
        assert time.monotonic() - started < 5
        caps = result.capabilities
        assert caps.inline_completion_provider is not None
        assert caps.completion_provider is not None
        assert caps.code_action_provider.resolve_provider is True
        assert "exlsp.chat" in caps.execute_command_provider.commands
        # Before `initialized` the engine has not started: no torch in the server process yet.
        before = await harness.status(client)
        assert (before["state"], before["torchImported"]) == ("idle", False)

        client.initialized(types.InitializedParams())
        ready = await harness.wait_for(client, lambda s: s["state"] == "ready", timeout_s=60)
        assert ready["torchImported"] is True
        assert ready["fim"] == "fill-in-the-middle: qwen template, repo-level layout"
        assert ready["model"] == str(code_model)

        await asyncio.sleep(0.1)
        kinds = [p.kind for p in client.progress_reports["exlsp/load-model"]]
        assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds
        assert client.progress_reports["exlsp/load-model"][0].message == str(code_model)
        assert client.progress_reports["exlsp/load-model"][-1].message == "ready"
        assert any(m.message.startswith("exlsp: model ready in") for m in client.log_messages)
    finally:
        await harness.stop(client)


async def test_a_model_that_fails_to_load_is_reported_and_the_server_keeps_answering(tmp_path):
    client = await harness.start(harness.server_config(tmp_path / "no-such-model", tmp_path))
    try:
        current = await harness.status(client)
        assert current["state"] == "failed"
        assert "no-such-model" in current["error"]
        await asyncio.sleep(0.1)
        errors = [m for m in client.messages if m.type == types.MessageType.Error]
        assert len(errors) == 1 and "the model failed to load" in errors[0].message

        uri = (tmp_path / "a.py").as_uri()
        harness.open_doc(client, uri, "x = 1\n")
        assert await harness.inline(client, uri, 1, 0) == []
        completion = await harness.menu(client, uri, 1, 0)
        assert list(completion.items) == []
    finally:
        await harness.stop(client)


async def test_a_model_without_fim_tokens_gets_a_clear_message(plain_model, tmp_path):
    client = await harness.start(harness.server_config(plain_model, tmp_path))
    try:
        current = await harness.status(client)
        assert current["state"] == "ready"
        assert "no fill-in-the-middle tokens" in current["fim"]
        await asyncio.sleep(0.1)
        assert any("no fill-in-the-middle tokens" in m.message for m in client.messages)
        # Completions still work, from the text before the cursor.
        uri = (tmp_path / "a.py").as_uri()
        harness.open_doc(client, uri, "def mul(a, b):\n    \n")
        items = await harness.inline(client, uri, 1, 4)
        assert len(items) == 1 and items[0].insert_text
    finally:
        await harness.stop(client)


async def test_stdio_flag_and_device_override_keep_the_model_in_status(code_model, tmp_path):
    # vscode-languageclient appends --stdio to the command; --device must not hide the model name.
    client = await harness.start(harness.server_config(code_model, tmp_path, "--stdio", "--device", "cpu"))
    try:
        current = await harness.status(client)
        assert (current["state"], current["model"], current["device"]) == ("ready", str(code_model), "cpu")
    finally:
        await harness.stop(client)
