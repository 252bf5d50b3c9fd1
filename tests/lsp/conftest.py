from __future__ import annotations

import pytest

from tests.lsp.harness import make_code_model


@pytest.fixture(scope="session")
def code_model(tmp_path_factory):
    return make_code_model(tmp_path_factory.mktemp("models") / "tiny-code")


@pytest.fixture(scope="session")
def plain_model(tmp_path_factory):
    """The same tiny model with a tokenizer that has no FIM tokens."""
    return make_code_model(tmp_path_factory.mktemp("models") / "tiny-plain", fim=False)
