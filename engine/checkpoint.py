"""Reading a checkpoint folder's tensors: safetensors only, memory-mapped, single file or sharded.

Owns finding the weight files (model.safetensors, *.safetensors, model.safetensors.index.json),
refusing pickle checkpoints, and turning every way a file can be wrong into a CheckpointError that
names the file or tensor and says what to do. Tensors come back on the CPU in their stored dtype;
converting and placing them is the loader's business.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _pickle_refusal(folder: Path, files: list[Path]) -> CheckpointError:
    names = ", ".join(sorted(f.name for f in files)[:3])
    return CheckpointError(
        f"{folder} holds only pickle weights ({names}). exlsp does not load pickle files: unpickling runs "
        "arbitrary code stored in the file. Convert the checkpoint to safetensors once, where you trust it, "
        "e.g. with transformers: AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, "
        "safe_serialization=True), or download the repository's *.safetensors files instead."
    )


def find_weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist or is not a folder")
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{INDEX_FILE} in {folder} is malformed (no valid weight_map): {exc}"
            ) from exc
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{INDEX_FILE} in {folder} lists shard {missing[0]}, which is missing "
                f"({len(missing)} of {len(files)} shards missing); download the complete checkpoint"
            )
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = [f for pattern in PICKLE_PATTERNS for f in folder.glob(pattern)]
    if pickles:
        raise _pickle_refusal(folder, pickles)
    raise CheckpointError(f"no *.safetensors weights in {folder}")


class CheckpointReader:
    """name -> tensor over all the weight files of a folder; headers read at open, data on demand."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._handles = []
        self._file_of: dict[str, int] = {}  # tensor name -> index into _handles
        for path in find_weight_files(self.folder):
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")  # memory-mapped
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(
                    f"{path.name} in {self.folder} is not a readable safetensors file ({exc}); it is "
                    "probably truncated or corrupt (an interrupted download?): download or convert it again"
                ) from exc
            self._handles.append((path, handle))
            for name in handle.keys():
                self._file_of[name] = len(self._handles) - 1
        self._check_index()

    def _check_index(self) -> None:
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            return
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        for name, file_name in weight_map.items():
            if name not in self._file_of:
                raise CheckpointError(
                    f"{INDEX_FILE} says tensor {name!r} is in {file_name}, but that file does not hold it; "
                    "the shards do not match their index: download the checkpoint again"
                )

    def names(self) -> set[str]:
        return set(self._file_of)

    def has(self, name: str) -> bool:
        return name in self._file_of

    def _handle(self, name: str):
        if name not in self._file_of:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint in {self.folder}")
        return self._handles[self._file_of[name]]

    def shape(self, name: str) -> tuple[int, ...]:
        _, handle = self._handle(name)
        return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        path, handle = self._handle(name)
        try:
            return handle.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot read tensor {name!r} from {path.name} in {self.folder} ({exc}); the file is "
                "probably corrupt: download or convert it again"
            ) from exc

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
