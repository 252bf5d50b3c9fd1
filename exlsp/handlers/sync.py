"""textDocument/didOpen, didChange, didClose: keep exlsp.documents and the context ring current."""

from __future__ import annotations

from lsprotocol import types

from exlsp.documents import looks_binary


def _range_tuple(r: types.Range) -> tuple[int, int, int, int]:
    return (r.start.line, r.start.character, r.end.line, r.end.character)


def register(server) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls, params: types.DidOpenTextDocumentParams) -> None:
        item = params.text_document
        doc = ls.documents.open(item.uri, item.language_id, item.version, item.text)
        ls.cache.forget(item.uri)
        if looks_binary(doc.text):
            ls.log(f"exlsp: {item.uri} looks binary; no completions for it", types.MessageType.Warning)
            return
        if ls.context_allowed(item.uri, len(doc.text)):
            ls.ring.touch(item.uri, ls.relative_path(item.uri), doc.text, 0)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        changes = [
            (c.text, _range_tuple(c.range) if isinstance(c, types.TextDocumentContentChangePartial) else None)
            for c in params.content_changes
        ]
        doc = ls.documents.change(uri, params.text_document.version, changes)
        if doc is None:
            ls.log(f"exlsp: change for a document that was never opened: {uri}", types.MessageType.Warning)
            return
        line = next((r[0] for _, r in reversed(changes) if r is not None), 0)
        if ls.context_allowed(uri, len(doc.text)) and not looks_binary(doc.text):
            ls.ring.touch(uri, ls.relative_path(uri), doc.text, line)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.documents.close(uri)
        ls.cache.forget(uri)
        handle = ls.inflight.pop(uri, None)
        if handle is not None:
            handle.cancel()
