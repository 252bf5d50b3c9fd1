"""The server's JSON-RPC protocol: pygls's, plus the client's work-done token for commands.

pygls hands a command handler only the command's arguments. A client that shows progress for
`workspace/executeCommand` (exlsp.chat) sends its own `workDoneToken` and expects the reports under
that token, so the token is put in a context variable just before pygls starts the handler; the
handler's task copies the context at creation and reads it there.
"""

from __future__ import annotations

from contextvars import ContextVar

from lsprotocol import types
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

command_work_done_token: ContextVar[types.ProgressToken | None] = ContextVar(
    "command_work_done_token", default=None
)


class ExlspProtocol(LanguageServerProtocol):
    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams):
        command_work_done_token.set(params.work_done_token)
        return (yield from super().lsp_workspace__execute_command(params))
