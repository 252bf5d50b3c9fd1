"""engine/ops/cuda.py's pure-arithmetic choices: the tensor-core GEMV's K split (gemv_splits) and the prefill
GEMM's dequantized column slices (dequant_slice_columns)."""

from __future__ import annotations

import math

import pytest

from engine.ops.cuda import MAX_GEMV_SPLITS, gemv_splits

H100_SMS = 132


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (4096, 6144, 1),  # Llama-3-8B q|k|v: 192 tiles of 16 chunks per warp; a split does not pay
        (4096, 4096, 1),  # o: 128 tiles
        (14336, 4096, 3),  # down: long K, 384 blocks of 19 chunks per warp
        (4096, 1024, 4),  # a narrow layer: 32 tiles leave the GPU nearly empty
        (4096, 14336, 1),  # gate or up alone: 448 tiles; a split would add a third wave
        (4096, 28672, 1),  # gate|up
        (4096, 128256, 1),  # lm_head: 4008 tiles already fill ten waves
    ],
)
def test_decode_shapes_on_an_h100(k, n, expected):
    assert gemv_splits(k, n, 1, H100_SMS) == expected


@pytest.mark.parametrize("k", [32, 256, 896, 4096, 4864, 14336])
@pytest.mark.parametrize("n", [32, 896, 4096, 28672, 152064])
@pytest.mark.parametrize("rows", [1, 8, 16])
def test_a_split_always_leaves_each_warp_at_least_two_chunks(k, n, rows):
    splits = gemv_splits(k, n, rows, H100_SMS)
    assert 1 <= splits <= MAX_GEMV_SPLITS
    if splits > 1:
        assert math.ceil(math.ceil(k // 32 / splits) / 8) >= 2


def test_more_sms_never_ask_for_fewer_blocks():
    for k, n in [(4096, 6144), (4096, 4096), (14336, 4096)]:
        small, large = gemv_splits(k, n, 1, 46), gemv_splits(k, n, 1, 132)
        assert (n // 32) * large >= (n // 32) * small


def test_prefill_dequantizes_whole_weights_that_fit_the_scratch_and_slices_the_rest():
    from engine.ops.cuda import DEQUANT_SCRATCH_ELEMENTS, dequant_slice_columns

    assert DEQUANT_SCRATCH_ELEMENTS == 1 << 24  # 32 MB of fp16
    assert dequant_slice_columns(4096, 4096) == 4096  # o of an 8B model: 32 MB, one GEMM
    assert dequant_slice_columns(4096, 28672) == 4096  # gate|up: 235 MB -> 7 slices of 32 MB
    assert dequant_slice_columns(14336, 4096) == 1024  # down: multiples of 256 columns
    assert dequant_slice_columns(1 << 20, 4096) == 256  # never narrower than one cuBLAS tile
