"""`exlsp pull` against a local Hugging Face hub cache the test builds, with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import CORPUS, make_tiny_checkpoint

pytest.importorskip("huggingface_hub")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str, checkpoint: Path, extra: dict[str, bytes] | None = None) -> Path:
    """The hub cache layout: models--ORG--NAME/refs/main -> COMMIT, snapshots/COMMIT/<files>."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(checkpoint, snapshot)
    for name, content in (extra or {}).items():
        (snapshot / name).write_bytes(content)
    return root


def pull(args: list[str], data_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "EXLSP_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "exlsp.cli", "pull", *args, "--cache-dir", str(cache)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])  # fmt: skip


@pytest.mark.slow
def test_pull_quantizes_a_float_repository_from_the_offline_cache(tmp_path) -> None:
    cache = hub_cache(tmp_path / "hub", "acme/Tiny-Coder", make_tiny_checkpoint(tmp_path / "ckpt", "qwen2"))
    calib = tmp_path / "calib.py"
    calib.write_text(CORPUS * 4)
    done = pull(["acme/Tiny-Coder", "--group-size", "32", "--calib", str(calib), "--calib-samples", "4",
                 "--calib-tokens", "64", "--device", "cpu"], tmp_path / "data", cache)  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "data" / "models" / "tiny-coder"
    assert f"pulled acme/Tiny-Coder as 'tiny-coder' ({folder})" in done.stdout
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"] == f"hf:acme/Tiny-Coder@{COMMIT}"
    assert (manifest["format"], manifest["bits"], manifest["group_size"]) == ("gptq", 4, 32)
    assert set(manifest["source_sha256"]) == {"model.safetensors"}
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"


@pytest.mark.slow
def test_pull_copies_a_gptq_repository_and_refuses_pickles_and_unknown_repos(tmp_path) -> None:
    gptq = make_tiny_checkpoint(tmp_path / "gptq", "llama", quant={"bits": 4, "group_size": 32})
    cache = hub_cache(tmp_path / "hub", "acme/tiny-gptq", gptq)
    pickle_only = make_tiny_checkpoint(tmp_path / "pkl", "llama")
    (pickle_only / "model.safetensors").unlink()
    hub_cache(cache, "acme/tiny-pickle", pickle_only, {"pytorch_model.bin": b"\x80\x04pickle"})

    done = pull(["acme/tiny-gptq"], tmp_path / "data", cache)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "data" / "models" / "tiny-gptq"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["format"], manifest["bits"], manifest["group_size"]) == ("gptq", 4, 32)
    assert (folder / "model.safetensors").read_bytes() == (gptq / "model.safetensors").read_bytes()

    done = pull(["acme/tiny-pickle"], tmp_path / "data", cache)
    assert done.returncode == 1
    assert "acme/tiny-pickle has no config.json and *.safetensors weights: only safetensors" in done.stderr

    done = pull(["acme/unknown"], tmp_path / "data", cache)
    assert done.returncode == 1
    assert (
        "exlsp pull: error: could not get acme/unknown from the Hugging Face hub or its local cache"
        in done.stderr
    )
    assert sorted(p.name for p in (tmp_path / "data" / "models").iterdir()) == ["tiny-gptq"]
