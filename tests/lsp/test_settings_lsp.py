"""Settings from every layer, as editors send them; invalid values reported once, never fatal."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types

from tests.lsp import harness

pytestmark = pytest.mark.asyncio


async def test_settings_layers_validation_and_hot_reload(code_model, tmp_path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "config.toml").write_text("maxTokens = 5\ndebounceMs = 0\n")
    client = await harness.start(harness.server_config(code_model, tmp_path), options={"prefixTokens": 300})
    try:
        settings = (await harness.status(client))["settings"]
        assert (settings["max_tokens"], settings["prefix_tokens"]) == (5, 300)  # file + initializationOptions

        # The TOML file is watched: an edit is picked up without a restart.
        (config_dir / "config.toml").write_text("maxTokens = 9\ndebounceMs = 0\n")
        await harness.wait_for(client, lambda s: s["settings"]["max_tokens"] == 9, timeout_s=10)

        # didChangeConfiguration with the settings inside (push) wins over the file.
        await harness.set_settings(client, maxTokens=11)

        # An invalid value is shown once, replaced by its default, and the server goes on.
        for _ in range(2):
            client.workspace_did_change_configuration(
                types.DidChangeConfigurationParams(
                    settings={"exlsp": {"maxTokens": "lots", "timeBudgetMs": 700}}
                )
            )
        current = await harness.wait_for(client, lambda s: s["settings"]["time_budget_ms"] == 700)
        assert current["settings"]["max_tokens"] == 64  # the default replaces the bad value
        await asyncio.sleep(0.1)
        shown = [m.message for m in client.messages if "maxTokens" in m.message]
        assert shown == [
            "exlsp settings: setting 'maxTokens': expected a number, got 'lots'; using the default"
        ]

        # The pull model: the notification carries nothing and the server asks workspace/configuration.
        client.set_configuration({"maxTokens": 7, "enable": {"markdown": False}}, section="exlsp")
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        current = await harness.wait_for(client, lambda s: s["settings"]["max_tokens"] == 7)
        assert current["settings"]["enable"] == {"*": True, "markdown": False}

        # A disabled language gets no completions and costs no generation.
        uri = (tmp_path / "notes.md").as_uri()
        harness.open_doc(client, uri, "# Notes\n\nSome ", language_id="markdown")
        before = (await harness.status(client))["completions"]["generations"]
        assert await harness.inline(client, uri, 2, 5) == []
        assert (await harness.status(client))["completions"]["generations"] == before
    finally:
        await harness.stop(client)


async def test_a_broken_settings_file_is_reported_and_ignored(code_model, tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.toml").write_text("maxTokens = = 3\n")
    client = await harness.start(harness.server_config(code_model, tmp_path))
    try:
        assert (await harness.status(client))["settings"]["max_tokens"] == 64
        await asyncio.sleep(0.1)
        assert any("config.toml is not valid TOML" in m.message for m in client.messages)
    finally:
        await harness.stop(client)


async def test_a_new_model_in_the_settings_replaces_the_engine(code_model, plain_model, tmp_path):
    client = await harness.start(harness.server_config(None, tmp_path), options={"model": str(code_model)})
    try:
        current = await harness.status(client)
        assert (current["state"], current["model"]) == ("ready", str(code_model))
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"exlsp": {"model": str(plain_model)}})
        )
        current = await harness.wait_for(
            client, lambda s: s["state"] == "ready" and s["model"] == str(plain_model), timeout_s=60
        )
        assert "no fill-in-the-middle tokens" in current["fim"]
    finally:
        await harness.stop(client)
