"""Calibration data for the quantizer: local source files cut into fixed-length token samples.

GPTQ only needs inputs that look like what the model will see, so code from this machine serves:
by default the library modules of the installed Python standard library (`is_library_module`: no
test suites, test data or generated codec tables, which look little like code someone edits). The
evaluation files (exlsp/eval_files.txt names
them, relative to the same standard library) are always excluded so that quantization never tunes
itself to the text it is measured on. Pure Python: the tokenizer comes in as a function.
"""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SOURCE_SUFFIXES = frozenset(
    ".py .pyi .c .h .cc .cpp .hpp .cu .rs .go .java .kt .js .jsx .ts .tsx .lua .rb .sh .md .toml".split()
)
MAX_FILE_BYTES = 512 * 1024  # generated or vendored blobs teach nothing about real code
# Folders of the standard library that hold test suites, their data files (deliberately broken
# syntax, odd encodings) and generated codec tables rather than library code.
NON_LIBRARY_PARTS = frozenset({"test", "tests", "idle_test", "encodings"})


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class CalibrationConfig:
    num_samples: int = 128
    seq_len_tokens: int = 512
    seed: int = 0


def default_calibration_roots() -> list[Path]:
    return [Path(sysconfig.get_paths()["stdlib"])]


def is_library_module(path: Path) -> bool:
    """A Python module of library code: not a test, test data or a generated codec table."""
    path = Path(path)
    return (
        path.suffix == ".py"
        and not NON_LIBRARY_PARTS.intersection(path.parts)
        and not path.name.startswith("test_")
    )


def find_source_files(paths: Iterable[Path], exclude: Iterable[Path] = ()) -> list[Path]:
    """Source files under `paths` (files are taken as given, folders searched), sorted, deduplicated,
    without anything in `exclude` and without installed third-party packages (site-packages)."""
    excluded = {Path(p).resolve() for p in exclude}
    found: set[Path] = set()
    for root in paths:
        root = Path(root)
        if root.is_file():
            candidates: Iterable[Path] = [root]
        elif root.is_dir():
            candidates = (
                p
                for p in root.rglob("*")
                if p.suffix in SOURCE_SUFFIXES and "site-packages" not in p.parts and p.is_file()
            )
        else:
            raise CalibrationError(f"calibration path {root} does not exist")
        for path in candidates:
            resolved = path.resolve()
            if resolved not in excluded and path.stat().st_size <= MAX_FILE_BYTES:
                found.add(resolved)
    return sorted(found)


def build_samples(
    files: Sequence[Path],
    encode: Callable[[str], list[int]],
    config: CalibrationConfig,
    separator_ids: Sequence[int] = (),
) -> list[list[int]]:
    """`config.num_samples` lists of exactly `config.seq_len_tokens` token ids.

    Files are visited in a seeded random order and their tokens concatenated (separated by
    `separator_ids`, e.g. the EOS token) until there are enough, so the result does not depend on
    how many files the machine has beyond those needed.
    """
    if config.num_samples <= 0 or config.seq_len_tokens <= 0:
        raise CalibrationError(f"need a positive number of samples and tokens, got {config}")
    if not files:
        raise CalibrationError("no calibration files: pass source files or folders with --calib")
    order = list(files)
    random.Random(config.seed).shuffle(order)
    needed = config.num_samples * config.seq_len_tokens
    stream: list[int] = []
    for path in order:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        stream.extend(encode(text))
        stream.extend(separator_ids)
        if len(stream) >= needed:
            break
    if len(stream) < needed:
        raise CalibrationError(
            f"calibration files hold {len(stream)} tokens, fewer than the {needed} needed "
            f"({config.num_samples} samples x {config.seq_len_tokens} tokens): pass more or longer "
            "files with --calib, or fewer samples"
        )
    n = config.seq_len_tokens
    return [stream[i * n : (i + 1) * n] for i in range(config.num_samples)]
