"""The tensor-core GEMV with a fused epilogue against the unfused kernels it replaces: gate|up with
SiLU * up (silu_and_mul), q|k|v with the rotation and the K/V write (rotary_write_kv). The fused
kernel rounds y to the model dtype where the unfused GEMV stores it and then runs the same
element-wise code (csrc/elementwise_math.cuh), so the two paths must agree bit for bit; the unfused
path is itself tested against float64 (test_quant_gemv.py, test_elementwise.py)."""

from __future__ import annotations

import pytest
import torch

from engine.layers.rotary import cos_sin_cache
from tests.kernels.gpu import DTYPES, exlsp_ops, generator, gpu, poisoned, random_packed_weight, strips

pytestmark = gpu


def split_args(ops, k: int, n: int, rows: int, splits: int):
    """(partials, counters, splits) scratch for a K split, NaN-poisoned partials; the op's defaults
    (None, None, 1) for one slice."""
    if splits == 1:
        return None, None, 1
    launched = ops.quant_gemv_tc_splits(k, splits)
    partials = torch.full((launched, min(rows, 16), n), float("nan"), device="cuda")
    return partials, torch.zeros(n // 32, dtype=torch.int32, device="cuda"), splits


def unfused_gemv(ops, x, w, splits):
    out = poisoned((x.shape[0], w.out_features), x.dtype)
    ops.quant_gemv_tc(
        x, strips(w), w.scales, w.zeros, w.bias, None, w.group_size, out,
        *split_args(ops, w.in_features, w.out_features, x.shape[0], splits),
    )  # fmt: skip
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("rows", [1, 5, 16, 40])
@pytest.mark.parametrize("k,inter", [(4096, 14336), (512, 96), (1536, 8960)], ids=str)
def test_gate_up_silu_mul_equals_gemv_then_silu_and_mul(k, inter, rows, splits, dtype):
    ops = exlsp_ops()
    seed = k + inter + rows + splits
    w = random_packed_weight(k, 2 * inter, bits=4, group_size=128, dtype=dtype, bias=rows % 2 == 1, seed=seed)
    x = torch.randn((rows, k), generator=generator(seed + 1), device="cuda").to(dtype)
    want = poisoned((rows, inter), dtype)
    ops.silu_and_mul(unfused_gemv(ops, x, w, splits), want)
    out = poisoned((rows, inter), dtype)
    ops.quant_gemv_tc_silu_mul(
        x, strips(w), w.scales, w.zeros, w.bias, 128, out, *split_args(ops, k, 2 * inter, rows, splits)
    )
    assert torch.equal(out, want)


# (hidden, Hq, Hkv, D): Llama-3-8B, Qwen2.5-Coder-1.5B (q|k|v bias), a head_dim of 64
QKV_SHAPES = [(4096, 32, 8, 128), (1536, 12, 2, 128), (512, 8, 2, 64)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("rows", [1, 7, 16, 33])
@pytest.mark.parametrize("shape", QKV_SHAPES, ids=str)
def test_qkv_rotary_kv_equals_gemv_then_rotary_write_kv(shape, rows, splits, dtype):
    """q bit for bit, the cache bit for bit (slots written as the unfused kernel writes them, a
    negative slot skipped, every other slot untouched), with a float32 and a model-dtype table."""
    hidden, hq, hkv, d = shape
    ops = exlsp_ops()
    seed = hidden + rows * 3 + splits
    gen = generator(seed)
    n = (hq + 2 * hkv) * d
    w = random_packed_weight(hidden, n, bits=4, group_size=128, dtype=dtype, bias=hidden == 1536, seed=seed)
    x = torch.randn((rows, hidden), generator=gen, device="cuda").to(dtype)
    positions = torch.randint(0, 30000, (rows,), generator=gen, device="cuda")
    slots = torch.randperm(40 * 16, generator=gen, device="cuda")[:rows]
    slots[rows // 2] = -1  # a padding row
    cache = torch.randn((2, 40, 16, hkv, d), generator=gen, device="cuda").to(dtype)
    for table in (
        cos_sin_cache(d, 5e5, None, 32768).cuda(),
        cos_sin_cache(d, 1e4, None, 32768).cuda().to(dtype),
    ):
        qkv = unfused_gemv(ops, x, w, splits)
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        q, k, v = q.view(rows, hq, d), k.view(rows, hkv, d), v.view(rows, hkv, d)
        want_cache = cache.clone()
        want_q, k_out = poisoned(q.shape, dtype), poisoned(k.shape, dtype)
        ops.rotary_write_kv(q, k, v, positions, table, want_cache, slots, want_q, k_out)

        got_cache = cache.clone()
        got_q = poisoned((rows, hq, d), dtype)
        ops.quant_gemv_tc_rotary_kv(
            x, strips(w), w.scales, w.zeros, w.bias, 128, positions, table, got_cache, slots, got_q,
            *split_args(ops, hidden, n, rows, splits),
        )  # fmt: skip
        assert torch.equal(got_q, want_q)
        assert torch.equal(got_cache, want_cache)


def test_fused_epilogues_refuse_mismatched_shapes_by_name():
    ops = exlsp_ops()
    w = random_packed_weight(512, 6 * 64, bits=4, group_size=128, dtype=torch.float16, seed=5)
    x = torch.randn((2, 512), generator=generator(6), device="cuda").half()
    with pytest.raises(RuntimeError, match=r"quant_gemv_tc_silu_mul: out must be \(M, N / 2\) = \(2, 192\)"):
        ops.quant_gemv_tc_silu_mul(
            x, strips(w), w.scales, w.zeros, None, 128, poisoned((2, 384), torch.float16)
        )
    cache = torch.zeros((2, 4, 16, 2, 64), dtype=torch.float16, device="cuda")
    positions = torch.zeros(2, dtype=torch.int64, device="cuda")
    slots = torch.zeros(2, dtype=torch.int64, device="cuda")
    table = cos_sin_cache(64, 1e4, None, 64).cuda()
    with pytest.raises(RuntimeError, match=r"columns are not q \| k \| v heads of D = 64 .* with Hq = 3"):
        ops.quant_gemv_tc_rotary_kv(
            x, strips(w), w.scales, w.zeros, None, 128, positions, table, cache, slots,
            poisoned((2, 3, 64), torch.float16),
        )  # fmt: skip
    w48 = random_packed_weight(512, 6 * 48, bits=4, group_size=128, dtype=torch.float16, seed=7)
    with pytest.raises(RuntimeError, match=r"D = 48 \(a multiple of 32\)"):
        ops.quant_gemv_tc_rotary_kv(
            x, strips(w48), w48.scales, w48.zeros, None, 128, positions, cos_sin_cache(48, 1e4, None, 64).cuda(),
            torch.zeros((2, 4, 16, 1, 48), dtype=torch.float16, device="cuda"), slots,
            poisoned((2, 4, 48), torch.float16),
        )  # fmt: skip


def test_ops_compose_the_unfused_kernels_where_no_fused_kernel_serves():
    """The op seam returns None for a call the fused kernels do not take (more rows than a GEMV, a
    head_dim that is not a multiple of 32) and when fusion is switched off; the layers then compose."""
    from engine import ops
    from engine.ops import cuda_quant_linear

    exlsp_ops()
    w = cuda_quant_linear.prepare_quant_weight(
        random_packed_weight(512, 192, bits=4, group_size=128, dtype=torch.float16, seed=8)
    )
    x = torch.randn((2, 512), generator=generator(9), device="cuda").half()
    assert ops.quant_linear_silu_mul(x, w).shape == (2, 96)
    assert ops.quant_linear_silu_mul(x.repeat(40, 1), w) is None  # 80 rows: the prefill GEMM's
    ops.set_fused_ops(False)
    try:
        assert ops.quant_linear_silu_mul(x, w) is None
    finally:
        ops.set_fused_ops(True)
    cache = torch.zeros((2, 4, 16, 1, 48), dtype=torch.float16, device="cuda")
    zeros = torch.zeros(2, dtype=torch.int64, device="cuda")
    table = cos_sin_cache(48, 1e4, None, 64).cuda()
    w48 = cuda_quant_linear.prepare_quant_weight(
        random_packed_weight(512, 4 * 48, bits=4, group_size=128, dtype=torch.float16)
    )
    assert ops.quant_qkv_rotary_kv(x, w48, zeros, table, cache, zeros, 2, 48) is None
