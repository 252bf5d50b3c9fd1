"""The tensor-core GEMV's L2 prefetch of the weight read after it (csrc/l2_prefetch.cuh): a hint with
no architectural effect, so every op must give the same bits with and without it, for any byte
limit, and leave the prefetched tensors as they were. Bad arguments are refused by name."""

from __future__ import annotations

import pytest
import torch

from engine.layers.rotary import cos_sin_cache
from tests.kernels.gpu import exlsp_ops, generator, gpu, poisoned, random_packed_weight, strips
from tests.kernels.test_fused_epilogues import split_args

pytestmark = gpu

# whole tensors, a limit inside the packed weight, one that ends inside a line
LIMITS = [1 << 30, 300_000, 1000]


def next_weight(seed: int):
    nxt = random_packed_weight(1024, 4096, bits=4, group_size=128, dtype=torch.float16, seed=seed)
    tensors = [nxt.scales, nxt.zeros, nxt.qweight]
    return tensors, [t.clone() for t in tensors]


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("rows,splits", [(1, 1), (16, 3), (33, 1)])
def test_gemv_gives_the_same_bits_with_a_prefetch(limit, rows, splits):
    ops = exlsp_ops()
    k, n = 4096, 1536
    w = random_packed_weight(k, n, bits=4, group_size=128, dtype=torch.float16, bias=True, seed=rows + splits)
    x = torch.randn((rows, k), generator=generator(rows), device="cuda").half()
    residual = torch.randn((rows, n), generator=generator(rows + 1), device="cuda").half()
    tensors, before = next_weight(rows + 2)
    outs = []
    for prefetch in ([], tensors):
        out = poisoned((rows, n), torch.float16)
        ops.quant_gemv_tc(
            x, strips(w), w.scales, w.zeros, w.bias, residual, 128, out, *split_args(ops, k, n, rows, splits),
            prefetch, limit,
        )  # fmt: skip
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(t, b) for t, b in zip(tensors, before, strict=True))


@pytest.mark.parametrize("rows", [1, 16])
def test_fused_epilogues_give_the_same_bits_with_a_prefetch(rows):
    ops = exlsp_ops()
    tensors, before = next_weight(40 + rows)
    gate_up = random_packed_weight(1024, 2 * 896, bits=4, group_size=128, dtype=torch.float16, seed=rows)
    x = torch.randn((rows, 1024), generator=generator(rows + 3), device="cuda").half()
    acts = []
    for prefetch in ([], tensors):
        out = poisoned((rows, 896), torch.float16)
        w = gate_up
        ops.quant_gemv_tc_silu_mul(
            x, strips(w), w.scales, w.zeros, None, 128, out, None, None, 1, prefetch, 1 << 30
        )
        acts.append(out)
    assert torch.equal(acts[0], acts[1])

    hq, hkv, d = 8, 2, 128
    qkv = random_packed_weight(1024, (hq + 2 * hkv) * d, bits=4, group_size=128, dtype=torch.float16, seed=9)
    positions = torch.arange(rows, device="cuda") * 5
    slots = torch.arange(rows, device="cuda") + 3
    table = cos_sin_cache(d, 1e4, None, 1024).cuda()
    results = []
    for prefetch in ([], tensors):
        cache = torch.zeros((2, 8, 16, hkv, d), dtype=torch.float16, device="cuda")
        q = poisoned((rows, hq, d), torch.float16)
        ops.quant_gemv_tc_rotary_kv(
            x, strips(qkv), qkv.scales, qkv.zeros, None, 128, positions, table, cache, slots, q,
            None, None, 1, prefetch, 300_000,
        )  # fmt: skip
        results.append((q, cache))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert all(torch.equal(t, b) for t, b in zip(tensors, before, strict=True))


def test_prefetch_arguments_are_refused_by_name():
    ops = exlsp_ops()
    w = random_packed_weight(512, 256, bits=4, group_size=128, dtype=torch.float16, seed=1)
    x = torch.randn((1, 512), device="cuda").half()
    out = torch.empty((1, 256), device="cuda").half()

    def call(prefetch, limit=1 << 20):
        ops.quant_gemv_tc(
            x, strips(w), w.scales, w.zeros, None, None, 128, out, None, None, 1, prefetch, limit
        )

    with pytest.raises(RuntimeError, match="quant_gemv_tc: l2_prefetch takes at most 4 tensors, got 5"):
        call([w.scales] * 5)
    with pytest.raises(RuntimeError, match="l2_prefetch tensor 1 must be a contiguous CUDA tensor"):
        call([w.scales, w.scales.cpu()])
    with pytest.raises(RuntimeError, match="l2_prefetch tensor 0 must be a contiguous CUDA tensor"):
        call([w.qweight.t()])
    with pytest.raises(RuntimeError, match="l2_prefetch_bytes must be >= 0, got -1"):
        call([w.scales], -1)
