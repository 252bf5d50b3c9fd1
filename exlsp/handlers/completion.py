"""textDocument/inlineCompletion, the textDocument/completion fallback, and exlsp.accept.

One pipeline for both: document + cursor -> type-through cache -> debounce -> FIM prompt (token
ids) -> engine -> post-processing -> one suggestion. Every failure answers empty and logs; the
server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from lsprotocol import types

from engine.request import Priority, SamplingParams
from exlsp.documents import looks_binary
from exlsp.handlers.lifecycle import budgets
from exlsp.postprocess import Cursor, postprocess
from exlsp.prompt import LINES_PER_BLOCK, ContextChunk, FimInput, Prompt

log = logging.getLogger("exlsp")
ACCEPT_COMMAND = "exlsp.accept"
FOLLOWING_LINES = 8  # lines after the cursor that post-processing looks at
CHARS_PER_TOKEN_BOUND = 16  # windows the document before tokenizing: no token is longer than this
DEADLINE_SLACK_S = 5.0  # the engine enforces the time budget; this only guards against a stuck engine


@dataclass(frozen=True)
class Suggestion:
    text: str
    line: int  # where it is inserted (LSP, UTF-16)
    character: int


def cursor_context(text: str, offset: int) -> Cursor:
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line_end = len(text) if line_end == -1 else line_end
    following: list[str] = []
    pos = line_end
    while pos < len(text) and len(following) < FOLLOWING_LINES:
        nxt = text.find("\n", pos + 1)
        nxt = len(text) if nxt == -1 else nxt
        following.append(text[pos + 1 : nxt])
        pos = nxt
    cursor = Cursor(
        line_before=text[line_start:offset],
        line_after=text[offset:line_end].rstrip("\r"),
        following=tuple(following),
    )
    return cursor


def fim_input(
    doc, offset: int, settings, *, path: str, repo_name: str = "", context: tuple[ContextChunk, ...] = ()
) -> FimInput:
    """Window the document around the cursor before any tokenization (a 10 MB file stays cheap)."""
    s = settings
    line, _ = doc.position_at(offset)
    max_prefix_lines = s.prefix_tokens  # every line is at least one token (its newline)
    first_line = max(0, line - max_prefix_lines)
    first_line -= first_line % LINES_PER_BLOCK
    start = doc.line_starts[first_line]
    start = max(start, offset - s.prefix_tokens * CHARS_PER_TOKEN_BOUND)
    if start != doc.line_starts[first_line]:  # minified text: cut at a line start if one is near
        nl = doc.text.find("\n", start, offset)
        start = nl + 1 if nl != -1 else start
        first_line, _ = doc.position_at(start)
    end = min(len(doc.text), offset + s.suffix_tokens * CHARS_PER_TOKEN_BOUND)
    return FimInput(
        prefix=doc.text[start:offset],
        suffix=doc.text[offset:end],
        first_line=first_line,
        path=path,
        language_id=doc.language_id,
        repo_name=repo_name,
        context=context,
    )


def sampling_params(settings, prompt: Prompt, cursor: Cursor) -> SamplingParams:
    """What the engine is asked for one completion (shared by the server and `exlsp complete`)."""
    return SamplingParams(
        max_new_tokens=settings.max_tokens,
        temperature=settings.temperature,
        time_budget_ms=settings.time_budget_ms,
        stop_token_ids=prompt.stop_token_ids,
        # Mid-line only the first line is kept; elsewhere a markdown fence ends the code (see
        # exlsp/postprocess.py): stop decoding there instead of cutting later.
        stop=("\n",) if cursor.mid_line else ("\n```",),
        priority=Priority.COMPLETION,
        truncate_prompt=True,  # a last resort: the budgets already fit the context
    )


async def complete(ls, uri: str, line: int, character: int) -> Suggestion | None:
    """The whole pipeline; None when there is nothing to show."""
    started = time.perf_counter()
    counters = ls.counters
    counters.num_requests += 1
    doc = ls.documents.get(uri)
    if doc is None:
        ls.log(f"exlsp: completion for a document that was never opened: {uri}", types.MessageType.Warning)
        return None
    if looks_binary(doc.text) or not ls.settings.is_enabled(doc.language_id):
        return None
    offset = doc.offset_at(line, character)
    pos_line, pos_char = doc.position_at(offset)
    before, after = doc.text[:offset], doc.text[offset:]
    cursor = cursor_context(doc.text, offset)
    previous = ls.inflight.pop(uri, None)
    if previous is not None:
        previous.cancel()  # a newer request for this document: stop the old one in the engine now

    cached = ls.cache.get(uri, before, after)
    if cached is not None:
        counters.num_cache_hits += 1
        counters.num_shown += 1
        counters.record_latency((time.perf_counter() - started) * 1000)
        return Suggestion(cached, pos_line, pos_char)

    if not await ls.debouncer.settle(uri, ls.settings.debounce_ms):
        counters.num_debounced += 1
        return None
    if not ls.bridge.ready or ls.prompt_builder is None:
        return None
    doc = ls.documents.get(uri)
    if doc is None or doc.text[:offset] != before or doc.text[offset:] != after:
        return None  # the document changed while we waited: the editor will ask again

    fim = fim_input(
        doc,
        offset,
        ls.settings,
        path=ls.relative_path(doc.uri),
        repo_name=ls.ignore.roots[0].name if ls.ignore.roots else "",
        context=ls.ring.select(exclude_uri=doc.uri),
    )
    max_context = getattr(getattr(ls.bridge.engine, "config", None), "max_position_embeddings", None)
    prompt = ls.prompt_builder.build(fim, budgets(ls.settings, max_context))
    ls.last_prompt = {
        "template": prompt.template,
        "numTokens": len(prompt.token_ids),
        "numContextTokens": prompt.num_context_tokens,
        "numPrefixTokens": prompt.num_prefix_tokens,
        "numSuffixTokens": prompt.num_suffix_tokens,
        "contextPaths": list(prompt.context_paths),
    }
    s = ls.settings
    params = sampling_params(s, prompt, cursor)
    counters.num_generations += 1
    handle_box: list = []

    def remember(handle) -> None:
        handle_box.append(handle)
        ls.inflight[uri] = handle

    try:
        async with asyncio.timeout(s.time_budget_ms / 1000 + DEADLINE_SLACK_S):
            result = await ls.bridge.generate(list(prompt.token_ids), params, on_submit=remember)
    except asyncio.CancelledError:
        counters.num_cancelled += 1
        raise
    except TimeoutError:
        counters.num_errors += 1
        ls.log("exlsp: the engine did not answer within the time budget", types.MessageType.Warning)
        return None
    except Exception as exc:
        counters.num_errors += 1
        log.exception("completion failed")
        ls.log(f"exlsp: completion failed: {type(exc).__name__}: {exc}", types.MessageType.Error)
        return None
    finally:
        if handle_box and ls.inflight.get(uri) is handle_box[0]:
            del ls.inflight[uri]

    counters.num_prompt_tokens += result.num_prompt_tokens
    counters.num_cached_prompt_tokens += result.num_cached_tokens
    if result.finish_reason == "cancelled":
        counters.num_cancelled += 1
        return None
    if result.finish_reason == "error":
        counters.num_errors += 1
        ls.log(f"exlsp: the engine failed on a completion: {result.error}", types.MessageType.Error)
        return None
    text = postprocess(result.text, cursor)
    counters.record_latency((time.perf_counter() - started) * 1000)
    if text is None:
        return None
    ls.cache.put(uri, before, after, text)
    counters.num_shown += 1
    return Suggestion(text, pos_line, pos_char)


def _accept_command(uri: str) -> types.Command:
    return types.Command(title="exlsp: accepted", command=ACCEPT_COMMAND, arguments=[{"uri": uri}])


def register(server) -> None:
    @server.feature(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions(work_done_progress=False)
    )
    async def inline_completion(ls, params: types.InlineCompletionParams):
        s = await complete(ls, params.text_document.uri, params.position.line, params.position.character)
        if s is None:
            return types.InlineCompletionList(items=[])
        at = types.Position(line=s.line, character=s.character)
        item = types.InlineCompletionItem(
            insert_text=s.text,
            range=types.Range(start=at, end=at),  # one line, as the spec requires
            command=_accept_command(params.text_document.uri),
        )
        return types.InlineCompletionList(items=[item])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
    async def completion(ls, params: types.CompletionParams):
        # Clients that show inline completions get them there; a second copy in the menu is noise.
        if ls.client_supports_inline:
            return types.CompletionList(is_incomplete=True, items=[])
        s = await complete(ls, params.text_document.uri, params.position.line, params.position.character)
        if s is None:
            return types.CompletionList(is_incomplete=True, items=[])
        at = types.Position(line=s.line, character=s.character)
        first = s.text.split("\n", 1)[0].strip() or s.text.strip().split("\n", 1)[0]
        item = types.CompletionItem(
            label=first,
            kind=types.CompletionItemKind.Text,
            detail="exlsp",
            documentation=types.MarkupContent(kind=types.MarkupKind.PlainText, value=s.text),
            text_edit=types.TextEdit(range=types.Range(start=at, end=at), new_text=s.text),
            filter_text=s.text,
            insert_text_format=types.InsertTextFormat.PlainText,
            sort_text="0",
            preselect=True,
            command=_accept_command(params.text_document.uri),
        )
        # Incomplete: the editor asks again on the next keystroke instead of filtering this item.
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.command(ACCEPT_COMMAND)
    def accept(ls, *args) -> None:
        ls.counters.num_accepted += 1
