"""engine/ops/cuda_quant_linear.py's pure-arithmetic choices: the tensor-core GEMV's K split (gemv_splits)
and the prefill GEMM's dequantized column slices (dequant_slice_columns)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.ops.cuda_quant_linear import MAX_GEMV_SPLITS, gemv_splits

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
    from engine.ops.cuda_quant_linear import DEQUANT_SCRATCH_ELEMENTS, dequant_slice_columns

    assert DEQUANT_SCRATCH_ELEMENTS == 1 << 24  # 32 MB of fp16
    assert dequant_slice_columns(4096, 4096) == 4096  # o of an 8B model: 32 MB, one GEMM
    assert dequant_slice_columns(4096, 28672) == 4096  # gate|up: 235 MB -> 7 slices of 32 MB
    assert dequant_slice_columns(14336, 4096) == 1024  # down: multiples of 256 columns
    assert dequant_slice_columns(1 << 20, 4096) == 256  # never narrower than one cuBLAS tile


def _prepared(k: int, n: int, bits: int = 4, group_size: int = 128, integer_zeros: bool = True):
    from engine.ops.cuda_quant_linear import PreparedWeight

    groups = k // group_size
    return PreparedWeight(
        bits, group_size, k, n,
        torch.zeros((k * bits // 32, n), dtype=torch.int32),
        torch.ones((groups, n), dtype=torch.float16), torch.zeros((groups, n), dtype=torch.float16),
        None, None, integer_zeros,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("k", "n", "bits", "group_size", "integer_zeros", "expected"),
    [
        (4096, 14336, 4, 128, True, True),  # every real layer: K a multiple of 128
        (896, 4864, 4, 32, True, True),
        (96, 64, 4, 32, True, False),  # 3 chunks of 32: no whole batch of 4 for the tensor-core loop
        (4160, 256, 4, 64, True, False),  # 130 chunks
        (4096, 4096, 8, 128, True, False),  # 8-bit: the CUDA-core kernel
        (4096, 4096, 4, 128, False, False),  # fractional zeros are exact only in float32
        (4096, 4100, 4, 128, True, False),  # N not a multiple of 32
    ],
)
def test_tensor_core_gemv_takes_whole_batches_of_k(k, n, bits, group_size, integer_zeros, expected):
    """Which weights prepare_quant_weight puts in column strips for the tensor-core GEMV."""
    from engine.ops.cuda_quant_linear import _tc_shape_ok

    assert _tc_shape_ok(_prepared(k, n, bits, group_size, integer_zeros), integer_zeros) is expected


def test_decode_merge_counters_are_the_upper_half_of_the_split_counters(monkeypatch):
    """The decode kernel merges in its last block only with counters created at load (never under
    a graph capture), from the half the split GEMV does not use, and falls back to the merge
    kernel when there are none or too few."""
    from engine.ops import cuda_attention, cuda_common

    device = torch.device("cpu")
    offset = cuda_common.ATTENTION_COUNTERS_OFFSET
    monkeypatch.setattr(cuda_common, "_counters", {})
    assert cuda_attention._merge_counters(device, 8) is None
    counters = torch.zeros(65536, dtype=torch.int32)
    monkeypatch.setattr(cuda_common, "_counters", {device: counters})
    got = cuda_attention._merge_counters(device, 16 * 8)
    assert got.numel() == 128 and got.data_ptr() == counters[offset:].data_ptr()
    assert cuda_attention._merge_counters(device, 65536 - offset + 1) is None
