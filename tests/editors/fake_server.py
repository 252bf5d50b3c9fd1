"""A stand-in exlsp server for testing the editor clients in isolation (no model, no engine).

It speaks the same protocol as `exlsp serve` for what the clients use: textDocument/inlineCompletion
(after a configurable delay, cancellable with $/cancelRequest), workspace/executeCommand `exlsp.accept`
and `exlsp.chat` (streamed as $/progress reports to the client's workDoneToken), and `exlsp/status`.
Its suggestion is a pure function of the line before the cursor (`suggest`), so tests know it exactly.
Every message it receives is appended to a JSON-lines journal (FAKE_EXLSP_JOURNAL) for tests to read.

Run: python -m tests.editors.fake_server  (env FAKE_EXLSP_DELAY_MS, FAKE_EXLSP_JOURNAL)
"""

from __future__ import annotations

import json
import os
import sys
import threading

REQUEST_CANCELLED = -32800
METHOD_NOT_FOUND = -32601

ALTERNATIVE = "_alt = 2"  # the second item of every answer, for next/previous
CHAT_PIECES = ["Fib", "onacci ", "numbers ", "grow ", "fast."]


def suggest(line_before_cursor: str) -> str:
    """The completion for a cursor after `line_before_cursor`: a word, a space, another word, a
    newline and an indented second line, so accept-word, accept-line and multi-line ghost text all
    have something to take."""
    stripped = line_before_cursor.rstrip()
    if stripped.endswith(":"):
        return "\n    return fib(n - 1) + fib(n - 2)"
    return "_value = compute(x)\nprint(result)"


class FakeServer:
    def __init__(self, delay_ms: float, journal_path: str | None) -> None:
        self.delay_s = delay_ms / 1000.0
        self.journal_path = journal_path
        self.documents: dict[str, list[str]] = {}
        self.pending: dict[int | str, threading.Timer] = {}
        self.lock = threading.Lock()
        self.out = sys.stdout.buffer
        self.accepted = 0
        self.shown = 0

    # -- wire ---------------------------------------------------------------------------------
    def send(self, message: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        with self.lock:
            self.out.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.out.flush()

    def journal(self, message: dict) -> None:
        if self.journal_path:
            with open(self.journal_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(message) + "\n")

    def read_loop(self) -> None:
        stdin = sys.stdin.buffer
        while True:
            length = None
            while True:
                header = stdin.readline()
                if not header:
                    return
                if header in (b"\r\n", b"\n"):
                    break
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            message = json.loads(stdin.read(length))
            self.journal(message)
            if message.get("method") == "exit":
                return
            self.dispatch(message)

    # -- handlers -----------------------------------------------------------------------------
    def dispatch(self, message: dict) -> None:
        method, params, msg_id = message.get("method"), message.get("params") or {}, message.get("id")
        if method is None:
            return  # a response to something we never asked
        handler = getattr(self, "on_" + method.replace("/", "_").replace("$", "dollar"), None)
        if handler is None:
            if msg_id is not None:
                self.send({"id": msg_id, "error": {"code": METHOD_NOT_FOUND, "message": method}})
            return
        result = handler(params, msg_id)
        if msg_id is not None and result is not _DEFERRED:
            self.send({"id": msg_id, "result": result})

    def on_initialize(self, params, msg_id):
        return {
            "capabilities": {
                "textDocumentSync": {"openClose": True, "change": 1},
                "inlineCompletionProvider": {},
                "executeCommandProvider": {"commands": ["exlsp.accept", "exlsp.chat"]},
            },
            "serverInfo": {"name": "fake-exlsp", "version": "0"},
        }

    def on_initialized(self, params, msg_id):
        return None

    def on_shutdown(self, params, msg_id):
        return None

    def on_textDocument_didOpen(self, params, msg_id):
        doc = params["textDocument"]
        self.documents[doc["uri"]] = doc["text"].split("\n")

    def on_textDocument_didChange(self, params, msg_id):
        for change in params["contentChanges"]:
            if "range" not in change:
                self.documents[params["textDocument"]["uri"]] = change["text"].split("\n")

    def on_textDocument_didClose(self, params, msg_id):
        self.documents.pop(params["textDocument"]["uri"], None)

    def on_textDocument_inlineCompletion(self, params, msg_id):
        lines = self.documents.get(params["textDocument"]["uri"], [""])
        position = params["position"]
        line = lines[position["line"]] if position["line"] < len(lines) else ""
        before = line[: position["character"]]  # ASCII-only in these tests: UTF-16 == str index
        items = [
            {
                "insertText": text,
                "range": {"start": position, "end": position},
                "command": {"title": "accepted", "command": "exlsp.accept", "arguments": [{"id": msg_id}]},
            }
            for text in (suggest(before), ALTERNATIVE)
        ]

        def answer():
            with self.lock:
                still_pending = self.pending.pop(msg_id, None) is not None
            if still_pending:
                self.shown += 1
                self.send({"id": msg_id, "result": {"items": items}})

        timer = threading.Timer(self.delay_s, answer)
        with self.lock:
            self.pending[msg_id] = timer
        timer.start()
        return _DEFERRED

    def on_dollar_cancelRequest(self, params, msg_id):
        with self.lock:
            timer = self.pending.pop(params["id"], None)
        if timer is not None:
            timer.cancel()
            self.send({"id": params["id"], "error": {"code": REQUEST_CANCELLED, "message": "cancelled"}})

    def on_workspace_executeCommand(self, params, msg_id):
        if params["command"] == "exlsp.accept":
            self.accepted += 1
            return None
        if params["command"] == "exlsp.chat":
            token = params.get("workDoneToken")
            if token is not None:
                self.send(self._progress(token, {"kind": "begin", "title": "exlsp chat"}))
                for piece in CHAT_PIECES:
                    self.send(self._progress(token, {"kind": "report", "message": piece}))
                self.send(self._progress(token, {"kind": "end"}))
            return "".join(CHAT_PIECES)
        return None

    def on_exlsp_status(self, params, msg_id):
        # The shape of exlsp/server.py's ExlspServer.status().
        return {
            "state": "ready",
            "error": None,
            "model": "fake",
            "device": "cpu",
            "backend": {"quant_linear": "reference", "paged_attention": "reference"},
            "fim": "fill-in-the-middle: qwen template, plain layout",
            "completions": {
                "shown": self.shown,
                "accepted": self.accepted,
                "prefixCacheHitRate": 0.5,
                "latencyMs": {"p50": 12.0, "p95": 30.0, "count": self.shown},
            },
        }

    @staticmethod
    def _progress(token, value):
        return {"method": "$/progress", "params": {"token": token, "value": value}}


_DEFERRED = object()


def main() -> None:
    server = FakeServer(
        delay_ms=float(os.environ.get("FAKE_EXLSP_DELAY_MS", "0")),
        journal_path=os.environ.get("FAKE_EXLSP_JOURNAL"),
    )
    server.read_loop()


if __name__ == "__main__":
    main()
