"""The tensor-core GEMV's staged input (csrc/gemv_stage.cuh) against the kernels it replaces: the
fused ops' RMSNorm (the rms_norm kernel first) and the act-order gather (index_select first), bit for
bit, for every epilogue, K split and row count a decode step uses; the residual epilogue against
the GEMV's output plus the residual; and the op seam's routing."""

from __future__ import annotations

import pytest
import torch

from engine.layers.rotary import cos_sin_cache
from tests.kernels.gpu import DTYPES, exlsp_ops, generator, gpu, poisoned, random_packed_weight
from tests.kernels.test_fused_epilogues import split_args

pytestmark = gpu

EPS = 1e-5


def norm_inputs(rows: int, k: int, dtype, seed: int):
    gen = generator(seed)
    h = (torch.randn((rows, k), generator=gen, device="cuda") * 3).to(dtype)
    weight = (1 + 0.2 * torch.randn((k,), generator=gen, device="cuda")).to(dtype)
    return h, weight


def rms_norm_kernel(ops, h, weight):
    out = poisoned(h.shape, h.dtype)
    ops.rms_norm(h, None, weight, EPS, out, None)
    return out


def gemv_input_args(weight, perm32):
    args = {}
    if weight is not None:
        args.update(norm_weight=weight, norm_eps=EPS)
    if perm32 is not None:
        args["perm"] = perm32
    return args


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act_order", [False, True], ids=["no-perm", "act-order"])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("k,inter", [(4096, 14336), (1536, 8960), (8192, 1024)], ids=str)
def test_gate_up_with_its_norm_equals_rms_norm_then_the_fused_op(k, inter, rows, splits, act_order, dtype):
    ops = exlsp_ops()
    if not ops.quant_gemv_tc_stage_supports(rows, k, splits, 128, True, act_order):
        pytest.skip(
            "more than a block's shared memory: the op seam normalises first (test_staging_limits_by_name)"
        )
    seed = k + inter + rows + splits + act_order
    w = random_packed_weight(
        k, 2 * inter, bits=4, group_size=128, dtype=dtype, act_order=act_order, bias=rows == 1, seed=seed
    )
    h, norm_weight = norm_inputs(rows, k, dtype, seed + 1)
    x = rms_norm_kernel(ops, h, norm_weight)
    perm32 = None
    if act_order:
        x, perm32 = x.index_select(-1, w.perm), w.perm.int()
    want = poisoned((rows, inter), dtype)
    ops.quant_gemv_tc_silu_mul(
        x, w.qweight, w.scales, w.zeros, w.bias, 128, want, *split_args(ops, k, 2 * inter, rows, splits)
    )
    for weight in (norm_weight, None):  # staged with the norm, and the gather alone
        got = poisoned((rows, inter), dtype)
        ops.quant_gemv_tc_silu_mul(
            h if weight is not None else rms_norm_kernel(ops, h, norm_weight), w.qweight, w.scales, w.zeros,
            w.bias, 128, got, *split_args(ops, k, 2 * inter, rows, splits), **gemv_input_args(weight, perm32),
        )  # fmt: skip
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act_order", [False, True], ids=["no-perm", "act-order"])
@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("shape", [(4096, 32, 8, 128), (1536, 12, 2, 128)], ids=str)
def test_qkv_with_its_norm_equals_rms_norm_then_the_fused_op(shape, rows, splits, act_order, dtype):
    """q and the cache bit for bit."""
    hidden, hq, hkv, d = shape
    ops = exlsp_ops()
    if not ops.quant_gemv_tc_stage_supports(rows, hidden, splits, 128, True, act_order):
        pytest.skip("more than a block's shared memory: the op seam normalises first")
    seed = hidden + rows + splits + act_order
    n = (hq + 2 * hkv) * d
    w = random_packed_weight(
        hidden, n, bits=4, group_size=128, dtype=dtype, act_order=act_order, bias=hidden == 1536, seed=seed
    )
    h, norm_weight = norm_inputs(rows, hidden, dtype, seed + 1)
    gen = generator(seed + 2)
    positions = torch.randint(0, 30000, (rows,), generator=gen, device="cuda")
    slots = torch.randperm(40 * 16, generator=gen, device="cuda")[:rows]
    cache = torch.randn((2, 40, 16, hkv, d), generator=gen, device="cuda").to(dtype)
    table = cos_sin_cache(d, 5e5, None, 32768).cuda()
    x = rms_norm_kernel(ops, h, norm_weight)
    perm32 = None
    if act_order:
        x, perm32 = x.index_select(-1, w.perm), w.perm.int()
    scratch = split_args(ops, hidden, n, rows, splits)
    want_cache, want_q = cache.clone(), poisoned((rows, hq, d), dtype)
    ops.quant_gemv_tc_rotary_kv(
        x, w.qweight, w.scales, w.zeros, w.bias, 128, positions, table, want_cache, slots, want_q, *scratch
    )
    got_cache, got_q = cache.clone(), poisoned((rows, hq, d), dtype)
    ops.quant_gemv_tc_rotary_kv(
        h, w.qweight, w.scales, w.zeros, w.bias, 128, positions, table, got_cache, slots, got_q, *scratch,
        **gemv_input_args(norm_weight, perm32),
    )  # fmt: skip
    assert torch.equal(got_q, want_q)
    assert torch.equal(got_cache, want_cache)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("rows,splits", [(1, 1), (4, 3), (8, 3)])
@pytest.mark.parametrize("k,n", [(14336, 4096), (4096, 4096)], ids=str)
def test_plain_gemv_gathers_by_perm_and_adds_the_residual_as_stored(k, n, rows, splits, residual, dtype):
    """The o and down GEMVs of an act-order checkpoint: x gathered by perm in the kernel equals
    index_select first; the residual epilogue equals the GEMV's stored output plus the residual."""
    ops = exlsp_ops()
    if not ops.quant_gemv_tc_stage_supports(rows, k, splits, 128, False, True):
        pytest.skip("more than a block's shared memory: the op seam gathers first")
    seed = k + rows + splits
    w = random_packed_weight(k, n, bits=4, group_size=128, dtype=dtype, act_order=True, seed=seed)
    x = torch.randn((rows, k), generator=generator(seed + 1), device="cuda").to(dtype)
    r = torch.randn((rows, n), generator=generator(seed + 2), device="cuda").to(dtype) if residual else None
    scratch = split_args(ops, k, n, rows, splits)
    plain = poisoned((rows, n), dtype)
    ops.quant_gemv_tc(
        x.index_select(-1, w.perm), w.qweight, w.scales, w.zeros, None, None, 128, plain, *scratch
    )
    want = plain if r is None else plain + r
    got = poisoned((rows, n), dtype)
    ops.quant_gemv_tc(x, w.qweight, w.scales, w.zeros, None, r, 128, got, *scratch, perm=w.perm.int())
    assert torch.equal(got, want)


def test_staging_limits_by_name():
    ops = exlsp_ops()
    w = random_packed_weight(8192, 1024, bits=4, group_size=128, dtype=torch.float16, seed=3)
    h, norm_weight = norm_inputs(4, 8192, torch.float16, 4)
    out = poisoned((4, 512), torch.float16)
    with pytest.raises(
        RuntimeError, match=r"quant_gemv_tc_silu_mul: a norm or perm takes 1 to 8 rows .* got M=4 K=8192"
    ):
        ops.quant_gemv_tc_silu_mul(
            h, w.qweight, w.scales, w.zeros, None, 128, out, norm_weight=norm_weight, norm_eps=EPS
        )
    with pytest.raises(RuntimeError, match=r"norm_weight must be a contiguous \(K,\) = \(8192,\)"):
        ops.quant_gemv_tc_silu_mul(
            h[:1],
            w.qweight,
            w.scales,
            w.zeros,
            None,
            128,
            out[:1],
            norm_weight=norm_weight[:4096],
            norm_eps=EPS,
        )
    with pytest.raises(RuntimeError, match=r"perm must be a contiguous int32 \(K,\) = \(8192,\)"):
        ops.quant_gemv_tc_silu_mul(
            h[:1], w.qweight, w.scales, w.zeros, None, 128, out[:1], perm=torch.arange(8192, device="cuda")
        )
    assert ops.quant_gemv_tc_stage_supports(2, 8192, 1, 128, True, False)
    assert not ops.quant_gemv_tc_stage_supports(
        2, 8192, 1, 64, True, False
    )  # group sizes of 128 and multiples


@pytest.mark.parametrize("rows", [1, 3, 5, 16])
def test_the_op_seam_stages_where_it_can_and_composes_elsewhere(rows):
    """ops with a norm, an act-order weight and a residual: the same bits staged (up to
    STAGE_MAX_ROWS rows) and composed (the rms_norm kernel, index_select, then the GEMV)."""
    from engine.ops import cuda

    exlsp_ops()
    w = cuda.prepare_quant_weight(
        random_packed_weight(
            4096, 2 * 1024, bits=4, group_size=128, dtype=torch.float16, act_order=True, seed=5
        )
    )
    o = cuda.prepare_quant_weight(
        random_packed_weight(1024, 4096, bits=4, group_size=128, dtype=torch.float16, act_order=True, seed=6)
    )
    h, norm_weight = norm_inputs(rows, 4096, torch.float16, 7)
    assert cuda.fuses_norms(h) == (rows <= cuda.STAGE_MAX_ROWS)
    results = []
    for staged in (True, False):
        cuda.set_gemv_staging(norm=staged, perm=staged)
        try:
            act = cuda.quant_linear_silu_mul(h, w, (), (norm_weight, EPS))
            results.append((act, cuda.quant_linear(act, o, (), h)))
        finally:
            cuda.set_gemv_staging()
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
