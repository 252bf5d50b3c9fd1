"""The pure-torch reference ops against independent formulations (transformers' own helpers where one
exists), and the ops seam's dispatch report."""

from __future__ import annotations

import pytest
import torch

from engine import ops
from engine.layers.rotary import cos_sin_cache
from engine.quant.layout import PackedWeight, dense_weight, pack_int32


def test_rms_norm_without_and_with_residual():
    gen = torch.Generator().manual_seed(0)
    x, residual, weight = (torch.randn(5, 8, generator=gen) for _ in range(3))
    out, new_residual = ops.rms_norm(x, weight, 1e-6)
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * weight
    torch.testing.assert_close(out, expected)
    assert new_residual is x
    out, new_residual = ops.rms_norm(x, weight, 1e-6, residual)
    s = x + residual
    torch.testing.assert_close(new_residual, s)
    torch.testing.assert_close(out, s / torch.sqrt((s * s).mean(-1, keepdim=True) + 1e-6) * weight)


def test_apply_rotary_matches_transformers_rotate_half():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    gen = torch.Generator().manual_seed(0)
    head_dim, theta = 16, 10000.0
    q, k = torch.randn(6, 4, head_dim, generator=gen), torch.randn(6, 2, head_dim, generator=gen)
    positions = torch.tensor([0, 1, 2, 7, 30, 99])
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = positions.float()[:, None] * inv_freq  # (T, D/2)
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()  # (T, D)
    q_ref, k_ref = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None]
    )

    q_out, k_out = ops.apply_rotary(q, k, positions, cos_sin_cache(head_dim, theta, None, 128))

    torch.testing.assert_close(q_out, q_ref[0].transpose(0, 1))  # (1, H, T, D) -> (T, H, D)
    torch.testing.assert_close(k_out, k_ref[0].transpose(0, 1))


def test_silu_and_mul_splits_gate_then_up():
    x = torch.tensor([[1.0, -2.0, 3.0, 4.0]])  # gate [1, -2], up [3, 4]
    expected = torch.nn.functional.silu(torch.tensor([[1.0, -2.0]])) * torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(ops.silu_and_mul(x), expected)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_quant_linear_equals_matmul_with_the_dense_weight(bits, act_order):
    gen = torch.Generator().manual_seed(bits)
    k, n, group_size = 64, 24, 16
    q = torch.randint(0, 1 << bits, (k, n), generator=gen)
    w = PackedWeight(
        bits=bits,
        group_size=group_size,
        in_features=k,
        out_features=n,
        qweight=pack_int32(q, bits),
        scales=torch.rand(k // group_size, n, generator=gen) * 0.01,
        zeros=torch.randint(0, 1 << bits, (k // group_size, n), generator=gen).float(),
        perm=torch.randperm(k, generator=gen) if act_order else None,
        bias=torch.randn(n, generator=gen),
    )
    x = torch.randn(3, k, generator=gen)
    torch.testing.assert_close(ops.quant_linear(x, w), x @ dense_weight(w) + w.bias, rtol=1e-5, atol=1e-5)


def test_backend_report_names_every_op():
    report = ops.backend_report()
    assert set(report) == set(ops.OP_NAMES)
    assert set(report.values()) <= {"cuda", "reference"}
    if not torch.cuda.is_available():
        assert set(report.values()) == {"reference"}


def test_prepared_cpu_weight_dequantizes_once_and_computes_the_same():
    gen = torch.Generator().manual_seed(3)
    k, n = 64, 16
    w = PackedWeight(
        bits=4,
        group_size=32,
        in_features=k,
        out_features=n,
        qweight=pack_int32(torch.randint(0, 16, (k, n), generator=gen), 4),
        scales=torch.rand(2, n, generator=gen),
        zeros=torch.full((2, n), 8.0),
        perm=torch.randperm(k, generator=gen),
        bias=None,
    )
    prepared = ops.prepare_quant_weight(w)
    assert ops.prepare_quant_weight(prepared) is prepared
    x = torch.randn(5, k, generator=gen)
    torch.testing.assert_close(ops.quant_linear(x, prepared), ops.quant_linear(x, w))
