"""RMSNorm with residual, rotary embedding, the K/V slot write and SiLU*mul against the reference ops."""

from __future__ import annotations

import pytest
import torch

from engine.layers.rotary import cos_sin_cache
from engine.ops import reference
from tests.kernels.gpu import DTYPES, REL_TOL, exlsp_ops, generator, gpu, poisoned, rel_err

pytestmark = gpu


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden", [(1, 4096), (7, 1536), (300, 896), (2, 8192), (3, 64)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, tokens, hidden, with_residual):
    gen = generator(tokens * hidden)
    x = torch.randn((tokens, hidden), generator=gen, device="cuda").to(dtype)
    weight = (torch.rand((hidden,), generator=gen, device="cuda") + 0.5).to(dtype)
    residual = (
        torch.randn((tokens, hidden), generator=gen, device="cuda").to(dtype) if with_residual else None
    )
    ref_out, ref_res = reference.rms_norm(
        x.float(), weight.float(), 1e-6, None if residual is None else residual.float()
    )
    out = poisoned(x.shape, dtype)
    new_res = poisoned(x.shape, dtype) if with_residual else None
    exlsp_ops().rms_norm(x, residual, weight, 1e-6, out, new_res)
    assert rel_err(out, ref_out) <= REL_TOL
    if with_residual:
        assert torch.equal(new_res, x + residual)  # the add is rounded once, in the model dtype


def test_rms_norm_in_place_on_its_inputs():
    """The decode step reuses buffers: out may alias x, residual_out may alias residual."""
    x = torch.randn((4, 2048), generator=generator(1), device="cuda").half()
    residual = torch.randn((4, 2048), generator=generator(2), device="cuda").half()
    weight = torch.rand((2048,), generator=generator(3), device="cuda").half()
    ref_out, ref_res = reference.rms_norm(x, weight, 1e-5, residual)
    exlsp_ops().rms_norm(x, residual, weight, 1e-5, x, residual)
    assert torch.equal(residual, ref_res)
    assert rel_err(x, ref_out) <= REL_TOL


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden", [(1, 4096), (3, 8192), (300, 896)])
@pytest.mark.parametrize("in_place", [False, True])
def test_rms_norm_writes_its_output_in_the_next_linears_order(dtype, tokens, hidden, in_place):
    """out_perm (an act-order linear's permutation moved into the norm): the unpermuted output
    gathered by out_perm, bit for bit, the residual in the model's order; also written over x."""
    gen = generator(tokens + hidden)
    x = torch.randn((tokens, hidden), generator=gen, device="cuda").to(dtype)
    residual = torch.randn((tokens, hidden), generator=gen, device="cuda").to(dtype)
    weight = (torch.rand((hidden,), generator=gen, device="cuda") + 0.5).to(dtype)
    perm = torch.randperm(hidden, generator=gen, device="cuda").int()
    ops = exlsp_ops()
    want, want_res = poisoned(x.shape, dtype), poisoned(x.shape, dtype)
    ops.rms_norm(x, residual, weight, 1e-5, want, want_res)
    out, new_res = (
        (x.clone(), residual.clone()) if in_place else (poisoned(x.shape, dtype), poisoned(x.shape, dtype))
    )
    ops.rms_norm(out if in_place else x, new_res if in_place else residual, weight, 1e-5, out, new_res, perm)
    assert torch.equal(out, want.index_select(-1, perm))
    assert torch.equal(new_res, want_res)
    ref, _ = reference.rms_norm(x, weight, 1e-5, residual, perm)
    assert rel_err(out, ref) <= REL_TOL
    with pytest.raises(RuntimeError, match=r"out_perm must be a contiguous int32 \(H,\)"):
        ops.rms_norm(x, None, weight, 1e-5, poisoned(x.shape, dtype), None, perm.long())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hq,hkv,d", [(1, 32, 8, 128), (37, 28, 4, 128), (5, 4, 4, 64)])
def test_rotary_matches_reference(dtype, tokens, hq, hkv, d):
    gen = generator(tokens + hq)
    qkv = torch.randn((tokens, (hq + 2 * hkv) * d), generator=gen, device="cuda").to(dtype)
    q, k, _ = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)  # views of a fused projection, as the model has
    q, k = q.view(tokens, hq, d), k.view(tokens, hkv, d)
    positions = torch.randint(0, 30000, (tokens,), generator=gen, device="cuda")
    table = cos_sin_cache(d, 1e6, None, 32768).cuda()
    ref_q, ref_k = reference.apply_rotary(q.float(), k.float(), positions, table)
    q_out, k_out = poisoned(q.shape, dtype), poisoned(k.shape, dtype)
    before = qkv.clone()
    exlsp_ops().rotary(q, k, positions, table, q_out, k_out)
    assert rel_err(q_out, ref_q) <= REL_TOL and rel_err(k_out, ref_k) <= REL_TOL
    assert torch.equal(qkv, before), "rotary must not modify its inputs"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_write_kv_stores_exact_copies_and_skips_negative_slots(dtype):
    from engine.ops import cuda

    exlsp_ops()
    gen = generator(11)
    cache = torch.randn((2, 12, 16, 2, 64), generator=gen, device="cuda").to(dtype)
    k = torch.randn((5, 2, 64), generator=gen, device="cuda").to(dtype)
    v = torch.randn((5, 2, 64), generator=gen, device="cuda").to(dtype)
    slots = torch.tensor([3, 17, -1, 191, 40], device="cuda")
    expected = cache.clone()
    reference.write_kv(k, v, expected, slots)
    cuda.write_kv(k, v, cache, slots)
    assert torch.equal(cache, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,inter", [(1, 14336), (9, 4864), (64, 8)])
def test_silu_and_mul(dtype, rows, inter):
    x = torch.randn((rows, 2 * inter), generator=generator(rows), device="cuda").to(dtype) * 3
    out = poisoned((rows, inter), dtype)
    exlsp_ops().silu_and_mul(x, out)
    assert rel_err(out, reference.silu_and_mul(x.double())) <= REL_TOL


def test_backend_report_names_cuda_for_every_op():
    from engine import ops

    exlsp_ops()
    assert set(ops.backend_report().values()) == {"cuda"}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,cols", [(1, 4096), (5, 14336), (48, 896)])
def test_gather_columns_equals_index_select(dtype, rows, cols):
    gen = generator(rows + cols)
    x = torch.randn((rows, cols), generator=gen, device="cuda").to(dtype)
    perm = torch.randperm(cols, generator=gen, device="cuda")
    out = poisoned(x.shape, dtype)
    exlsp_ops().gather_columns(x, perm.int(), out)
    assert torch.equal(out, x.index_select(-1, perm))


def test_gather_columns_refuses_bad_arguments_by_name():
    x = torch.randn((2, 64), device="cuda").half()
    perm = torch.randperm(64, device="cuda")
    with pytest.raises(RuntimeError, match=r"perm must be a contiguous int32 \(cols,\) = \(64,\)"):
        exlsp_ops().gather_columns(x, perm, poisoned(x.shape, torch.float16))
    with pytest.raises(RuntimeError, match="out must not alias x"):
        exlsp_ops().gather_columns(x, perm.int(), x)
