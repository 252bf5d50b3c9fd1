"""The layers' use of the fused ops (engine/ops: quant_linear_silu_mul, quant_qkv_rotary_kv), on the
CPU. The reference returns None for both (no fused kernel), so the layers compose the unfused ops;
here a stand-in that follows each op's contract answers instead, as the CUDA kernels do on a GPU.
The layer's output, and the K/V it leaves in the cache, must not change: a layer that handed the
fused op the wrong heads, table, slots or weight would fail here, without a GPU."""

from __future__ import annotations

import pytest
import torch

from engine import ops
from engine.attention_metadata import AttentionMetadata
from engine.layers.attention import Attention
from engine.layers.linear import QuantLinear
from engine.layers.mlp import GatedMLP
from engine.layers.rotary import RotaryEmbedding
from engine.ops import reference
from engine.quant.layout import PackedWeight, pack_int32

HQ, HKV, D, HIDDEN, INTER = 4, 2, 16, 32, 48
BLOCK = 4


def quant_linear(in_features: int, out_features: int, seed: int, bias: bool = False) -> QuantLinear:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (in_features, out_features), generator=gen)
    groups = in_features // 16
    w = PackedWeight(
        bits=4,
        group_size=16,
        in_features=in_features,
        out_features=out_features,
        qweight=pack_int32(q, 4),
        scales=torch.rand(groups, out_features, generator=gen) * 0.05 + 0.01,
        zeros=torch.randint(0, 16, (groups, out_features), generator=gen).float(),
        perm=None,
        bias=torch.randn(out_features, generator=gen) * 0.1 if bias else None,
    )
    return QuantLinear(w)


def stand_in_qkv(
    x, w, positions, cos_sin_cache, kv_cache_layer, slot_mapping, num_heads, head_dim, read_next=()
):
    """quant_qkv_rotary_kv by its contract alone: the KV head count comes from the weight's width."""
    num_kv_heads = (w.out_features // head_dim - num_heads) // 2
    y = reference.quant_linear(x, w)
    q, k, v = y.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k = reference.apply_rotary(
        q.reshape(-1, num_heads, head_dim), k.reshape(-1, num_kv_heads, head_dim), positions, cos_sin_cache
    )
    reference.write_kv(k, v.reshape(-1, num_kv_heads, head_dim), kv_cache_layer, slot_mapping)
    return q


def stand_in_silu_mul(x, w, read_next=()):
    return reference.silu_and_mul(reference.quant_linear(x, w))


@pytest.fixture
def fused_stand_ins(monkeypatch):
    calls = []

    def record(fn):
        def wrapped(*args):
            calls.append(fn.__name__)
            return fn(*args)

        return wrapped

    monkeypatch.setattr(reference, "quant_qkv_rotary_kv", record(stand_in_qkv))
    monkeypatch.setattr(reference, "quant_linear_silu_mul", record(stand_in_silu_mul))
    return calls


def attention_inputs():
    gen = torch.Generator().manual_seed(3)
    tokens = 5
    hidden = torch.randn(tokens, HIDDEN, generator=gen)
    positions = torch.tensor([0, 1, 2, 7, 8])
    attn = AttentionMetadata(
        query_start_loc=torch.tensor([0, 3, 5], dtype=torch.int32),
        seq_lens=torch.tensor([3, 9], dtype=torch.int32),
        block_tables=torch.tensor([[2, 0, 0], [0, 1, 3]], dtype=torch.int32),
        slot_mapping=torch.tensor([8, 9, 10, 7, 12]),  # seq 1: token 7 in block 1, token 8 in block 3
        max_query_len=3,
        max_seq_len=9,
        block_size=BLOCK,
    )
    return hidden, positions, attn


def test_attention_with_a_fused_qkv_kernel_equals_the_composed_ops(fused_stand_ins):
    layer = Attention(
        quant_linear(HIDDEN, (HQ + 2 * HKV) * D, seed=1, bias=True),
        quant_linear(HQ * D, HIDDEN, seed=2),
        RotaryEmbedding(D, 10000.0, None, 64),
        num_heads=HQ,
        num_kv_heads=HKV,
        head_dim=D,
        sliding_window=None,
    )
    hidden, positions, attn = attention_inputs()
    cache = torch.randn(2, 4, BLOCK, HKV, D, generator=torch.Generator().manual_seed(4))
    composed_cache = cache.clone()
    ops.set_fused_ops(False)
    try:
        composed = layer(positions, hidden, attn, composed_cache)
    finally:
        ops.set_fused_ops(True)
    assert fused_stand_ins == []
    fused = layer(positions, hidden, attn, cache)
    assert fused_stand_ins == ["stand_in_qkv"]
    torch.testing.assert_close(fused, composed)
    torch.testing.assert_close(cache, composed_cache)


def test_mlp_with_a_fused_gate_up_kernel_equals_the_composed_ops(fused_stand_ins):
    mlp = GatedMLP(quant_linear(HIDDEN, 2 * INTER, seed=5, bias=True), quant_linear(INTER, HIDDEN, seed=6))
    x = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(7))
    ops.set_fused_ops(False)
    try:
        composed = mlp(x)
    finally:
        ops.set_fused_ops(True)
    assert fused_stand_ins == []
    fused = mlp(x)
    assert fused_stand_ins == ["stand_in_silu_mul"]
    torch.testing.assert_close(fused, composed)


def test_the_reference_serves_no_fused_op():
    """On the CPU both fused ops answer None: the layers compose the unfused ops."""
    w = quant_linear(HIDDEN, 2 * INTER, seed=8).packed()
    x = torch.randn(2, HIDDEN)
    assert ops.quant_linear_silu_mul(x, w) is None
    hidden, positions, attn = attention_inputs()
    cache = torch.zeros(2, 4, BLOCK, HKV, D)
    table = RotaryEmbedding(D, 10000.0, None, 64).cos_sin_cache
    qkv = quant_linear(HIDDEN, (HQ + 2 * HKV) * D, seed=9).packed()
    assert ops.quant_qkv_rotary_kv(hidden, qkv, positions, table, cache, attn.slot_mapping, HQ, D) is None
    assert not cache.any()
