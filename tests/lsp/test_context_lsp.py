"""Extra context reaches the prompt from open documents, never from ignored, secret or outside files."""

from __future__ import annotations

import pytest

from tests.lsp import harness

pytestmark = pytest.mark.asyncio


async def test_only_allowed_open_documents_become_context(code_model, tmp_path):
    workspace = tmp_path / "project"
    (workspace / "build").mkdir(parents=True)
    (workspace / ".gitignore").write_text("build/\n")
    outside = tmp_path / "elsewhere.py"
    client = await harness.start(
        harness.server_config(code_model, tmp_path),
        options={"debounceMs": 0, "maxTokens": 4},
        workspace=workspace,
    )
    try:
        opened = {
            "util.py": "def helper(x):\n    return x * 2\n",
            ".env": "API_TOKEN=do-not-send\n",
            "build/generated.py": "GENERATED = True\n",
            "keys/server.pem": "-----BEGIN PRIVATE KEY-----\n",
        }
        for rel, text in opened.items():
            harness.open_doc(client, (workspace / rel).as_uri(), text)
        harness.open_doc(client, outside.as_uri(), "OUTSIDE = 1\n")
        uri = (workspace / "main.py").as_uri()
        harness.open_doc(client, uri, "from util import helper\n\nprint(")
        await harness.inline(client, uri, 2, 6)
        prompt = (await harness.status(client))["lastPrompt"]
        assert prompt["template"] == "qwen/repo"
        assert prompt["contextPaths"] == ["util.py"]
        assert prompt["numContextTokens"] > 0
    finally:
        await harness.stop(client)
