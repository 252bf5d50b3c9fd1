"""The model store: one checkpoint folder per model under the user data directory, each with a manifest.

Layout:
    DATA_DIR/models/NAME/            a Hugging Face-layout checkpoint (config.json, tokenizer.json, ...)
    DATA_DIR/models/NAME/manifest.json   where it came from and what it is (see Manifest)
DATA_DIR is platformdirs' user data dir for "exlsp", or $EXLSP_DATA_DIR; the environment is read at
the CLI edge (`data_dir(os.environ)`) and the Store is handed its root. Models enter the store only
through `Store.add`, which writes into a hidden staging folder and renames it into place, so a
folder with a manifest is always complete. No torch here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
DATA_DIR_ENV = "EXLSP_DATA_DIR"
DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoreError(ValueError):
    pass


def data_dir(environ: Mapping[str, str]) -> Path:
    """The store root: $EXLSP_DATA_DIR when set, else the user data dir (e.g. ~/.local/share/exlsp)."""
    if environ.get(DATA_DIR_ENV):
        return Path(environ[DATA_DIR_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("exlsp", appauthor=False))


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    name: str
    source: str  # what it was made from: "gguf:FILE", "hf:REPO_ID", "path:FOLDER", "pypi:..."
    format: str  # "gptq" or "float"
    bits: int | None = None  # None for float
    group_size: int | None = None
    source_sha256: dict[str, str] = field(default_factory=dict)  # input file name -> sha256
    created: str = ""  # ISO 8601, UTC
    details: dict[str, Any] = field(default_factory=dict)  # method, act_order, calibration, timings, ...

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise StoreError(
            f"model name {name!r} is not valid: use letters, digits, '.', '_' and '-' (no '/'), "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Store:
    root: Path

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def path(self, name: str) -> Path:
        return self.models_dir / check_name(name)

    def has(self, name: str) -> bool:
        return (self.path(name) / MANIFEST_NAME).is_file()

    def manifest(self, name: str) -> Manifest:
        path = self.path(name) / MANIFEST_NAME
        if not path.is_file():
            raise StoreError(f"no model named {name!r} in the store {self.models_dir}")
        return Manifest.from_json(path.read_text())

    def list(self) -> list[Manifest]:
        """Every complete model (staging folders and folders without a manifest are skipped)."""
        if not self.models_dir.is_dir():
            return []
        out = []
        for folder in sorted(self.models_dir.iterdir()):
            if folder.name.startswith(".") or not (folder / MANIFEST_NAME).is_file():
                continue
            try:
                out.append(Manifest.from_json((folder / MANIFEST_NAME).read_text()))
            except (json.JSONDecodeError, TypeError):
                continue  # a damaged manifest hides the model rather than breaking `exlsp models`
        return out

    def check_free(self, name: str, force: bool) -> None:
        if self.path(name).exists() and not force:
            raise StoreError(
                f"a model named {name!r} already exists in the store (use --force to replace it)"
            )

    @contextlib.contextmanager
    def add(self, manifest: Manifest, force: bool = False) -> Iterator[Path]:
        """Yield an empty staging folder to write the checkpoint into; on success the manifest is added
        and the folder renamed to its place in the store; on failure nothing is left behind."""
        from engine.quant.gptq_writer import staged_directory

        self.check_free(manifest.name, force)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with staged_directory(self.path(manifest.name), force=force) as staging:
            yield staging
            stamped = manifest if manifest.created else _with_created(manifest)
            (staging / MANIFEST_NAME).write_text(stamped.to_json())

    def remove(self, name: str) -> None:
        import shutil

        if not self.path(name).exists():
            raise StoreError(f"no model named {name!r} in the store {self.models_dir}")
        shutil.rmtree(self.path(name))


def _with_created(manifest: Manifest) -> Manifest:
    from dataclasses import replace

    return replace(manifest, created=now_iso())


def looks_like_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_model(name_or_path: str | Path | None, store: Store | None = None) -> Path:
    """The checkpoint folder a `--model` value means: an existing checkpoint folder, else a store name;
    None means the default model. Errors say what exists and what to run. Without `store`, the store
    of this user (the caller is an edge: the CLI or the server)."""
    if store is None:
        import os

        store = Store(data_dir(os.environ))
    if name_or_path is None:
        if store.has(DEFAULT_MODEL_NAME):
            return store.path(DEFAULT_MODEL_NAME)
        raise StoreError(
            f"no model configured and the default model is not prepared: run `exlsp setup` "
            f"(store: {store.models_dir})"
        )
    candidate = Path(name_or_path).expanduser()
    if looks_like_checkpoint(candidate):
        return candidate
    text = str(name_or_path)
    if _NAME.match(text) and store.has(text):
        return store.path(text)
    if candidate.exists():
        raise StoreError(f"{candidate} is not a checkpoint folder (no config.json)")
    names = [m.name for m in store.list()]
    known = ", ".join(names) if names else "none yet: run `exlsp setup` or `exlsp import FILE.gguf`"
    raise StoreError(
        f"model {text!r} is neither a checkpoint folder nor a model in the store (models: {known})"
    )
