"""textDocument/codeAction (offered cheaply), codeAction/resolve (the model runs here),
exlsp.showAnswer (prose results as a document) and exlsp.chat (streamed as work-done progress)."""

from __future__ import annotations

import itertools
import logging
import tempfile
import uuid
from pathlib import Path

from lsprotocol import types
from pygls.uris import from_fs_path, to_fs_path

from engine.request import GenerationResult, Priority, SamplingParams
from exlsp.actions import (
    FIX,
    KINDS,
    action_messages,
    action_title,
    extract_code,
    keep_indentation,
    name_for_tests_file,
    offered_actions,
)
from exlsp.chat import chat_messages, parse_chat_request, prompt_text
from exlsp.handlers import plain
from exlsp.protocol import command_work_done_token

log = logging.getLogger("exlsp")
CHAT_COMMAND = "exlsp.chat"
SHOW_ANSWER_COMMAND = "exlsp.showAnswer"
READY_WAIT_S = 120.0
_answer_numbers = itertools.count(1)


def _line_range(doc, r: types.Range) -> tuple[int, int]:
    """A range widened to whole lines, as code offsets [start, end)."""
    start = doc.line_starts[min(r.start.line, doc.num_lines - 1)] if r.start.line >= 0 else 0
    end_line = r.end.line
    if r.end.character == 0 and end_line > r.start.line:
        end_line -= 1
    if end_line + 1 < doc.num_lines:
        end = doc.line_starts[end_line + 1]
    else:
        end = len(doc.text)
    return start, max(start, end)


def _range_of(doc, start: int, end: int) -> types.Range:
    sl, sc = doc.position_at(start)
    el, ec = doc.position_at(end)
    return types.Range(start=types.Position(line=sl, character=sc), end=types.Position(line=el, character=ec))


def _prompt_text(ls, messages: list[dict[str, str]]) -> str:
    return prompt_text(ls.bridge.engine.tokenizer, messages)


async def _ensure_engine(ls) -> None:
    if not await ls.bridge.wait_ready(timeout_s=READY_WAIT_S):
        raise RuntimeError(f"the model is not available ({ls.bridge.error or ls.bridge.state.value})")


async def run_chat(ls, messages: list[dict[str, str]], on_text=None, on_submit=None) -> GenerationResult:
    await _ensure_engine(ls)
    s = ls.settings
    params = SamplingParams(
        max_new_tokens=s.chat_max_tokens, temperature=s.temperature, priority=Priority.CHAT
    )
    result = await ls.bridge.generate(
        _prompt_text(ls, messages), params, on_text=on_text, on_submit=on_submit
    )
    if result.finish_reason == "error":
        raise RuntimeError(f"the engine failed: {result.error}")
    return result


def _answer_dir(ls) -> Path:
    directory = ls.answers_dir or Path(tempfile.gettempdir()) / "exlsp-answers"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _supports_create_file(ls) -> bool:
    ws = ls.client_capabilities.workspace
    edit = ws.workspace_edit if ws else None
    ops = edit.resource_operations if edit else None
    return bool(edit and edit.document_changes and ops and types.ResourceOperationKind.Create in ops)


def _new_file_uri(uri: str) -> str | None:
    path = to_fs_path(uri) if uri.startswith("file:") else None
    if path is None:
        return None
    src = Path(path)
    name = name_for_tests_file(src.stem, src.suffix)
    candidate = src.with_name(name)
    n = 2
    while candidate.exists():
        candidate = src.with_name(f"{Path(name).stem}_{n}{Path(name).suffix}")
        n += 1
    return from_fs_path(str(candidate))


def register(server) -> None:
    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(
            code_action_kinds=[
                types.CodeActionKind.QuickFix,
                types.CodeActionKind.Refactor,
                types.CodeActionKind.RefactorRewrite,
            ],
            resolve_provider=True,
        ),
    )
    def code_action(ls, params: types.CodeActionParams):
        doc = ls.documents.get(params.text_document.uri)
        if doc is None:
            return []
        r = params.range
        has_selection = (r.start.line, r.start.character) != (r.end.line, r.end.character)
        diagnostics = list(params.context.diagnostics or [])
        actions = []
        for kind, message in offered_actions(has_selection, [d.message for d in diagnostics]):
            target = r
            if kind is FIX:
                target = next(d.range for d in diagnostics if d.message == message)
            data = {
                "action": kind.name,
                "uri": doc.uri,
                "range": [target.start.line, target.start.character, target.end.line, target.end.character],
                "diagnostic": message,
            }
            actions.append(
                types.CodeAction(
                    title=action_title(kind, message),
                    kind=kind.lsp_kind,
                    diagnostics=[d for d in diagnostics if d.message == message] if kind is FIX else None,
                    data=data,
                )
            )
        return actions

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def resolve_code_action(ls, action: types.CodeAction) -> types.CodeAction:
        data = plain(action.data)
        data = data if isinstance(data, dict) else {}
        kind = KINDS.get(data.get("action"))
        doc = ls.documents.get(data.get("uri", ""))
        if kind is None or doc is None:
            ls.log(
                "exlsp: cannot resolve this code action (unknown or closed document)",
                types.MessageType.Warning,
            )
            return action
        l1, c1, l2, c2 = data["range"]
        selection = types.Range(
            start=types.Position(line=l1, character=c1), end=types.Position(line=l2, character=c2)
        )
        start, end = _line_range(doc, selection)
        code = doc.text[start:end]
        messages = action_messages(
            kind,
            code,
            language_id=doc.language_id,
            path=ls.relative_path(doc.uri),
            diagnostic=data.get("diagnostic"),
        )
        try:
            answer = (await run_chat(ls, messages)).text
        except Exception as exc:
            ls.log(f"exlsp: {kind.name} failed: {exc}", types.MessageType.Error)
            ls.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Error, message=f"exlsp: {exc}")
            )
            return action
        new_code = keep_indentation(code, extract_code(answer))
        if kind.result != "prose" and not new_code.strip():
            # An empty edit would delete the user's code: show what the model said instead.
            ls.log(f"exlsp: {kind.name}: the model returned no code", types.MessageType.Warning)
        elif kind.result == "replace":
            if code.endswith("\n") and not new_code.endswith("\n"):
                new_code += "\n"
            action.edit = types.WorkspaceEdit(
                changes={doc.uri: [types.TextEdit(range=_range_of(doc, start, end), new_text=new_code)]}
            )
            return action
        elif kind.result == "new_file" and _supports_create_file(ls):
            target = _new_file_uri(doc.uri)
            if target is not None:
                zero = types.Position(line=0, character=0)
                action.edit = types.WorkspaceEdit(
                    document_changes=[
                        types.CreateFile(uri=target, options=types.CreateFileOptions(ignore_if_exists=True)),
                        types.TextDocumentEdit(
                            text_document=types.OptionalVersionedTextDocumentIdentifier(
                                uri=target, version=None
                            ),
                            edits=[
                                types.TextEdit(
                                    range=types.Range(start=zero, end=zero),
                                    new_text=extract_code(answer) + "\n",
                                )
                            ],
                        ),
                    ]
                )
                return action
        # Prose (or code the client cannot put in a new file): an answer document to show.
        path = _answer_dir(ls) / f"{kind.name}-{next(_answer_numbers)}-{uuid.uuid4().hex[:6]}.md"
        path.write_text(answer, encoding="utf-8")
        answer_uri = from_fs_path(str(path))
        ls.answers[answer_uri] = answer
        action.command = types.Command(title=kind.title, command=SHOW_ANSWER_COMMAND, arguments=[answer_uri])
        return action

    @server.command(SHOW_ANSWER_COMMAND)
    async def show_answer(ls, *args) -> bool:
        args = plain(list(args))
        uri = args[0] if args and isinstance(args[0], str) else None
        text = ls.answers.get(uri or "")
        if text is None:
            return False
        window = ls.client_capabilities.window
        if window is not None and window.show_document is not None and window.show_document.support:
            result = await ls.window_show_document_async(types.ShowDocumentParams(uri=uri, take_focus=True))
            if result.success:
                return True
        ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Info, message=text))
        return True

    @server.command(CHAT_COMMAND)
    async def chat(ls, *args) -> dict:
        request = parse_chat_request(plain(list(args)))
        selection, path, language_id = None, None, ""
        if request.uri is not None:
            doc = ls.documents.get(request.uri)
            if doc is not None:
                path, language_id = ls.relative_path(doc.uri), doc.language_id
                if request.range is not None:
                    l1, c1, l2, c2 = request.range
                    selection = doc.text[doc.offset_at(l1, c1) : doc.offset_at(l2, c2)] or None
        messages = chat_messages(request.message, path=path, language_id=language_id, selection=selection)
        # The client's own workDoneToken when it sent one, else one we create (if it supports that).
        client_token = command_work_done_token.get()
        token = client_token if client_token is not None else f"exlsp/chat/{uuid.uuid4().hex}"
        window = ls.client_capabilities.window
        progress = client_token is not None or bool(window and window.work_done_progress)
        handles: list = []
        if progress:
            if client_token is None:
                await ls.work_done_progress.create_async(token)
            # Cancellable: the editor's cancel button (window/workDoneProgress/cancel) stops decoding.
            ls.work_done_progress.begin(
                token, types.WorkDoneProgressBegin(title="exlsp chat", cancellable=True)
            )
            cancelled = ls.work_done_progress.tokens.get(token)
            if cancelled is not None:
                cancelled.add_done_callback(lambda _: [h.cancel() for h in handles])

        def on_text(delta: str) -> None:
            if progress:
                ls.work_done_progress.report(token, types.WorkDoneProgressReport(message=delta))

        try:
            result = await run_chat(ls, messages, on_text=on_text, on_submit=handles.append)
        finally:
            if progress:
                ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message="done"))
                ls.work_done_progress.tokens.pop(token, None)
        return {"text": result.text, "finishReason": result.finish_reason}
