"""The VS Code real-editor test (editors/vscode/test/e2e/run.sh): code-server + headless Chromium
with the packaged extension, against the real `exlsp serve`. It installs code-server (a native
build of several minutes), so it runs only when asked: EXLSP_VSCODE_E2E=1 python -m pytest ..."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.editors.nvim_harness import REPO_ROOT

RUN = REPO_ROOT / "editors" / "vscode" / "test" / "e2e" / "run.sh"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_vscode_shows_and_accepts_the_servers_ghost_text():
    if os.environ.get("EXLSP_VSCODE_E2E") != "1":
        pytest.skip("set EXLSP_VSCODE_E2E=1 to run the code-server test (installs code-server)")
    result = subprocess.run(
        ["bash", str(RUN)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=3500,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("E2E_RESULT ")]
    assert lines, result.stdout[-4000:] + result.stderr[-4000:]
    outcome = json.loads(lines[-1].removeprefix("E2E_RESULT "))
    assert outcome["ok"], outcome
    assert "urn value" in outcome["ghostText"]
    assert outcome["inserted"] == "return value"
    assert outcome["chat"] == "Fibonacci numbers grow fast."
    assert outcome["explain"] == "Fibonacci numbers grow fast."
