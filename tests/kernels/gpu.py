"""Shared pieces of the kernel tests: the GPU marker, the loaded library, random inputs, the error metric.

Every kernel test draws fresh random inputs (a per-test seed, never zeros), poisons outputs with NaN
before the kernel writes them, and compares against a float32/float64 reference by
||out - ref|| / ||ref||.
"""

from __future__ import annotations

import pytest
import torch

from engine.quant.layout import PackedWeight, pack_int32, to_column_strips

gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
REL_TOL = 1e-2  # fp16/bf16 operands against a float32/64 reference
DTYPES = [torch.float16, torch.bfloat16]


def exlsp_ops():
    """torch.ops.exlsp, built on first use; a failed build fails the test (it never skips on a GPU)."""
    from engine.ops import cuda

    assert cuda.ensure_loaded(), f"kernels failed to build: {cuda.load_error()}"
    return torch.ops.exlsp


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "output holds NaN/inf: some elements were not written"
    return ((out - ref).norm() / ref.norm()).item()


def poisoned(shape, dtype, device="cuda") -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def random_packed_weight(
    in_features: int,
    out_features: int,
    *,
    bits: int,
    group_size: int,
    dtype: torch.dtype,
    act_order: bool = False,
    bias: bool = False,
    seed: int = 0,
) -> PackedWeight:
    """A PackedWeight on the GPU with uniform random codes, positive scales near 1/(2^bits) and integer
    zeros, so dequantized weights are O(1) like real checkpoints'."""
    gen = generator(seed)
    k, n = in_features, out_features
    q = torch.randint(0, 2**bits, (k, n), generator=gen, device="cuda", dtype=torch.int32)
    num_groups = k // group_size
    scales = (torch.rand((num_groups, n), generator=gen, device="cuda") + 0.5) / 2**bits
    zeros = torch.randint(0, 2**bits, (num_groups, n), generator=gen, device="cuda").float()
    perm = torch.randperm(k, generator=gen, device="cuda") if act_order else None
    b = torch.randn((n,), generator=gen, device="cuda").to(dtype) if bias else None
    return PackedWeight(
        bits, group_size, k, n, pack_int32(q, bits), scales.to(dtype), zeros.to(dtype), perm, b
    )


def strips(w: PackedWeight) -> torch.Tensor:
    """w's qweight in column strips, the tensor-core GEMV's layout (engine/quant/layout.py)."""
    return to_column_strips(w.qweight)
