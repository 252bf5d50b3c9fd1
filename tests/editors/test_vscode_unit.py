"""The VS Code extension's own checks, run from pytest when Node and its packages are installed
((cd editors/vscode && npm ci), as .ci/run does): tsc type-check and the mocha unit tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.editors.nvim_harness import REPO_ROOT

VSCODE_DIR = REPO_ROOT / "editors" / "vscode"


def npm_script(name: str) -> subprocess.CompletedProcess:
    if shutil.which("npm") is None:
        pytest.skip("no npm")
    if not (VSCODE_DIR / "node_modules" / ".bin" / "tsc").exists():
        pytest.skip("VS Code extension packages not installed: (cd editors/vscode && npm ci)")
    return subprocess.run(
        ["npm", "run", "--silent", name], cwd=VSCODE_DIR, capture_output=True, text=True, timeout=300
    )


def test_extension_type_checks():
    result = npm_script("typecheck")
    assert result.returncode == 0, result.stdout + result.stderr


def test_extension_mocha_unit_tests_pass():
    result = npm_script("test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passing" in result.stdout and " failing" not in result.stdout
