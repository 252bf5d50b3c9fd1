"""The model store (exlsp/store.py): folders, manifests, name resolution, atomic adds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exlsp.store import (
    DEFAULT_MODEL_NAME,
    MANIFEST_NAME,
    Manifest,
    Store,
    StoreError,
    data_dir,
    resolve_model,
    sha256_file,
)


def add_model(store: Store, name: str, **kw) -> Path:
    manifest = Manifest(name=name, source=f"gguf:{name}.gguf", format="gptq", bits=4, group_size=128, **kw)
    with store.add(manifest) as folder:
        (folder / "config.json").write_text("{}")
    return store.path(name)


def test_data_dir_is_the_environment_override_or_the_user_data_dir(tmp_path) -> None:
    assert data_dir({"EXLSP_DATA_DIR": str(tmp_path)}) == tmp_path
    default = data_dir({})
    assert default.name == "exlsp" and default.is_absolute()
    assert data_dir({"EXLSP_DATA_DIR": ""}) == default  # empty means unset


def test_an_added_model_has_its_folder_and_a_manifest_with_a_creation_time(tmp_path) -> None:
    store = Store(tmp_path)
    folder = add_model(store, "coder-4bit", source_sha256={"coder.gguf": "ab" * 32})
    assert folder == tmp_path / "models" / "coder-4bit"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", MANIFEST_NAME]
    raw = json.loads((folder / MANIFEST_NAME).read_text())
    assert raw["source"] == "gguf:coder-4bit.gguf" and raw["format"] == "gptq"
    assert raw["bits"] == 4 and raw["group_size"] == 128
    assert raw["source_sha256"] == {"coder.gguf": "ab" * 32}
    assert raw["created"].endswith("+00:00")
    assert store.manifest("coder-4bit").created == raw["created"]


def test_list_shows_complete_models_sorted_and_skips_half_written_ones(tmp_path) -> None:
    store = Store(tmp_path)
    add_model(store, "b-model")
    add_model(store, "a-model")
    (tmp_path / "models" / ".c-model.tmp-123").mkdir()  # an interrupted add
    (tmp_path / "models" / "no-manifest").mkdir()  # someone's copy, not ours
    broken = tmp_path / "models" / "broken"
    broken.mkdir()
    (broken / MANIFEST_NAME).write_text("{not json")
    assert [m.name for m in store.list()] == ["a-model", "b-model"]
    assert Store(tmp_path / "empty").list() == []


def test_a_failed_add_leaves_nothing_behind(tmp_path) -> None:
    store = Store(tmp_path)
    with pytest.raises(RuntimeError, match="conversion failed"):
        with store.add(Manifest(name="half", source="x", format="float")) as folder:
            (folder / "config.json").write_text("{}")
            raise RuntimeError("conversion failed")
    assert list((tmp_path / "models").iterdir()) == []
    assert not store.has("half")


def test_an_existing_name_is_refused_unless_forced(tmp_path) -> None:
    store = Store(tmp_path)
    add_model(store, "m")
    with pytest.raises(StoreError, match="a model named 'm' already exists in the store \\(use --force"):
        add_model(store, "m")
    manifest = Manifest(name="m", source="second", format="float")
    with store.add(manifest, force=True) as folder:
        (folder / "config.json").write_text('{"second": true}')
    assert store.manifest("m").source == "second"
    assert json.loads((store.path("m") / "config.json").read_text()) == {"second": True}


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", ".hidden", "x" * 200])
def test_bad_names_are_refused(tmp_path, bad: str) -> None:
    with pytest.raises(StoreError, match="is not valid"):
        Store(tmp_path).path(bad)


def test_resolve_model_takes_a_folder_then_a_store_name_then_the_default(tmp_path) -> None:
    store = Store(tmp_path / "data")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_model(str(folder), store) == folder
    assert resolve_model(folder, store) == folder
    add_model(store, "mine")
    assert resolve_model("mine", store) == store.path("mine")
    with pytest.raises(StoreError, match="the default model is not prepared: run `exlsp setup`"):
        resolve_model(None, store)
    add_model(store, DEFAULT_MODEL_NAME)
    assert resolve_model(None, store) == store.path(DEFAULT_MODEL_NAME)


def test_resolve_model_errors_name_what_exists(tmp_path) -> None:
    store = Store(tmp_path / "data")
    with pytest.raises(StoreError, match=r"models: none yet: run `exlsp setup` or `exlsp import FILE.gguf`"):
        resolve_model("nope", store)
    add_model(store, "one")
    with pytest.raises(
        StoreError,
        match=r"model 'nope' is neither a checkpoint folder nor a model in the store \(models: one\)",
    ):
        resolve_model("nope", store)
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="is not a checkpoint folder \\(no config.json\\)"):
        resolve_model(str(tmp_path / "plain"), store)


def test_sha256_of_a_file(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert (
        sha256_file(path, chunk_bytes=2) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_a_sigterm_during_an_add_removes_the_staging_folder(tmp_path) -> None:
    import os
    import signal

    from exlsp.commands.models import report_errors

    store = Store(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with report_errors("import"), store.add(Manifest(name="big", source="x", format="float")) as folder:
            (folder / "model.safetensors").write_bytes(b"\0" * 1000)
            os.kill(os.getpid(), signal.SIGTERM)
    assert list((tmp_path / "models").iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before
