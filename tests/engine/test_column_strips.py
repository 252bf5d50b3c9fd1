"""The tensor-core GEMV's weight layout (engine/quant/layout.py column strips) and how QuantLinear keeps
one copy of it: the mapping of every word, the round trip, and the buffer going back to the canonical
layout when the module leaves the GPU. (The kernels reading the strips: tests/kernels.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.layers.linear import QuantLinear, prepare_quant_linears
from engine.quant.layout import PackedWeight, from_column_strips, to_column_strips


def words(rows: int, n: int) -> torch.Tensor:
    return torch.arange(rows * n, dtype=torch.int32).reshape(rows, n)


def test_each_strip_holds_sixteen_columns_whole_row_after_row():
    q = words(6, 48)
    s = to_column_strips(q)
    assert s.shape == (3, 6, 16) and s.is_contiguous()
    for j in range(3):
        for r in range(6):
            assert s[j, r].tolist() == q[r, 16 * j : 16 * j + 16].tolist()
    # storage order: strip 0's rows first, then strip 1's: word i is row (i // 16) % 6 of column
    # 16 * (i // 96) + i % 16 (what the dequantize kernel's strips path computes)
    flat = s.flatten()
    for i in (0, 15, 16, 95, 96, 200, 287):
        assert flat[i] == q[(i // 16) % 6, 16 * (i // 96) + i % 16]


def test_strips_round_trip_exactly():
    q = torch.randint(-(2**31), 2**31 - 1, (64, 96), dtype=torch.int32)
    assert torch.equal(from_column_strips(to_column_strips(q)), q)


def test_strips_need_a_multiple_of_sixteen_columns():
    with pytest.raises(ValueError, match="column strips need out_features a multiple of 16, got 40"):
        to_column_strips(words(4, 40))


def quant_linear(n: int = 32) -> QuantLinear:
    k = 64
    q = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), dtype=torch.int32)
    scales = torch.rand((1, n)) + 0.5
    return QuantLinear(PackedWeight(4, k, k, n, q, scales, torch.full((1, n), 8.0), None, None))


def test_a_module_holding_strips_is_canonical_again_off_the_gpu():
    """The CUDA backend swaps the buffer for strips (QuantLinear.packed); .to('cpu') or a cast that
    leaves it on the CPU must give the CPU path the canonical words back, bit for bit."""
    linear = quant_linear()
    canonical = linear.qweight.clone()
    linear._buffers["qweight"] = to_column_strips(canonical)  # as after packed() on a GPU
    assert torch.equal(linear.canonical_qweight(), canonical)
    linear.to("cpu")
    assert linear.qweight.shape == canonical.shape and torch.equal(linear.qweight, canonical)
    x = torch.randn(3, 64)
    plain = quant_linear()
    plain._buffers["qweight"] = canonical
    plain.scales, plain.zeros = linear.scales, linear.zeros
    assert torch.equal(linear(x), plain(x))


def test_a_cpu_module_is_never_given_strips():
    linear = quant_linear()
    canonical = linear.qweight.clone()
    linear(torch.randn(2, 64))
    assert torch.equal(linear.qweight, canonical) and not getattr(linear.packed(), "strips", False)


def test_load_prepares_every_quant_linear_once():
    """engine/loader.py and the GPU benchmarks prepare at load (on a GPU: the strips made before the
    KV cache is sized), so no preparation happens later inside a graph capture."""
    model = nn.Sequential(quant_linear(), nn.ReLU(), quant_linear())
    prepare_quant_linears(model)
    prepared = [m._prepared for m in model if isinstance(m, QuantLinear)]
    assert len(prepared) == 2 and all(p is not None for p in prepared)
    assert all(m.packed() is p for m, p in zip(model[::2], prepared, strict=True))  # not prepared again


def test_a_state_dict_holds_the_canonical_layout_whatever_the_buffer():
    """Saved from a module whose buffer holds strips (as on a GPU), a state dict has the canonical
    words; loaded into such a module, it replaces the strips, and the module computes as before."""
    linear = quant_linear()
    canonical = linear.qweight.clone()
    linear._buffers["qweight"] = to_column_strips(canonical)  # as after packed() on a GPU
    state = linear.state_dict()
    assert torch.equal(state["qweight"], canonical)
    other = quant_linear()
    other._buffers["qweight"] = to_column_strips(other.qweight)
    other.load_state_dict(state)
    assert torch.equal(other.qweight, canonical)
    x = torch.randn(2, 64)
    assert torch.equal(other(x), linear.to("cpu")(x))
