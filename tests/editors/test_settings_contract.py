"""Both clients send the server exactly the settings it understands: the keys of
exlsp.settings.Settings in camelCase. A setting renamed on one side and not the other fails here
(the server would report it as unknown to every user)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from tests.editors.nvim_harness import REPO_ROOT

settings = pytest.importorskip("exlsp.settings")

CLIENT_ONLY_VSCODE = {"serverPath", "trace.server"}


def server_keys() -> set[str]:
    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(part.title() for part in rest)

    return {camel(f.name) for f in dataclasses.fields(settings.Settings)}


def test_vscode_contributes_every_server_setting_and_sends_only_those():
    package = json.loads((REPO_ROOT / "editors" / "vscode" / "package.json").read_text())
    contributed = {
        key.removeprefix("exlsp.") for key in package["contributes"]["configuration"]["properties"]
    }
    assert contributed - CLIENT_ONLY_VSCODE == server_keys()
    source = (REPO_ROOT / "editors" / "vscode" / "src" / "settings.ts").read_text()
    block = source.split("SERVER_SETTING_KEYS = [", 1)[1].split("]", 1)[0]
    assert set(re.findall(r'"(\w+)"', block)) == server_keys()


def test_neovim_maps_its_options_onto_server_settings_only(nvim):
    keys = set(nvim.lua("return vim.tbl_values(require('exlsp.config').setting_keys)")) | {"enable"}
    assert keys == server_keys()
