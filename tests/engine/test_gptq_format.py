"""GPTQ tensors in every on-disk variant, packed by the tests' own packer, repack into a PackedWeight
whose dense weight equals the tests' own dequantization exactly."""

from __future__ import annotations

import itertools

import pytest
import torch

from engine.config import QuantConfig
from engine.errors import CheckpointError
from engine.quant.gptq_format import concat_out_features, repack_gptq
from engine.quant.layout import dense_weight, quant_linear_reference
from tests.tiny_models import gptq_group_index, gptq_pack, gptq_unpack

GRID = list(itertools.product([4, 8], [False, True], [False, True], [32, 64, 128, -1], ["gptq", "gptq_v2"]))


def packed_layer(k, n, bits, desc_act, sym, group_size, fmt, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g_idx = gptq_group_index(k, group_size, desc_act, gen)
    tensors = gptq_pack(
        n, k, bits=bits, group_size=group_size, sym=sym, checkpoint_format=fmt, g_idx=g_idx, gen=gen
    )
    quant = QuantConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym, checkpoint_format=fmt)
    return tensors, quant


@pytest.mark.parametrize("bits,desc_act,sym,group_size,fmt", GRID)
def test_repacked_weight_equals_the_independent_dequantization(bits, desc_act, sym, group_size, fmt):
    k, n = 256, 48
    tensors, quant = packed_layer(k, n, bits, desc_act, sym, group_size, fmt)
    w = repack_gptq("layer", tensors, quant, k, n, torch.float32)

    expected = gptq_unpack(tensors, bits, fmt).t()  # (K, N) in the original input order
    assert torch.equal(dense_weight(w), expected)
    assert w.group_size == (k if group_size == -1 else group_size)
    assert (w.perm is None) == (not desc_act or group_size == -1)  # one group: nothing to sort
    x = torch.randn(2, k)
    torch.testing.assert_close(quant_linear_reference(x, w), x @ expected, rtol=1e-5, atol=1e-5)


def test_groups_that_do_not_divide_the_inputs_become_equal_runs():
    k, n = 96, 16  # group_size 64: groups of 64 and 32 inputs -> runs of 32 sharing a group's scale
    tensors, quant = packed_layer(k, n, 4, True, False, 64, "gptq")
    w = repack_gptq("layer", tensors, quant, k, n, torch.float32)
    assert w.group_size == 32 and w.scales.shape == (3, n)
    assert torch.equal(dense_weight(w), gptq_unpack(tensors, 4, "gptq").t())


def test_gptq_v1_zero_zero_wraps_to_2_to_the_bits_as_autogptq_computes():
    k, n = 32, 8
    tensors, quant = packed_layer(k, n, 4, False, True, -1, "gptq")
    tensors["qzeros"] = torch.full_like(tensors["qzeros"], -1)  # every stored nibble 15 -> zero 16
    w = repack_gptq("layer", tensors, quant, k, n, torch.float32)
    assert torch.equal(w.zeros, torch.full((1, n), 16.0))


def test_missing_g_idx_means_sequential_groups():
    k, n = 64, 8
    tensors, quant = packed_layer(k, n, 4, False, False, 32, "gptq_v2")
    with_g_idx = repack_gptq("layer", tensors, quant, k, n, torch.float32)
    without = repack_gptq(
        "layer", {key: t for key, t in tensors.items() if key != "g_idx"}, quant, k, n, torch.float32
    )
    assert without.perm is None and torch.equal(dense_weight(without), dense_weight(with_g_idx))


def test_concat_fuses_equal_orders_and_refuses_different_ones():
    k = 64
    gen = torch.Generator().manual_seed(0)
    g_idx = gptq_group_index(k, 32, True, gen)
    quant = QuantConfig(bits=4, group_size=32, desc_act=True, sym=False, checkpoint_format="gptq")
    parts = []
    for n in (16, 8, 8):
        tensors = gptq_pack(
            n, k, bits=4, group_size=32, sym=False, checkpoint_format="gptq", g_idx=g_idx, gen=gen
        )
        tensors["bias"] = torch.randn(n, generator=gen).half()
        parts.append(repack_gptq("part", tensors, quant, k, n, torch.float32))
    fused = concat_out_features(parts)
    assert fused is not None and fused.out_features == 32
    assert torch.equal(dense_weight(fused), torch.cat([dense_weight(p) for p in parts], dim=1))
    assert torch.equal(fused.bias, torch.cat([p.bias for p in parts]))

    other_order = gptq_pack(8, k, bits=4, group_size=32, sym=False, checkpoint_format="gptq",
                            g_idx=gptq_group_index(k, 32, True, gen), gen=gen)  # fmt: skip
    assert (
        concat_out_features([parts[0], repack_gptq("other", other_order, quant, k, 8, torch.float32)]) is None
    )


def test_bits_contradicting_the_tensors_is_named():
    tensors, _ = packed_layer(64, 16, 4, False, True, 32, "gptq")
    says_8_bits = QuantConfig(bits=8, group_size=32, desc_act=False, sym=True, checkpoint_format="gptq")
    with pytest.raises(CheckpointError) as exc:
        repack_gptq("model.layers.0.mlp.up_proj", tensors, says_8_bits, 64, 16, torch.float32)
    message = str(exc.value)
    assert "model.layers.0.mlp.up_proj.qweight has shape (8, 16), expected (16, 16)" in message
    assert "bits=8" in message and "fit 4-bit packing" in message


def test_group_size_contradicting_the_tensors_is_named():
    tensors, _ = packed_layer(64, 16, 4, False, True, 32, "gptq")
    says_64 = QuantConfig(bits=4, group_size=64, desc_act=False, sym=True, checkpoint_format="gptq")
    with pytest.raises(
        CheckpointError, match=r"layer\.scales has shape \(2, 16\), expected \(1, 16\) \(group_size=64"
    ):
        repack_gptq("layer", tensors, says_64, 64, 16, torch.float32)


def test_g_idx_beyond_the_groups_is_named():
    tensors, quant = packed_layer(64, 16, 4, False, True, 32, "gptq")
    tensors["g_idx"] = tensors["g_idx"] * 2  # groups 0 and 2 of 2
    with pytest.raises(CheckpointError, match=r"layer\.g_idx holds group 2 .* scales has 2 groups"):
        repack_gptq("layer", tensors, quant, 64, 16, torch.float32)
