"""Code actions (offered cheaply, computed in codeAction/resolve) and chat streamed as progress.

The model is scripted (tests/editors/scripted_model.py): whatever the chat prompt, its greedy answer
is ANSWER, so each result can be checked exactly.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from lsprotocol import types

from tests.lsp import harness

scripted_model = pytest.importorskip("tests.editors.scripted_model")

pytestmark = pytest.mark.asyncio(loop_scope="module")
ANSWER = "def add(a, b): return a+b"  # every token once: a requirement of the scripted model
SOURCE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scripted")
    scripted_model.make_tokenizer_json(folder)
    return scripted_model.make_scripted_checkpoint(
        folder, {scripted_model.chat_prompt_last_token(folder): ANSWER}
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(chat_model, workspace):
    c = await harness.start(
        harness.server_config(chat_model, workspace), options={"chatMaxTokens": 32}, workspace=workspace
    )
    uri = (workspace / "calc.py").as_uri()
    harness.open_doc(c, uri, SOURCE)
    yield c
    await harness.stop(c)


def selection(l1: int, c1: int, l2: int, c2: int) -> types.Range:
    return types.Range(start=types.Position(line=l1, character=c1), end=types.Position(line=l2, character=c2))


async def actions(client, uri, r, diagnostics=()):
    return await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=r,
            context=types.CodeActionContext(diagnostics=list(diagnostics)),
        )
    )


async def test_actions_are_offered_without_running_the_model(client, workspace):
    uri = (workspace / "calc.py").as_uri()
    before = await harness.status(client)
    offered = await actions(client, uri, selection(0, 0, 1, 16))
    titles = [a.title for a in offered]
    assert titles == [
        "exlsp: Explain this code",
        "exlsp: Add docstring",
        "exlsp: Write tests",
        "exlsp: Refactor selection",
    ]
    assert all(a.edit is None and a.command is None for a in offered)  # nothing computed yet
    after = await harness.status(client)
    assert after["engine"]["prompt_tokens"] == before["engine"]["prompt_tokens"]
    # A diagnostic brings a fix; no selection, no selection actions.
    diagnostic = types.Diagnostic(range=selection(5, 11, 5, 16), message="undefined name 'b'", source="lint")
    (fix,) = await actions(client, uri, selection(5, 11, 5, 11), [diagnostic])
    assert fix.title == "exlsp: Fix “undefined name 'b'”" and fix.kind == types.CodeActionKind.QuickFix


async def test_resolving_a_code_action_returns_a_workspace_edit_of_whole_lines(client, workspace):
    uri = (workspace / "calc.py").as_uri()
    offered = await actions(client, uri, selection(0, 4, 1, 5))
    docstring = next(a for a in offered if a.title == "exlsp: Add docstring")
    resolved = await client.code_action_resolve_async(docstring)
    (edit,) = resolved.edit.changes[uri]
    assert edit.range == selection(0, 0, 2, 0)  # the selection widened to whole lines
    assert edit.new_text == ANSWER + "\n"


async def test_prose_results_are_shown_as_a_document(client, workspace):
    uri = (workspace / "calc.py").as_uri()
    offered = await actions(client, uri, selection(0, 0, 1, 16))
    explain = next(a for a in offered if a.title == "exlsp: Explain this code")
    resolved = await client.code_action_resolve_async(explain)
    assert resolved.edit is None and resolved.command.command == "exlsp.showAnswer"
    shown = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=resolved.command.command, arguments=resolved.command.arguments)
    )
    assert shown is True
    (document,) = client.shown_documents
    assert document.uri == resolved.command.arguments[0] and document.uri.endswith(".md")
    from pygls.uris import to_fs_path

    assert open(to_fs_path(document.uri)).read() == ANSWER


async def test_write_tests_creates_a_new_file_through_a_workspace_edit(client, workspace):
    uri = (workspace / "calc.py").as_uri()
    offered = await actions(client, uri, selection(0, 0, 5, 0))
    tests_action = next(a for a in offered if a.title == "exlsp: Write tests")
    resolved = await client.code_action_resolve_async(tests_action)
    create, insert = resolved.edit.document_changes
    assert create.kind == "create" and create.uri == (workspace / "test_calc.py").as_uri()
    assert insert.text_document.uri == create.uri and insert.edits[0].new_text == ANSWER + "\n"


async def test_chat_streams_progress_and_returns_the_whole_answer(client, workspace):
    uri = (workspace / "calc.py").as_uri()
    known = set(client.progress_reports)
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(
            command="exlsp.chat",
            arguments=[
                {
                    "message": "What does add do?",
                    "uri": uri,
                    "range": {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 0}},
                }
            ],
        )
    )
    await asyncio.sleep(0.1)
    (token,) = set(client.progress_reports) - known
    reports = client.progress_reports[token]
    assert reports[0].kind == "begin" and reports[-1].kind == "end"
    streamed = "".join(r.message for r in reports if r.kind == "report")
    assert len([r for r in reports if r.kind == "report"]) >= 2  # streamed, not one lump
    assert result["text"] == streamed == ANSWER


# pytest-lsp's client warns about tokens it did not see created; an editor's own token is the point here.
@pytest.mark.filterwarnings("ignore:Unknown progress token")
async def test_chat_reports_under_the_clients_own_work_done_token(client):
    known = set(client.progress_reports)
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(
            command="exlsp.chat", arguments=[{"message": "What does add do?"}], work_done_token="editor-7"
        )
    )
    await asyncio.sleep(0.1)
    assert set(client.progress_reports) - known == {"editor-7"}  # no token of the server's own
    reports = client.progress_reports["editor-7"]
    assert reports[0].kind == "begin" and reports[-1].kind == "end"
    assert "".join(r.message for r in reports if r.kind == "report") == result["text"] == ANSWER


async def test_chat_with_bad_arguments_is_an_error_response(client):
    with pytest.raises(Exception, match="exlsp.chat needs a non-empty 'message'"):
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="exlsp.chat", arguments=[{"message": ""}])
        )
    assert (await harness.status(client))["state"] == "ready"
