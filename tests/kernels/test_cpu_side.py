"""The CPU-side pieces of the GPU path, tested without a GPU: the kernel source list and build key,
decode-attention partitioning, CUDA-graph batch buckets, and the fallbacks when CUDA is absent."""

from __future__ import annotations

import pytest
import torch

from engine.cuda_graph import BUCKETS, bucket_for
from engine.ops import build, cuda_attention


def test_every_listed_source_exists_and_every_kernel_file_is_listed():
    sources = build.source_paths()
    assert all(p.is_file() for p in sources)
    on_disk = {p.name for p in build.CSRC_DIR.iterdir() if p.suffix in (".cu", ".cpp")}
    assert {p.name for p in sources} == on_disk


def test_the_sources_are_a_checkouts_csrc_else_the_installed_copy(tmp_path):
    checkout = tmp_path / "repo"
    (checkout / "engine" / "ops").mkdir(parents=True)
    (checkout / "csrc").mkdir()
    (checkout / "csrc" / "sources.txt").write_text("a.cu\n")
    assert build.find_csrc(checkout / "engine" / "ops") == checkout / "csrc"
    installed = tmp_path / "site-packages" / "engine" / "ops"  # a wheel: no csrc/ beside engine/
    installed.mkdir(parents=True)
    assert build.find_csrc(installed) == installed / "csrc"


@pytest.mark.slow
def test_an_installed_wheel_carries_every_kernel_source_and_finds_them(tmp_path):
    """pip builds the wheel (no download: setuptools from the test extras) and installs it into a
    folder; a fresh interpreter there sees csrc/ under engine/ops and lists the sources from it."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(build.__file__).resolve().parents[2]
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", str(repo), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("exlsp-*.whl")
    carried = {n.removeprefix("engine/ops/csrc/") for n in zipfile.ZipFile(wheel).namelist() if "csrc/" in n}
    kernel_files = {p.name for p in build.CSRC_DIR.iterdir() if p.suffix in (".cu", ".cuh", ".h", ".cpp")}
    assert carried == kernel_files | {"sources.txt"}
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    listed = subprocess.run(
        [sys.executable, "-c", "from engine.ops import build; print(*build.source_paths(), sep=chr(10))"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listed == [str(site / "engine" / "ops" / "csrc" / p.name) for p in build.source_paths()]


def test_arch_flags_embed_machine_code_and_ptx_for_the_device():
    assert build.arch_flags((9, 0)) == [
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]


def test_build_key_changes_with_the_gpu():
    sources = build.source_paths()
    assert build.build_key(sources, (8, 6)) != build.build_key(sources, (9, 0))
    assert build.build_key(sources, (9, 0)) == build.build_key(sources, (9, 0))


def test_probe_defines_build_apart_from_the_ordinary_library(monkeypatch):
    sources = build.source_paths()
    monkeypatch.delenv(build.DEFINES_ENV, raising=False)
    plain = build.build_key(sources, (9, 0))
    assert build.extra_defines() == []
    monkeypatch.setenv(build.DEFINES_ENV, "EXLSP_TRACE  OTHER")
    assert build.extra_defines() == ["-DEXLSP_TRACE", "-DOTHER"]
    assert build.build_key(sources, (9, 0)) != plain
    monkeypatch.setenv(build.DEFINES_ENV, "")
    assert build.build_key(sources, (9, 0)) == plain


@pytest.mark.parametrize(
    "max_seq_len,size", [(1, 128), (2048, 128), (32768, 128), (32769, 256), (131072, 512), (10**6, 512)]
)
def test_partition_size_grows_only_past_the_partition_cap(max_seq_len, size):
    assert cuda_attention.partition_size_for(max_seq_len) == size


@pytest.mark.parametrize("max_seq_len,grown", [(2048, 256), (32768, 256), (32769, 0), (131072, 0)])
def test_partitions_grow_on_the_device_only_where_they_start_smaller(max_seq_len, grown):
    """The op's max_partition_size: GROWN_PARTITION for partitions of 128 tokens; 0 (fixed) once the
    context's cap already made them as large, never a size under the partition's (the op refuses it)."""
    assert cuda_attention.grown_partition_for(cuda_attention.partition_size_for(max_seq_len)) == grown


def test_batch_buckets():
    assert BUCKETS == (1, 2, 4, 8, 16)
    assert [bucket_for(n) for n in (1, 2, 3, 5, 8, 9, 16, 17)] == [1, 2, 4, 8, 8, 16, 16, None]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answers")
def test_without_cuda_every_op_reports_the_reference_and_the_build_says_why():
    from engine import ops

    assert set(ops.backend_report().values()) == {"reference"}
    with pytest.raises(build.BuildError, match="no CUDA device"):
        build.check_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_exlsp_bench_without_cuda_exits_with_a_message(capsys):
    from exlsp.cli import main

    assert main(["bench", "--quick"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_token_level_metadata_turns_new_tokens_into_one_token_sequences():
    from engine.attention_metadata import AttentionMetadata
    from engine.cuda_graph import token_level_metadata

    # sequence 0: 10 tokens after this step, 3 new; sequence 1: a decode token at length 5
    attn = AttentionMetadata(
        query_start_loc=torch.tensor([0, 3, 4], dtype=torch.int32),
        seq_lens=torch.tensor([10, 5], dtype=torch.int32),
        block_tables=torch.tensor([[7, 2, 9], [4, 0, 0]], dtype=torch.int32),
        slot_mapping=torch.tensor([30, 31, 32, 17]),
        max_query_len=3,
        max_seq_len=10,
        block_size=4,
    )
    tokens = token_level_metadata(attn, 4)
    assert tokens.is_decode and tokens.num_seqs == 4
    assert tokens.seq_lens.tolist() == [8, 9, 10, 5]
    assert tokens.block_tables.tolist() == [[7, 2, 9], [7, 2, 9], [7, 2, 9], [4, 0, 0]]
    assert tokens.query_start_loc.tolist() == [0, 1, 2, 3, 4]
    assert tokens.slot_mapping.tolist() == [30, 31, 32, 17]
    assert tokens.seq_lens.dtype == torch.int32
