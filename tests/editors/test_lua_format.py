"""The Neovim plugin's Lua is stylua-formatted (editors/nvim/.stylua.toml)."""

from __future__ import annotations

import subprocess

import pytest

from tests.editors.nvim_harness import PLUGIN_DIR


def test_lua_sources_are_stylua_formatted():
    stylua = PLUGIN_DIR / "node_modules" / ".bin" / "stylua"
    if not stylua.exists():
        pytest.skip("stylua not installed: (cd editors/nvim && npm ci)")
    result = subprocess.run(
        [str(stylua), "--check", "lua", "plugin"], cwd=PLUGIN_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
