"""The server's JSON-RPC protocol: pygls's, plus two things commands need.

- The client's work-done token. pygls hands a command handler only the command's arguments. A
  client that shows progress for `workspace/executeCommand` (exlsp.chat) sends its own
  `workDoneToken` and expects the reports under that token, so the token is put in a context
  variable just before pygls starts the handler; the handler's task copies the context at creation
  and reads it there.
- `$/cancelRequest` for a command. pygls runs a command's coroutine as a second, inner request, so
  cancelling the client's request id only cancels the outer future and the command (a chat
  decoding hundreds of tokens) runs on. The command's task is recorded under the client's request
  id and cancelled with it; the cancellation reaches the engine through exlsp/bridge.py.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from lsprotocol import types
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

command_work_done_token: ContextVar[types.ProgressToken | None] = ContextVar(
    "command_work_done_token", default=None
)


class ExlspProtocol(LanguageServerProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._command_tasks: dict[Any, asyncio.Task] = {}

    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams):
        command_work_done_token.set(params.work_done_token)
        inner = super().lsp_workspace__execute_command(params)
        handler, args, kwargs = inner.send(None)  # the command's handler, its arguments converted
        if asyncio.iscoroutinefunction(handler) and self.msg_id is not None:
            handler = self._cancellable(handler, self.msg_id)
        result = yield handler, args, kwargs
        try:
            inner.send(result)
        except StopIteration as stop:
            return stop.value
        raise RuntimeError("pygls' executeCommand handler yielded twice")

    def _cancellable(self, handler: Callable, msg_id: Any) -> Callable:
        @functools.wraps(handler)
        async def run(*args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            if task is not None:
                self._command_tasks[msg_id] = task
            try:
                return await handler(*args, **kwargs)
            finally:
                self._command_tasks.pop(msg_id, None)

        return run

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        super()._handle_cancel_notification(msg_id)
        task = self._command_tasks.pop(msg_id, None)
        if task is not None:
            task.cancel()
