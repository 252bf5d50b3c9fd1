"""The plugin's pure Lua modules (text arithmetic, option -> server settings mapping, status lines),
run inside a real Neovim so they see the same vim.* API as in use."""

from __future__ import annotations

import re

import pytest

from tests.editors.nvim_harness import PLUGIN_DIR


@pytest.mark.parametrize(
    ("suggestion", "word"),
    [
        ("_value = compute(x)", "_value"),
        (" = compute(x)", " ="),
        ("(x)\nprint", "("),
        ("\n    return 1", "\n    "),
        ("    return 1", "    return"),
        ("", ""),
    ],
)
def test_accept_word_takes_leading_space_then_one_word_or_one_run_of_punctuation(nvim, suggestion, word):
    assert nvim.lua("return require('exlsp.text').next_word(...)", suggestion) == word


@pytest.mark.parametrize(
    ("suggestion", "line"),
    [
        ("a = 1\nb = 2", "a = 1"),
        ("\n    return 1\nfoo", "\n    return 1"),
        ("tail", "tail"),
    ],
)
def test_accept_line_takes_the_rest_of_the_line_or_the_next_line(nvim, suggestion, line):
    assert nvim.lua("return require('exlsp.text').next_line(...)", suggestion) == line


def test_visible_suffix_skips_what_was_typed_since_the_item_started_and_rejects_a_stale_item(nvim):
    visible = "return require('exlsp.text').visible_suffix(...)"
    # Item range starts at column 4; the user has typed "re" since: "turn x" is left to show.
    assert nvim.lua(visible, "    re", 4, 6, "return x") == "turn x"
    # Typed text that disagrees with the item: nothing to show.
    assert nvim.lua(visible, "    ra", 4, 6, "return x") is None


def test_server_settings_carry_only_what_the_user_set_in_the_servers_camel_case(nvim):
    settings = nvim.lua(
        "local c = require('exlsp.config'); return c.server_settings(c.merge(...))",
        {
            "model": "qwen2.5-coder-0.5b",
            "max_tokens": 32,
            "time_budget_ms": 500,
            "enable": {"markdown": False},
        },
    )
    assert settings == {
        "model": "qwen2.5-coder-0.5b",
        "maxTokens": 32,
        "timeBudgetMs": 500,
        "enable": {"markdown": False},
    }
    # Nothing set: an empty JSON object (not an array), so the server keeps all its defaults.
    assert (
        nvim.lua(
            "return vim.json.encode(require('exlsp.config').server_settings(require('exlsp.config').merge()))"
        )
        == "{}"
    )


def test_enable_map_switches_filetypes_with_star_as_the_default(nvim):
    enabled = "local c = require('exlsp.config'); return c.enabled_for(c.merge({ enable = select(1, ...) }), select(2, ...))"
    assert nvim.lua(enabled, {"markdown": False}, "python") is True
    assert nvim.lua(enabled, {"markdown": False}, "markdown") is False
    assert nvim.lua(enabled, {"*": False, "python": True}, "lua") is False
    assert nvim.lua(enabled, {"*": False, "python": True}, "python") is True


def test_default_keys_leave_tab_alone(nvim):
    keymaps = nvim.lua("return require('exlsp.config').defaults.keymaps")
    assert "<Tab>" not in keymaps.values()
    assert set(keymaps) == {"accept", "accept_word", "accept_line", "next", "prev", "dismiss"}


def test_server_command_is_the_configured_one_else_exlsp_serve_else_python_module(nvim, tmp_path):
    resolve = "return require('exlsp.server').resolve_cmd(require('exlsp.config').merge(...))"
    assert nvim.lua(resolve, {"cmd": ["/opt/x/exlsp", "serve"]}) == ["/opt/x/exlsp", "serve"]
    # An activated virtualenv with exlsp installed wins over PATH; --model follows the command.
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "exlsp").write_text("#!/bin/sh\n")
    (venv_bin / "exlsp").chmod(0o755)
    nvim.lua("vim.env.VIRTUAL_ENV = ...; vim.env.PATH = '/nonexistent'", str(tmp_path / "venv"))
    assert nvim.lua(resolve, {"model": "tiny"}) == [str(venv_bin / "exlsp"), "serve", "--model", "tiny"]
    # No exlsp executable anywhere: the module through the environment's python (python3 here).
    (venv_bin / "exlsp").unlink()
    nvim.lua("vim.env.VIRTUAL_ENV = nil")
    assert nvim.lua(resolve, {}) == ["python3", "-m", "exlsp.cli", "serve"]


def test_status_lines_format_the_exlsp_status_answer(nvim):
    lines = nvim.lua(
        "return require('exlsp.status').format(...)",
        {
            "state": "ready",
            "model": "tiny",
            "device": "cpu",
            "backend": {"quant_linear": "reference", "paged_attention": "reference"},
            "fim": "fill-in-the-middle: qwen template, repo-level layout",
            "completions": {
                "prefixCacheHitRate": 0.75,
                "latencyMs": {"p50": 41.5, "p95": 90},
                "accepted": 3,
                "shown": 10,
            },
        },
    )
    assert lines == [
        "exlsp ready",
        "  model:      tiny",
        "  device:     cpu",
        "  backend:    reference",
        "  cache hits: 75%",
        "  latency:    p50 41.5 ms, p95 90 ms",
        "  accepted:   3 of 10 shown",
        "  fill-in-the-middle: qwen template, repo-level layout",
    ]


def test_backend_summary_names_one_backend_or_counts_a_mix(nvim):
    summary = "return require('exlsp.status').backend_summary(...)"
    assert nvim.lua(summary, {"a": "cuda", "b": "cuda"}) == "cuda"
    assert nvim.lua(summary, {"a": "cuda", "b": "reference", "c": "cuda"}) == "cuda x2, reference x1"


def test_help_file_documents_every_option_and_builds_its_tags(nvim, tmp_path):
    doc = (PLUGIN_DIR / "doc" / "exlsp.txt").read_text()
    options = nvim.lua("return vim.tbl_keys(require('exlsp.config').defaults)")
    # Options whose default is nil are absent from the table; the settings map names them.
    options += nvim.lua("return vim.tbl_keys(require('exlsp.config').setting_keys)")
    undocumented = sorted(o for o in set(options) if not re.search(rf"^  {o}\b", doc, re.MULTILINE))
    assert undocumented == []
    (tmp_path / "exlsp.txt").write_text(doc)
    nvim.command(f"helptags {tmp_path}")
    assert "*:ExlspChat*" in doc and ":ExlspChat" in (tmp_path / "tags").read_text()


def test_item_fit_converts_the_range_encoding_and_skips_a_closing_bracket_already_there(nvim):
    fit = "return require('exlsp.item').fit(...)"
    at = {"line": 0, "character": 0}

    def item(text, start, end):
        return {
            "insertText": text,
            "range": {"start": {**at, "character": start}, "end": {**at, "character": end}},
        }

    # "é" is 2 bytes, 1 UTF-16 unit: the item starting at UTF-16 column 6 starts at byte 7.
    line = "print(é"
    assert nvim.lua(fit, line, 0, len(line.encode()), item("é + 1", 6, 7), "utf-16") == {
        "suffix": " + 1",
        "end_col": len(line.encode()),
    }
    # Cursor before an auto-inserted ")": the item rewrites it; only "x" is new on screen.
    assert nvim.lua(fit, "f()", 0, 2, item("x)", 2, 3), "utf-16") == {"suffix": "x", "end_col": 2}
    # Typed text the item disagrees with: no fit.
    assert nvim.lua(fit, "foo", 0, 3, item("bar", 0, 3), "utf-16") is None


def test_statusline_shows_model_loading_progress_and_ignores_chat_progress(nvim):
    text = "return require('exlsp.status').loading_text(...)"
    title = "exlsp: loading model"
    assert nvim.lua(text, {"kind": "begin", "title": title}) == "loading"
    assert nvim.lua(text, {"kind": "report", "title": title, "message": "3s"}) == "loading 3s"
    assert nvim.lua(text, {"kind": "report", "title": title, "percentage": 40}) == "loading 40%"
    assert nvim.lua(text, {"kind": "end", "title": title}) == ""
    assert nvim.lua(text, {"kind": "report", "title": "exlsp chat", "message": "Fib"}) is None
