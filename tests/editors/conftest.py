"""Fixtures for the editor-client tests: a fresh headless Neovim per test, and a project folder."""

from __future__ import annotations

import pytest

from tests.editors.nvim_harness import Nvim, require_nvim


@pytest.fixture
def project(tmp_path):
    """A folder with a .git marker (the plugin's root marker) and a Python file to edit."""
    (tmp_path / ".git").mkdir()
    path = tmp_path / "fib.py"
    path.write_text("def fib(n):\n    x = 1\n", encoding="utf-8")
    return tmp_path


@pytest.fixture
def nvim(project):
    instance = Nvim(require_nvim(), project)
    yield instance
    instance.close()
