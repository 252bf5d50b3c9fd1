"""Shared pieces of the end-to-end LSP tests: the tiny model, the server command, client helpers.

The tiny model is a random-weight Qwen2 with a real byte-level BPE tokenizer that has FIM tokens
(tests/tiny_models.py). Its special-token embeddings are zeroed so that greedy decoding never
picks one: the model never stops on its own (long generations for the cancellation tests) and
always produces some text for the post-processing to shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from exlsp.handlers import plain
from tests.tiny_models import make_tiny_checkpoint

SEED = 1  # a seed whose greedy output survives post-processing as short non-empty suggestions
CONTEXT_TOKENS = 4096


def make_code_model(folder: Path, *, fim: bool = True) -> Path:
    from safetensors.torch import load_file, save_file

    path = make_tiny_checkpoint(
        folder, family="qwen2", seed=SEED, fim=fim, max_position_embeddings=CONTEXT_TOKENS
    )
    special = [
        t["id"] for t in json.loads((path / "tokenizer.json").read_text())["added_tokens"] if t.get("special")
    ]
    weights = load_file(str(path / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in weights:
            weights[name][special] = 0
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def server_config(
    model: Path | str, home: Path, *extra: str, script: list[str] | None = None
) -> ClientServerConfig:
    env = {
        **os.environ,
        "EXLSP_CONFIG_DIR": str(home / "config"),
        "EXLSP_CACHE_DIR": str(home / "cache"),
        "EXLSP_DATA_DIR": str(home / "data"),
    }
    command = script or [sys.executable, "-m", "exlsp.cli", "serve"]
    return ClientServerConfig(
        server_command=[*command, *(["--model", str(model)] if model else []), *extra],
        server_env=env,
        client_factory=make_client,
    )


def _plain_result_hook(obj, cls):
    return cls(**obj)  # keep custom results (exlsp/status) as JSON dicts: "*" is not a field name


def _converter():
    from pygls.protocol import JsonRPCResponseMessage, default_converter

    converter = default_converter()
    converter.register_structure_hook(JsonRPCResponseMessage, _plain_result_hook)
    return converter


def make_client() -> LanguageClient:
    from pytest_lsp.client import register_lsp_features

    client = LanguageClient(converter_factory=_converter)
    register_lsp_features(client)
    return client


def request(client: LanguageClient, method: str, params: Any, msg_id: str) -> asyncio.Future:
    """Send a request with a known id (to cancel it later); returns a future of its result."""
    return asyncio.ensure_future(client.protocol.send_request_async(method, params, msg_id=msg_id))


def capabilities(client_name: str, *, inline: bool = False) -> types.ClientCapabilities:
    caps = client_capabilities(client_name)
    if inline:
        caps.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    return caps


async def start(
    config: ClientServerConfig,
    client_name: str = "visual-studio-code",
    *,
    inline: bool = False,
    options: dict | None = None,
    workspace: Path | None = None,
    wait_ready: bool = True,
) -> LanguageClient:
    client = await config.start()
    root = workspace.as_uri() if workspace else None
    await client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(client_name, inline=inline),
            initialization_options=options,
            root_uri=root,
            workspace_folders=[types.WorkspaceFolder(uri=root, name=workspace.name)] if workspace else None,
        )
    )
    if wait_ready:
        await wait_for(client, lambda s: s["state"] in ("ready", "failed"), timeout_s=60)
    return client


async def stop(client: LanguageClient) -> None:
    await client.shutdown_session()
    await client.stop()


async def status(client: LanguageClient) -> dict[str, Any]:
    return plain(await client.protocol.send_request_async("exlsp/status", {}))


async def wait_for(client: LanguageClient, predicate, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        current = await status(client)
        if predicate(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last status: {current}")
        await asyncio.sleep(0.05)


_versions: dict[str, int] = {}


def open_doc(client: LanguageClient, uri: str, text: str, language_id: str = "python") -> None:
    _versions[uri] = 1
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)
        )
    )


def type_text(client: LanguageClient, uri: str, line: int, character: int, text: str) -> None:
    """Insert `text` at (line, character) the way editors report typing: one incremental change."""
    _versions[uri] = _versions.get(uri, 1) + 1
    at = types.Position(line=line, character=character)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=_versions[uri]),
            content_changes=[
                types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=text)
            ],
        )
    )


def inline_params(uri: str, line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


async def inline(
    client: LanguageClient, uri: str, line: int, character: int
) -> list[types.InlineCompletionItem]:
    result = await client.text_document_inline_completion_async(inline_params(uri, line, character))
    if result is None:
        return []
    return list(result.items if isinstance(result, types.InlineCompletionList) else result)


async def menu(client: LanguageClient, uri: str, line: int, character: int) -> types.CompletionList:
    """textDocument/completion at a position (the menu fallback of clients without inline completion)."""
    return await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
        )
    )


async def set_settings(client: LanguageClient, **settings: Any) -> None:
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"exlsp": settings})
    )
    await wait_for(client, lambda s: all(s["settings"][_snake(k)] == v for k, v in settings.items()))


def _snake(name: str) -> str:
    from exlsp.settings import camel_to_snake

    return camel_to_snake(name)


def reference_suggestion(
    engine, text: str, offset: int, *, path: str, repo_name: str, **settings: Any
) -> str | None:
    """The suggestion computed in this process through the same pure pipeline, for equality tests."""
    from engine.request import SamplingParams
    from exlsp.documents import Document
    from exlsp.handlers.completion import cursor_context, fim_input
    from exlsp.handlers.lifecycle import budgets
    from exlsp.postprocess import postprocess
    from exlsp.prompt import PromptBuilder
    from exlsp.settings import Settings

    s = Settings(**settings)
    doc = Document(uri="file:///ref", language_id="python", version=1, text=text)
    fim = fim_input(doc, offset, s, path=path, repo_name=repo_name)
    prompt = PromptBuilder(engine.tokenizer).build(fim, budgets(s, engine.config.max_position_embeddings))
    cursor = cursor_context(text, offset)
    # The stop rules are spelled out here, not imported: the test checks the server's choice.
    params = SamplingParams(
        max_new_tokens=s.max_tokens,
        stop_token_ids=prompt.stop_token_ids,
        stop=("\n",) if cursor.mid_line else ("\n```",),
        truncate_prompt=True,
    )
    return postprocess(engine.generate(list(prompt.token_ids), params).text, cursor)
