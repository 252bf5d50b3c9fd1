"""Bad input never takes the server down: each case answers an error or an empty result, logs why,
and the next request is served normally."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcMethodNotFound

from tests.lsp import harness

pytestmark = pytest.mark.asyncio(loop_scope="module")
SOURCE = "def mul(a, b):\n    \n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("ws")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(code_model, workspace):
    c = await harness.start(
        harness.server_config(
            code_model,
            workspace,
            script=[sys.executable, str(Path(__file__).with_name("failing_engine_server.py"))],
        ),
        options={"maxTokens": 8, "debounceMs": 0, "extraContextTokens": 0},
        workspace=workspace,
    )
    yield c
    await harness.stop(c)


async def still_serving(client, workspace) -> None:
    uri = (workspace / "healthy.py").as_uri()
    harness.open_doc(client, uri, SOURCE)
    assert len(await harness.inline(client, uri, 1, 4)) == 1


async def raw(client, body: bytes) -> None:
    client._server.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    await client._server.stdin.drain()


def logged(client, text: str) -> bool:
    return any(text in m.message for m in client.log_messages)


async def test_malformed_json_rpc(client, workspace):
    await raw(client, b'{"jsonrpc": "2.0", "id": 99, "method": ')
    await raw(client, b'{"jsonrpc": "2.0", "id": 98, "method": "textDocument/hover", "params": 12}')
    await still_serving(client, workspace)
    assert logged(client, "exlsp: ignored a bad message")


async def test_non_utf8_bytes(client, workspace):
    await raw(client, b'{"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": "\xff\xfe\x00"}')
    await still_serving(client, workspace)


async def test_unknown_methods(client, workspace):
    with pytest.raises(JsonRpcMethodNotFound):
        await client.protocol.send_request_async("exlsp/noSuchThing", {})
    client.protocol.notify("exlsp/noSuchNotification", {})
    await still_serving(client, workspace)


async def test_requests_for_documents_never_opened(client, workspace):
    uri = (workspace / "never.py").as_uri()
    assert await harness.inline(client, uri, 0, 0) == []
    assert logged(client, f"completion for a document that was never opened: {uri}")
    harness.type_text(client, uri, 0, 0, "x")  # a change for it too
    await still_serving(client, workspace)
    assert logged(client, f"change for a document that was never opened: {uri}")


async def test_positions_past_the_end_are_clamped(client, workspace):
    uri = (workspace / "short.py").as_uri()
    harness.open_doc(client, uri, SOURCE)
    (past_line,) = await harness.inline(client, uri, 1, 400)
    assert past_line.range.start == types.Position(line=1, character=4)
    (past_doc,) = await harness.inline(client, uri, 90, 3)
    assert past_doc.range.start == types.Position(line=2, character=0)


async def test_positions_count_utf16_code_units(client, workspace, code_model):
    from engine import Engine

    uri = (workspace / "emoji.py").as_uri()
    text = 'label = "😋🎉"\nsize = len(label)\ndef f():\n    '
    harness.open_doc(client, uri, text)
    # Line 3, character 4 in UTF-16; the emoji on line 0 are 2 units each but 1 code point.
    (item,) = await harness.inline(client, uri, 3, 4)
    assert item.range.start == types.Position(line=3, character=4)
    engine = Engine(code_model)
    try:
        expected = harness.reference_suggestion(
            engine,
            text,
            len(text),
            path="emoji.py",
            repo_name=workspace.name,
            max_tokens=8,
            extra_context_tokens=0,
        )
    finally:
        engine.close()
    assert item.insert_text == expected
    # After the emoji on line 0: UTF-16 character 13 is code point 11.
    (mid,) = await harness.inline(client, uri, 0, 13) or [None]
    assert mid is None or mid.range.start == types.Position(line=0, character=13)


async def test_a_ten_megabyte_document(client, workspace):
    uri = (workspace / "huge.py").as_uri()
    line = "value_%07d = compute(%d)  # padding to make this line longer\n"
    text = (
        "".join(line % (i, i) for i in range(10 * 1024 * 1024 // len(line % (0, 0)) + 1))
        + "def tail():\n    "
    )
    assert len(text) > 10 * 1024 * 1024
    harness.open_doc(client, uri, text)
    last = text.count("\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    items = await harness.inline(client, uri, last, 4)
    assert loop.time() - started < 15
    assert len(items) == 1
    current = await harness.status(client)
    assert current["completions"]["errors"] == 0
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )


async def test_binary_content(client, workspace):
    uri = (workspace / "blob.bin").as_uri()
    harness.open_doc(client, uri, "PK\x03\x04\x00\x00\x00binary\x00", language_id="plaintext")
    assert await harness.inline(client, uri, 0, 3) == []
    assert logged(client, "looks binary; no completions for it")
    # A lone surrogate (valid JSON, not valid UTF-8 text) is replaced, not crashed on.
    uri = (workspace / "surrogate.py").as_uri()
    harness.open_doc(client, uri, 'x = "\ud800"\ny = ')
    assert len(await harness.inline(client, uri, 1, 4)) == 1


async def test_the_engine_raising_mid_request(client, workspace):
    uri = (workspace / "boom.py").as_uri()
    harness.open_doc(client, uri, SOURCE)
    before = (await harness.status(client))["completions"]["errors"]
    assert await client.protocol.send_request_async("test/failNextSubmit", {}) is True
    assert await harness.inline(client, uri, 1, 4) == []
    assert logged(client, "exlsp: completion failed: RuntimeError: injected engine failure")
    assert (await harness.status(client))["completions"]["errors"] == before + 1
    await still_serving(client, workspace)
