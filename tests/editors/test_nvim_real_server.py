"""The Neovim plugin end to end: a real headless Neovim 0.11 runs the real `exlsp serve` on a tiny
model built here (tests/editors/scripted_model.py), whose greedy output is known: after the FIM
prompt it writes "urn value", after a chat prompt "Fibonacci numbers grow fast.". So typing "ret" on
a new line must show the ghost text "urn value" that the whole server pipeline produced, and chat and
the explain code action must show the chat answer."""

from __future__ import annotations

import sys

import pytest

from tests.editors.nvim_harness import REPO_ROOT, open_and_attach, setup_exlsp

pytest.importorskip("exlsp.server")
pytest.importorskip("engine")
scripted_model = pytest.importorskip("tests.editors.scripted_model")

COMPLETION = "urn value"
CHAT_ANSWER = "Fibonacci numbers grow fast."
STATS = "require('exlsp.inline').stats"
STATUS = (
    "(function() local c = vim.lsp.get_clients({ name = 'exlsp' })[1]"
    " local r = c and c:request_sync('exlsp/status', vim.empty_dict(), 5000, 0)"
    " return r and r.result end)()"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scripted-model")
    scripted_model.make_tokenizer_json(folder)
    chat_last = scripted_model.chat_prompt_last_token(folder)
    return scripted_model.make_scripted_checkpoint(
        folder, {scripted_model.FIM_MIDDLE: COMPLETION, chat_last: CHAT_ANSWER}
    )


@pytest.fixture
def serve(nvim, project, checkpoint):
    """Starts `python -m exlsp.cli serve --model <tiny>` from the plugin and waits for the model."""

    def start(**options):
        cmd = [sys.executable, "-m", "exlsp.cli", "serve", "--model", str(checkpoint), "--device", "cpu"]
        env = {
            "PYTHONPATH": str(REPO_ROOT),
            "EXLSP_CONFIG_DIR": str(project / ".exlsp-config"),
            "EXLSP_CACHE_DIR": str(project / ".exlsp-cache"),
        }
        setup_exlsp(nvim, cmd, env=env, **options)
        open_and_attach(nvim, project / "fib.py")
        loaded = nvim.wait_for(
            f"(function() local s = {STATUS} or {{}} return (s.state == 'ready' or s.state == 'failed') and s end)()",
            120,
            "the model to load",
        )
        assert loaded["state"] == "ready", loaded.get("error")

    return start


def status(nvim) -> dict:
    return nvim.lua(f"return {STATUS}")


def wait_ghost(nvim) -> str:
    return nvim.wait_for(
        "require('exlsp.ghost').shown(0) ~= '' and require('exlsp.ghost').shown(0)", 30, "ghost text"
    )


def test_typing_in_insert_mode_shows_the_servers_completion_as_an_extmark(nvim, serve):
    serve()
    nvim.input("Goret")
    assert wait_ghost(nvim) == COMPLETION
    row, col, details = nvim.lua(
        "local m = vim.api.nvim_buf_get_extmarks(0, require('exlsp.ghost').namespace, 0, -1, { details = true })[1]"
        " return { m[2], m[3], m[4] }"
    )
    assert (row, col, details["virt_text_pos"]) == (2, len("    ret"), "inline")
    assert nvim.lines() == ["def fib(n):", "    x = 1", "    ret"]


def test_accept_inserts_the_completion_and_the_server_counts_it(nvim, serve):
    serve()
    nvim.input("Goret")
    wait_ghost(nvim)
    nvim.input("<M-l>")
    nvim.wait_for("vim.api.nvim_get_current_line() == '    return value'")
    assert nvim.ghost_text() == ""
    nvim.wait_for(f"{STATUS}.completions.accepted == 1", 10, "the server to count the acceptance")


def test_accept_word_inserts_one_word_and_keeps_the_rest_as_ghost_text(nvim, serve):
    serve()
    nvim.input("Goret")
    wait_ghost(nvim)
    nvim.input("<M-Right>")
    nvim.wait_for("vim.api.nvim_get_current_line() == '    return'")
    assert nvim.ghost_text() == " value"


def test_typing_on_cancels_the_previous_request_before_the_model_runs_it(nvim, serve):
    # A long server debounce keeps the first request waiting while the next keys arrive.
    serve(server_debounce_ms=1000)
    nvim.input("Gor")
    nvim.wait_for(f"{STATS}.requests == 1")
    nvim.input("et")
    assert wait_ghost(nvim) == COMPLETION
    stats = nvim.lua(f"return {STATS}")
    assert (stats["requests"], stats["cancelled"], stats["shown"]) == (2, 1, 1)
    completions = status(nvim)["completions"]
    # Both requests reached the server; only the newer one reached the engine.
    assert (completions["requests"], completions["generations"]) == (2, 1)


def test_chat_streams_the_answer_into_a_scratch_buffer(nvim, serve):
    serve()
    nvim.command("ExlspChat what does fib do")
    nvim.wait_for("require('exlsp.chat').stats.finished == 1", 60, "the chat answer")
    assert nvim.lua("return require('exlsp.chat').stats.reports") > 1  # streamed in pieces
    assert nvim.lines() == ["## You", "", "what does fib do", "", "## exlsp", CHAT_ANSWER, ""]


def test_checkhealth_sees_the_loaded_model_and_its_fim_tokens(nvim, serve):
    serve()
    nvim.command("checkhealth exlsp")
    report = "\n".join(nvim.lines())
    assert "OK model loaded:" in report
    assert "OK fill-in-the-middle: qwen template" in report


def test_explain_code_action_resolves_lazily_and_shows_the_answer_document(nvim, serve):
    serve()
    # Select the first line and apply the server's "Explain" action, as `gra` would.
    nvim.input("ggV")
    nvim.wait_for("vim.fn.mode() == 'V'")
    nvim.lua(
        "vim.lsp.buf.code_action({ apply = true, filter = function(a) return a.title:find('Explain') ~= nil end })"
    )
    nvim.wait_for(
        f"vim.api.nvim_buf_get_name(0):find('explain%-') ~= nil and vim.api.nvim_get_current_line() == '{CHAT_ANSWER}'",
        60,
        "the explanation document",
    )
