"""The layers' use of the fused ops (engine/ops: quant_linear_silu_mul, quant_qkv_rotary_kv,
quant_linear_add_norm), on the CPU. The reference returns None for all (no fused kernel), so the
layers compose the unfused ops; here a stand-in that follows each op's contract answers instead, as
the CUDA kernels do on a GPU. The output, and the K/V left in the cache, must not change: a layer
that handed a fused op the wrong heads, table, slots, weight, norm or row scale would fail here,
without a GPU."""

from __future__ import annotations

import pytest
import torch

import engine
from engine import ops
from engine.attention_metadata import AttentionMetadata
from engine.layers.attention import Attention
from engine.layers.linear import QuantLinear
from engine.layers.mlp import GatedMLP
from engine.layers.rotary import RotaryEmbedding
from engine.ops import reference
from engine.quant.layout import PackedWeight, pack_int32
from tests.tiny_models import make_tiny_checkpoint

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
    x,
    w,
    positions,
    cos_sin_cache,
    kv_cache_layer,
    slot_mapping,
    num_heads,
    head_dim,
    read_next=(),
    row_norm=None,
):
    """quant_qkv_rotary_kv by its contract alone: the KV head count comes from the weight's width."""
    num_kv_heads = (w.out_features // head_dim - num_heads) // 2
    y = reference.quant_linear(x, w, row_norm=row_norm)
    q, k, v = y.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k = reference.apply_rotary(
        q.reshape(-1, num_heads, head_dim), k.reshape(-1, num_kv_heads, head_dim), positions, cos_sin_cache
    )
    reference.write_kv(k, v.reshape(-1, num_kv_heads, head_dim), kv_cache_layer, slot_mapping)
    return q


def stand_in_silu_mul(x, w, read_next=(), row_norm=None):
    return reference.silu_and_mul(reference.quant_linear(x, w, row_norm=row_norm))


def stand_in_add_norm(x, w, residual, norm_weight, norm_index=None, read_next=()):
    """quant_linear_add_norm by its contract alone: h = x W + residual; h * weight in the next
    linear's order, each 32-column tile's sum of h^2, h."""
    h = reference.quant_linear(x, w) + residual
    weighted = (h.float() * norm_weight.float()).to(h.dtype)
    if norm_index is not None:
        placed = torch.empty_like(weighted)
        placed[:, norm_index.long()] = weighted
        weighted = placed
    sumsq_tiles = h.float().pow(2).view(h.shape[0], -1, 32).sum(dim=-1)
    return weighted, sumsq_tiles, h


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
    monkeypatch.setattr(reference, "quant_linear_add_norm", record(stand_in_add_norm))
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


def test_a_model_with_the_norms_in_its_gemvs_equals_the_composed_ops(tmp_path, monkeypatch, fused_stand_ins):
    """The norms left to the GEMVs beside them (engine/layers/norm.py linear_add_norm): in every layer
    but the last (whose output feeds the model's norm and the head) o and down do the add and the
    sums, and the q|k|v and gate|up after them apply the row scale; act-order puts h * weight in
    their input order."""
    folder = make_tiny_checkpoint(tmp_path, "llama", quant={"bits": 4, "group_size": 32, "desc_act": True})
    model = engine.load_model(folder, device="cpu")
    assert not ops.norms_in_gemvs(torch.zeros(1))  # on the CPU the layers run module by module...
    monkeypatch.setattr(ops, "norms_in_gemvs", lambda x: ops._fused_enabled)  # ...here as on a GPU
    assert model.layers[0].post_attention_layernorm.out_index is not None  # act-order folded into the norms
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    ops.set_fused_ops(False)
    try:
        composed = model(ids)
    finally:
        ops.set_fused_ops(True)
    assert fused_stand_ins == []
    fused = model(ids)
    layers = model.config.num_layers
    assert fused_stand_ins.count("stand_in_add_norm") == 2 * (layers - 1)
    assert fused_stand_ins.count("stand_in_qkv") == fused_stand_ins.count("stand_in_silu_mul") == layers
    torch.testing.assert_close(fused, composed, rtol=1e-4, atol=1e-4)
