"""The Neovim plugin's inline-completion client, chat and status against the stand-in server
(tests/editors/fake_server.py), whose answers are known exactly. What these cover that the real-server
tests cannot: exact ghost-text layout, partial accepts, the wire messages (from the server's journal)."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.editors.fake_server import ALTERNATIVE, CHAT_PIECES
from tests.editors.nvim_harness import REPO_ROOT, open_and_attach, setup_exlsp

FAKE = [sys.executable, "-m", "tests.editors.fake_server"]
STATS = "require('exlsp.inline').stats"


def start(nvim, project, delay_ms=0, **options):
    journal = project / "journal.jsonl"
    setup_exlsp(
        nvim,
        FAKE,
        env={
            "PYTHONPATH": str(REPO_ROOT),
            "FAKE_EXLSP_DELAY_MS": str(delay_ms),
            "FAKE_EXLSP_JOURNAL": str(journal),
        },
        **options,
    )
    open_and_attach(nvim, project / "fib.py")
    return journal


def received(journal, method):
    if not journal.exists():
        return []
    messages = [json.loads(line) for line in journal.read_text().splitlines()]
    return [m for m in messages if m.get("method") == method]


def wait_ghost(nvim):
    return nvim.wait_for(
        "require('exlsp.ghost').shown(0) ~= '' and require('exlsp.ghost').shown(0)", 10, "ghost text"
    )


def test_ghost_text_is_an_inline_extmark_plus_virtual_lines_at_the_cursor(nvim, project):
    start(nvim, project)
    nvim.input("Goy")
    assert wait_ghost(nvim) == "_value = compute(x)\nprint(result)"
    mark = nvim.lua(
        "local m = vim.api.nvim_buf_get_extmarks(0, require('exlsp.ghost').namespace, 0, -1, { details = true })[1]"
        " return { m[2], m[3], m[4].virt_text_pos, m[4].virt_text, m[4].virt_lines }"
    )
    row, col, position, virt_text, virt_lines = mark
    assert (row, col, position) == (2, 5, "inline")  # after "    y" on the third line
    assert virt_text == [["_value = compute(x)", "ExlspGhostText"]]
    assert virt_lines == [[["print(result)", "ExlspGhostText"]]]
    assert nvim.lines() == ["def fib(n):", "    x = 1", "    y"]  # ghost text is not in the buffer


def test_accept_inserts_the_whole_suggestion_and_runs_its_command(nvim, project):
    journal = start(nvim, project)
    nvim.input("Goy")
    wait_ghost(nvim)
    nvim.input("<M-l>")
    nvim.wait_for(f"{STATS}.accepted == 1")
    assert nvim.lines() == ["def fib(n):", "    x = 1", "    y_value = compute(x)", "print(result)"]
    assert nvim.lua("return vim.api.nvim_win_get_cursor(0)") == [4, len("print(result)")]
    assert nvim.mode() == "i"
    nvim.wait_for("true")  # let the command reach the server
    deadline = time.monotonic() + 5
    while not received(journal, "workspace/executeCommand") and time.monotonic() < deadline:
        time.sleep(0.02)
    (command,) = received(journal, "workspace/executeCommand")
    assert command["params"]["command"] == "exlsp.accept"


def test_accept_word_then_accept_line_take_pieces_and_keep_the_rest_on_screen(nvim, project):
    start(nvim, project)
    nvim.input("Goy")
    wait_ghost(nvim)
    nvim.input("<M-Right>")
    nvim.wait_for("vim.api.nvim_get_current_line() == '    y_value'")
    assert nvim.ghost_text() == " = compute(x)\nprint(result)"
    nvim.input("<M-C-Right>")
    nvim.wait_for("vim.api.nvim_get_current_line() == '    y_value = compute(x)'")
    assert nvim.ghost_text() == "\nprint(result)"
    nvim.input("<M-C-Right>")
    nvim.wait_for("vim.api.nvim_buf_line_count(0) == 4")
    assert nvim.lines()[2:] == ["    y_value = compute(x)", "print(result)"]
    assert nvim.ghost_text() == ""
    # One item, one acceptance, however many pieces it was taken in.
    assert nvim.lua(f"return {STATS}.accepted") == 1


def test_next_and_previous_cycle_through_the_items_of_the_answer(nvim, project):
    start(nvim, project)
    nvim.input("Goy")
    wait_ghost(nvim)
    nvim.input("<M-]>")
    nvim.wait_for(f"require('exlsp.ghost').shown(0) == '{ALTERNATIVE}'")
    nvim.input("<M-]>")  # wraps around
    nvim.wait_for("require('exlsp.ghost').shown(0) == '_value = compute(x)\\nprint(result)'")
    nvim.input("<M-[>")
    nvim.wait_for(f"require('exlsp.ghost').shown(0) == '{ALTERNATIVE}'")
    nvim.input("<M-l>")
    nvim.wait_for("vim.api.nvim_get_current_line() == '    y_alt = 2'")


def test_typing_the_suggested_text_keeps_the_rest_without_a_new_request(nvim, project):
    start(nvim, project)
    nvim.input("Goy")
    wait_ghost(nvim)
    requests = nvim.lua(f"return {STATS}.requests")
    nvim.input("_va")
    nvim.wait_for("require('exlsp.ghost').shown(0) == 'lue = compute(x)\\nprint(result)'")
    time.sleep(0.2)  # past the debounce: still no new request
    assert nvim.lua(f"return {STATS}.requests") == requests


def test_typing_on_cancels_the_request_in_flight_and_shows_only_the_newest_answer(nvim, project):
    journal = start(nvim, project, delay_ms=1000)
    nvim.input("Goa")
    nvim.wait_for(f"{STATS}.requests == 1")
    nvim.input("b")
    assert wait_ghost(nvim) == "_value = compute(x)\nprint(result)"
    stats = nvim.lua(f"return {STATS}")
    assert (stats["requests"], stats["cancelled"], stats["shown"]) == (2, 1, 1)
    first, second = received(journal, "textDocument/inlineCompletion")
    assert [c["params"]["id"] for c in received(journal, "$/cancelRequest")] == [first["id"]]
    assert second["params"]["position"] == {"line": 2, "character": len("    ab")}


def test_leaving_insert_mode_cancels_and_clears(nvim, project):
    journal = start(nvim, project, delay_ms=1000)
    nvim.input("Goa")
    nvim.wait_for(f"{STATS}.requests == 1")
    nvim.input("<Esc>")
    nvim.wait_for(f"{STATS}.cancelled == 1")
    time.sleep(0.5)
    assert nvim.ghost_text() == ""
    assert len(received(journal, "$/cancelRequest")) == 1


def test_dismiss_clears_and_popup_menu_hides_the_ghost_text(nvim, project):
    start(nvim, project)
    nvim.input("Goy")
    wait_ghost(nvim)
    nvim.input("<C-]>")
    nvim.wait_for("require('exlsp.ghost').shown(0) == ''")
    # A new suggestion, then the keyword completion menu over it: the ghost text steps aside.
    nvim.lua("vim.o.completeopt = 'menuone,noselect'")
    nvim.input(" fi")
    wait_ghost(nvim)
    nvim.input("<C-n>")
    nvim.wait_for("vim.fn.pumvisible() == 1 and require('exlsp.ghost').shown(0) == ''")


def test_disabled_filetype_sends_no_request(nvim, project):
    start(nvim, project, enable={"python": False})
    nvim.input("Goy")
    time.sleep(0.4)
    assert nvim.lua(f"return {STATS}.requests") == 0
    assert nvim.ghost_text() == ""


def test_toggle_turns_suggestions_off_and_on(nvim, project):
    start(nvim, project)
    nvim.command("ExlspToggle")
    nvim.input("Goy")
    time.sleep(0.4)
    assert nvim.lua(f"return {STATS}.requests") == 0
    nvim.command("ExlspToggle")
    nvim.input("y")
    wait_ghost(nvim)


def test_chat_streams_progress_reports_into_a_scratch_buffer_then_the_whole_answer(nvim, project):
    journal = start(nvim, project)
    nvim.command("2ExlspChat what does x do")
    nvim.wait_for("require('exlsp.chat').stats.finished == 1")
    assert nvim.lua("return require('exlsp.chat').stats.reports") == len(CHAT_PIECES)
    assert nvim.lua("return vim.bo.buftype") == "nofile"
    assert nvim.lines() == ["## You", "", "what does x do", "", "## exlsp", "".join(CHAT_PIECES), ""]
    (call,) = received(journal, "workspace/executeCommand")
    (argument,) = call["params"]["arguments"]
    assert argument["message"] == "what does x do"
    assert argument["uri"].endswith("/fib.py")
    assert argument["range"] == {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 9}}
    assert call["params"]["workDoneToken"].startswith("exlsp-chat-")


def test_status_command_shows_the_servers_status(nvim, project):
    start(nvim, project)
    nvim.command("ExlspStatus")
    nvim.wait_for("vim.fn.execute('messages'):find('exlsp ready', 1, true) ~= nil")
    assert "accepted:   0 of 0 shown" in nvim.session.command_output("messages")


def test_checkhealth_reports_server_model_and_fim(nvim, project):
    start(nvim, project)
    nvim.command("checkhealth exlsp")
    report = "\n".join(nvim.lines())
    assert "server command:" in report
    assert "model loaded: fake on cpu" in report
    assert "fill-in-the-middle: qwen template, plain layout" in report


@pytest.mark.parametrize("key", ["<M-l>", "<M-Right>"])
def test_a_key_without_a_suggestion_does_what_it_does_unmapped(nvim, project, key):
    start(nvim, project, auto_trigger=False)
    nvim.input("Goab" + key)
    time.sleep(0.2)
    assert nvim.lua(f"return {STATS}.requests") == 0
    assert nvim.mode() == "i"
