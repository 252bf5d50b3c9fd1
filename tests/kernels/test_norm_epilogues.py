"""The RMSNorm done by the GEMVs beside it (engine/layers/norm.py linear_add_norm): the GEMV before the
norm adds the residual, multiplies by the norm's weight and sums h^2 per 32-column tile
(quant_gemv_tc_add_norm); the GEMV after it scales each row of its product by the norm's
rsqrt(mean(h^2) + eps) (row_sumsq on every tensor-core GEMV op).

The producer's h is the unfused path's bit for bit (GEMV output and residual add each rounded to the
model dtype, as quant_gemv_tc and rms_norm round them), and so is h * weight; the consumer computes
(x W) * r + bias where the unfused path computes rmsnorm(h) W + bias, so it is held to the float64
reference instead, and its fused epilogues to the plain GEMV with the same row scale, bit for bit."""

from __future__ import annotations

import pytest
import torch

from engine.layers.rotary import cos_sin_cache
from engine.quant.layout import dense_weight
from tests.kernels.gpu import (
    DTYPES,
    REL_TOL,
    exlsp_ops,
    generator,
    gpu,
    poisoned,
    random_packed_weight,
    rel_err,
    strips,
)
from tests.kernels.test_fused_epilogues import split_args, unfused_gemv

pytestmark = gpu

EPS = 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("rows", [1, 5, 16, 40])
@pytest.mark.parametrize("k,n", [(4096, 4096), (14336, 4096), (512, 1536)], ids=str)
def test_add_norm_equals_gemv_then_the_norms_add(k, n, rows, splits, dtype):
    ops = exlsp_ops()
    seed = k + n + rows + splits
    gen = generator(seed)
    w = random_packed_weight(k, n, bits=4, group_size=128, dtype=dtype, bias=rows % 2 == 1, seed=seed)
    x = torch.randn((rows, k), generator=gen, device="cuda").to(dtype)
    residual = torch.randn((rows, n), generator=gen, device="cuda").to(dtype) * 4
    norm_weight = (torch.rand((n,), generator=gen, device="cuda") + 0.5).to(dtype)
    norm_index = torch.randperm(n, generator=gen, device="cuda").to(torch.int32) if rows != 5 else None

    want_normed, want_h = poisoned((rows, n), dtype), poisoned((rows, n), dtype)
    ops.rms_norm(unfused_gemv(ops, x, w, splits), residual, norm_weight, EPS, want_normed, want_h, None)
    want_weighted = (want_h.float() * norm_weight.float()).to(dtype)
    if norm_index is not None:
        placed = torch.empty_like(want_weighted)
        placed[:, norm_index.long()] = want_weighted
        want_weighted = placed

    weighted, h = poisoned((rows, n), dtype), poisoned((rows, n), dtype)
    sumsq = torch.full((rows, n // 32), float("nan"), device="cuda")
    ops.quant_gemv_tc_add_norm(
        x, strips(w), w.scales, w.zeros, w.bias, 128, residual, norm_weight, norm_index, weighted, h, sumsq,
        *split_args(ops, k, n, rows, splits),
    )  # fmt: skip
    assert torch.equal(h, want_h)
    assert torch.equal(weighted, want_weighted)
    torch.testing.assert_close(sumsq, h.double().pow(2).view(rows, -1, 32).sum(-1).float(), rtol=1e-5, atol=0)


def row_sumsq_of(h: torch.Tensor) -> torch.Tensor:
    return h.float().pow(2).view(h.shape[0], -1, 32).sum(-1).contiguous()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("rows", [1, 7, 16, 33])
@pytest.mark.parametrize("k,n", [(4096, 6144), (1536, 256), (8192, 128)], ids=str)
def test_row_scale_matches_the_norm_then_gemv_in_float64(k, n, rows, splits, dtype):
    ops = exlsp_ops()
    seed = k + n + rows + splits
    gen = generator(seed)
    w = random_packed_weight(k, n, bits=4, group_size=128, dtype=dtype, bias=True, seed=seed)
    h = torch.randn((rows, k), generator=gen, device="cuda").to(dtype) * 3
    norm_weight = (torch.rand((k,), generator=gen, device="cuda") + 0.5).to(dtype)
    weighted = (h.float() * norm_weight.float()).to(dtype)
    sumsq = row_sumsq_of(h)
    out = poisoned((rows, n), dtype)
    ops.quant_gemv_tc(
        weighted, strips(w), w.scales, w.zeros, w.bias, None, 128, out, *split_args(ops, k, n, rows, splits),
        row_sumsq=sumsq, row_eps=EPS,
    )  # fmt: skip
    h64 = h.double()
    normed = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + EPS) * norm_weight.double()
    want = normed @ dense_weight(w, torch.float64) + w.bias.double()
    assert rel_err(out, want) <= REL_TOL


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 16, 40])
def test_fused_epilogues_apply_the_row_scale_as_the_plain_gemv_does(rows, dtype):
    """gate|up's SiLU * up and q|k|v's rotation see the row-scaled y the plain GEMV stores, bit for bit."""
    ops = exlsp_ops()
    gen = generator(rows)
    k, inter = 1024, 768
    hq, hkv, d = 8, 2, 128
    x = torch.randn((rows, k), generator=gen, device="cuda").to(dtype)
    sumsq = row_sumsq_of(torch.randn((rows, k), generator=gen, device="cuda") * 2)
    row = {"row_sumsq": sumsq, "row_eps": EPS}

    def plain(w):
        y = poisoned((rows, w.out_features), dtype)
        ops.quant_gemv_tc(x, strips(w), w.scales, w.zeros, w.bias, None, 128, y, **row)
        return y

    gate_up = random_packed_weight(
        k, 2 * inter, bits=4, group_size=128, dtype=dtype, bias=True, seed=rows + 1
    )
    want = poisoned((rows, inter), dtype)
    ops.silu_and_mul(plain(gate_up), want)
    out = poisoned((rows, inter), dtype)
    ops.quant_gemv_tc_silu_mul(
        x, strips(gate_up), gate_up.scales, gate_up.zeros, gate_up.bias, 128, out, **row
    )
    assert torch.equal(out, want)

    n = (hq + 2 * hkv) * d
    qkv_w = random_packed_weight(k, n, bits=4, group_size=128, dtype=dtype, seed=rows + 2)
    positions = torch.randint(0, 4000, (rows,), generator=gen, device="cuda")
    slots = torch.randperm(8 * 16, generator=gen, device="cuda")[:rows]
    table = cos_sin_cache(d, 5e5, None, 4096).cuda()
    cache = torch.randn((2, 8, 16, hkv, d), generator=gen, device="cuda").to(dtype)
    q, kk, v = plain(qkv_w).split([hq * d, hkv * d, hkv * d], dim=-1)
    want_cache, want_q = cache.clone(), poisoned((rows, hq, d), dtype)
    ops.rotary_write_kv(
        q.view(rows, hq, d), kk.view(rows, hkv, d), v.view(rows, hkv, d), positions, table, want_cache, slots,
        want_q, poisoned((rows, hkv, d), dtype),
    )  # fmt: skip
    got_cache, got_q = cache.clone(), poisoned((rows, hq, d), dtype)
    ops.quant_gemv_tc_rotary_kv(
        x, strips(qkv_w), qkv_w.scales, qkv_w.zeros, None, 128, positions, table, got_cache, slots, got_q, **row
    )  # fmt: skip
    assert torch.equal(got_q, want_q)
    assert torch.equal(got_cache, want_cache)


def test_norm_epilogues_refuse_bad_arguments_by_name():
    ops = exlsp_ops()
    w = random_packed_weight(512, 256, bits=4, group_size=128, dtype=torch.float16, seed=3)
    x = torch.randn((2, 512), generator=generator(4), device="cuda").half()
    out = poisoned((2, 256), torch.float16)
    with pytest.raises(
        RuntimeError, match=r"quant_gemv_tc: row_sumsq must be float32 \(M, K / 32\) = \(2, 16\)"
    ):
        ops.quant_gemv_tc(
            x, strips(w), w.scales, w.zeros, None, None, 128, out,
            row_sumsq=torch.zeros((2, 8), device="cuda"), row_eps=EPS,
        )  # fmt: skip
    residual = torch.zeros((2, 256), dtype=torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match=r"quant_gemv_tc_add_norm: norm_weight must have N = 256 elements"):
        ops.quant_gemv_tc_add_norm(
            x, strips(w), w.scales, w.zeros, None, 128, residual, residual[0, :128], None, out,
            torch.empty_like(out), torch.zeros((2, 8), device="cuda"),
        )  # fmt: skip
    with pytest.raises(
        RuntimeError, match=r"quant_gemv_tc_add_norm: sumsq_tiles must be float32 \(M, N / 32\)"
    ):
        ops.quant_gemv_tc_add_norm(
            x, strips(w), w.scales, w.zeros, None, 128, residual, residual[0], None, out,
            torch.empty_like(out), torch.zeros((2, 4), device="cuda"),
        )  # fmt: skip


def test_the_op_seam_serves_the_norm_in_the_gemvs_and_composes_where_it_cannot():
    """ops.quant_linear_add_norm for a GEMV's rows, None for a prefill's (the layers then compose
    quant_linear and rms_norm); a plain quant_linear given a row scale it cannot fuse (8-bit)
    applies it to its input first."""
    from engine import ops
    from engine.ops import cuda_quant_linear, reference

    exlsp_ops()
    w = cuda_quant_linear.prepare_quant_weight(
        random_packed_weight(512, 256, bits=4, group_size=128, dtype=torch.float16, seed=5)
    )
    gen = generator(6)
    x = torch.randn((3, 512), generator=gen, device="cuda").half()
    residual = torch.randn((3, 256), generator=gen, device="cuda").half()
    norm_weight = torch.ones(256, dtype=torch.float16, device="cuda")
    weighted, sumsq, h = ops.quant_linear_add_norm(x, w, residual, norm_weight)
    normed, want_h = ops.rms_norm(ops.quant_linear(x, w), norm_weight, EPS, residual)
    assert torch.equal(h, want_h) and torch.equal(weighted, want_h)
    assert ops.quant_linear_add_norm(x.repeat(20, 1), w, residual.repeat(20, 1), norm_weight) is None

    w8 = cuda_quant_linear.prepare_quant_weight(
        random_packed_weight(256, 128, bits=8, group_size=64, dtype=torch.float16, seed=7)
    )
    row_norm = reference.RowNorm(sumsq, EPS)
    got = ops.quant_linear(weighted, w8, (), row_norm)
    assert rel_err(got, reference.quant_linear(reference.apply_row_norm(weighted, row_norm), w8)) <= REL_TOL
    assert rel_err(reference.apply_row_norm(weighted, row_norm), normed) <= 1e-3
