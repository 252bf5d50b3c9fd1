"""Quantized GEMV (1-16 rows) and the dequantize kernel of the prefill GEMM, against float64 math."""

from __future__ import annotations

import pytest
import torch

from engine.quant.layout import dense_weight, dequantize
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

pytestmark = gpu

# (K, N, group_size): real layer shapes (4096 x 14336 is Llama-3-8B's gate/up), a single group, a narrow
# layer that takes the smallest column tile, and N not a multiple of the widest tile.
SHAPES = [(4096, 14336, 128), (4096, 1024, 128), (512, 4100, 512), (1024, 96, 32), (14336, 4096, 128)]


def reference(x: torch.Tensor, w) -> torch.Tensor:
    """y = x @ W + bias in float64, W in the original input order (act-order undone)."""
    if getattr(w, "strips", False):
        w = w.canonical()  # prepared for the tensor-core GEMV: qweight in column strips
    y = x.double() @ dense_weight(w, torch.float64)
    return y if w.bias is None else y + w.bias.double()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 13])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemv_matches_float64_reference(dtype, bits, rows, shape):
    k, n, group_size = shape
    seed = k * 31 + n * 7 + rows * 3 + bits + (dtype == torch.bfloat16)
    w = random_packed_weight(
        k, n, bits=bits, group_size=group_size, dtype=dtype, bias=rows % 2 == 1, seed=seed
    )
    x = torch.randn((rows, k), generator=generator(seed + 1), device="cuda").to(dtype)
    out = poisoned((rows, n), dtype)
    exlsp_ops().quant_gemv(x, w.qweight, w.scales, w.zeros, w.bias, None, bits, group_size, out)
    assert rel_err(out, reference(x, w)) <= REL_TOL


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemv_residual_epilogue_adds_the_residual(dtype):
    w = random_packed_weight(1024, 512, bits=4, group_size=128, dtype=dtype, seed=3)
    x = torch.randn((3, 1024), generator=generator(4), device="cuda").to(dtype)
    residual = torch.randn((3, 512), generator=generator(5), device="cuda").to(dtype)
    out = poisoned((3, 512), dtype)
    exlsp_ops().quant_gemv(x, w.qweight, w.scales, w.zeros, None, residual, 4, 128, out)
    assert rel_err(out, reference(x, w) + residual.double()) <= REL_TOL


@pytest.mark.parametrize("rows", [1, 8, 16, 40])
def test_quant_linear_act_order_permutes_the_activation(rows):
    """The public op: act-order weight, GEMV for few rows, dequantize + matmul for many."""
    from engine.ops import cuda_quant_linear

    exlsp_ops()
    w = random_packed_weight(
        2048, 768, bits=4, group_size=128, dtype=torch.float16, act_order=True, bias=True, seed=9
    )
    x = torch.randn((rows, 2048), generator=generator(10), device="cuda").half()
    assert rel_err(cuda_quant_linear.quant_linear(x, w), reference(x, w)) <= REL_TOL


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [4, 8])
def test_dequantize_equals_the_layout_reference(dtype, bits):
    w = random_packed_weight(1024, 384, bits=bits, group_size=64, dtype=dtype, seed=bits)
    out = poisoned((1024, 384), dtype)
    exlsp_ops().dequantize(w.qweight, w.scales, w.zeros, bits, 64, out)
    # integer codes and zeros: (q - z) is exact, one rounding of the product, as in the reference
    assert torch.equal(out, dequantize(w))


def test_dequantize_reads_a_column_slice_in_place():
    """N-slices of a wider weight (no copy): what a large prefill GEMM dequantizes one at a time."""
    w = random_packed_weight(512, 1280, bits=4, group_size=128, dtype=torch.float16, seed=11)
    for n0, n1 in ((0, 256), (256, 1024), (1024, 1280)):
        out = poisoned((512, n1 - n0), torch.float16)
        exlsp_ops().dequantize(w.qweight[:, n0:n1], w.scales[:, n0:n1], w.zeros[:, n0:n1], 4, 128, out)
        assert torch.equal(out, dequantize(w)[:, n0:n1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_reads_column_strips_whole_and_by_runs_of_strips(dtype):
    """The tensor-core GEMV's layout (a prefill of a weight prepared for it): the same bits as the
    canonical weight, for the whole weight and for N-slices of whole strips (no copy)."""
    w = random_packed_weight(512, 1280, bits=4, group_size=128, dtype=dtype, seed=15)
    codes = strips(w)
    for n0, n1 in ((0, 1280), (0, 256), (256, 1024), (1024, 1280)):
        out = poisoned((512, n1 - n0), dtype)
        exlsp_ops().dequantize(codes[n0 // 16 : n1 // 16], w.scales[:, n0:n1], w.zeros[:, n0:n1], 4, 128, out)
        assert torch.equal(out, dequantize(w)[:, n0:n1])


def test_tensor_core_gemv_rejects_the_canonical_layout():
    w = random_packed_weight(256, 64, bits=4, group_size=128, dtype=torch.float16)
    x = torch.randn((1, 256), device="cuda").half()
    out = torch.empty((1, 64), device="cuda").half()
    with pytest.raises(
        RuntimeError, match=r"quant_gemv_tc: qweight must be in column strips.*got \(32, 64\)"
    ):
        exlsp_ops().quant_gemv_tc(x, w.qweight, w.scales, w.zeros, None, None, 128, out)
    with pytest.raises(RuntimeError, match="quant_gemv: qweight must be the canonical"):
        exlsp_ops().quant_gemv(x, strips(w), w.scales, w.zeros, None, None, 4, 128, out)


def test_quant_linear_module_keeps_one_copy_of_its_weight_on_the_gpu():
    """QuantLinear on CUDA: the strips replace the canonical buffer (one copy on the device), decode
    and prefill rows give the reference's answer, and back on the CPU the buffer is canonical again."""
    from engine.layers.linear import QuantLinear

    exlsp_ops()
    w = random_packed_weight(1024, 512, bits=4, group_size=128, dtype=torch.float16, bias=True, seed=23)
    canonical = w.qweight.clone()
    linear = QuantLinear(w)
    for rows in (1, 16, 64):  # the tensor-core GEMV, then dequantize + GEMM (strips read by both)
        x = torch.randn((rows, 1024), generator=generator(rows), device="cuda").half()
        assert rel_err(linear(x), reference(x, w)) <= REL_TOL
    assert linear.qweight.shape == (32, 128, 16)
    assert linear.qweight.data_ptr() == linear.packed().qweight.data_ptr()
    linear.cpu()
    assert torch.equal(linear.qweight, canonical.cpu())
    linear.cuda()  # and prepared again from the canonical words
    x = torch.randn((1, 1024), generator=generator(2), device="cuda").half()
    assert rel_err(linear(x), reference(x, w)) <= REL_TOL and linear.qweight.dim() == 3


def test_dequantize_rejects_scales_without_a_unit_column_stride():
    w = random_packed_weight(512, 256, bits=4, group_size=128, dtype=torch.float16, seed=12)
    out = torch.empty((512, 128), dtype=torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match="exlsp::dequantize: scales must be"):
        exlsp_ops().dequantize(
            w.qweight[:, :128], w.scales[:, :128].t().contiguous().t(), w.zeros[:, :128], 4, 128, out
        )


@pytest.mark.parametrize("prepared", [False, True], ids=["canonical", "prepared"])
@pytest.mark.parametrize("bits", [4, 8])
def test_quant_linear_prefill_in_column_slices_equals_one_gemm(monkeypatch, bits, prepared):
    """A prefill whose dequantized weight would exceed the scratch bound is computed in N-slices:
    the same product, column block by column block (and the bias once). Prepared, a 4-bit weight is
    in column strips, sliced by runs of whole strips."""
    from engine.ops import cuda_quant_linear

    exlsp_ops()
    w = random_packed_weight(1024, 1792, bits=bits, group_size=128, dtype=torch.float16, bias=True, seed=13)
    if prepared:
        w = cuda_quant_linear.prepare_quant_weight(w)
        assert w.strips is (bits == 4)
    x = torch.randn((64, 1024), generator=generator(14), device="cuda").half()
    whole = cuda_quant_linear.quant_linear(x, w)
    monkeypatch.setattr(cuda_quant_linear, "DEQUANT_SCRATCH_ELEMENTS", 1024 * 512)
    assert cuda_quant_linear.dequant_slice_columns(1024, 1792) == 512
    sliced = cuda_quant_linear.quant_linear(x, w)  # slices of 512, 512, 512, 256 columns
    assert rel_err(sliced, whole) <= 1e-3  # cuBLAS may pick another kernel for a narrower N
    assert rel_err(sliced, reference(x, w)) <= REL_TOL


def test_gemv_rejects_float32_with_a_clear_message():
    w = random_packed_weight(256, 64, bits=4, group_size=128, dtype=torch.float16)
    x = torch.randn((1, 256), device="cuda")
    out = torch.empty((1, 64), device="cuda")
    with pytest.raises(RuntimeError, match="exlsp::quant_gemv: expected float16 or bfloat16"):
        exlsp_ops().quant_gemv(x, w.qweight, w.scales, w.zeros, None, None, 4, 128, out)


def test_gemv_rejects_a_wrong_output_shape():
    w = random_packed_weight(256, 64, bits=4, group_size=128, dtype=torch.float16)
    x = torch.randn((2, 256), device="cuda").half()
    out = torch.empty((2, 60), device="cuda").half()
    with pytest.raises(RuntimeError, match=r"out must be \(M, N\) = \(2, 64\)"):
        exlsp_ops().quant_gemv(x, w.qweight, w.scales, w.zeros, None, None, 4, 128, out)


TC_SHAPES = [(4096, 14336, 128), (4096, 1024, 128), (14336, 4096, 128), (512, 96, 32), (256, 4096, 256)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 16, 40])
@pytest.mark.parametrize("shape", TC_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tensor_core_gemv_matches_float64_reference(dtype, rows, shape):
    k, n, group_size = shape
    seed = k * 13 + n * 5 + rows + (dtype == torch.bfloat16)
    w = random_packed_weight(k, n, bits=4, group_size=group_size, dtype=dtype, bias=rows % 2 == 0, seed=seed)
    x = torch.randn((rows, k), generator=generator(seed + 1), device="cuda").to(dtype)
    out = poisoned((rows, n), dtype)
    exlsp_ops().quant_gemv_tc(x, strips(w), w.scales, w.zeros, w.bias, None, group_size, out)
    assert rel_err(out, reference(x, w)) <= REL_TOL


@pytest.mark.parametrize("fractional_zeros", [False, True])
def test_prepared_weight_routes_by_zero_values(fractional_zeros):
    """Integer zeros take the tensor-core kernel; fractional ones (exact only in float32) the CUDA-core one.
    Both give the reference's answer."""
    from engine.ops import cuda_quant_linear

    exlsp_ops()
    w = random_packed_weight(1024, 512, bits=4, group_size=128, dtype=torch.float16, seed=21)
    if fractional_zeros:
        w.zeros = w.zeros + 0.25
    prepared = cuda_quant_linear.prepare_quant_weight(w)
    assert prepared.integer_zeros is not fractional_zeros
    assert prepared.strips is not fractional_zeros  # the tensor-core GEMV's layout only where it serves
    assert prepared.qweight.shape == ((32, 128, 16) if prepared.strips else (128, 512))
    x = torch.randn((4, 1024), generator=generator(22), device="cuda").half()
    assert rel_err(cuda_quant_linear.quant_linear(x, prepared), reference(x, prepared)) <= REL_TOL


# (warps per block, batches of 8, rolling loads)
TUNINGS = [
    (0, True, True),
    (0, False, True),
    (2, True, True),
    (3, False, True),
    (5, True, True),
    (0, True, False),
]


@pytest.mark.parametrize("tuning", TUNINGS, ids=str)
@pytest.mark.parametrize("rows", [1, 11])
@pytest.mark.parametrize(
    "shape", [(4096, 14336, 128), (1024, 96, 32), (640, 256, 64), (4352, 512, 256), (384, 64, 32)], ids=str
)
def test_tensor_core_gemv_any_block_size_matches_reference(shape, rows, tuning):
    """Any warps per block, batches of 8 or 4 chunks in sub-batches of 8, 4, 2 or 1 (group 256, 128,
    64, 32), K slices that split unevenly over the warps (640: 20 chunks) or leave some warps without
    a batch (384: 3 batches over 8), the loads rolling or batch by batch."""
    k, n, group_size = shape
    ops = exlsp_ops()
    seed = k + 3 * n + rows
    w = random_packed_weight(k, n, bits=4, group_size=group_size, dtype=torch.float16, bias=True, seed=seed)
    x = torch.randn((rows, k), generator=generator(seed + 1), device="cuda").half()
    want = reference(x, w)
    ops.set_quant_gemv_tc_tuning(*tuning)
    try:
        for splits in (1, 3):
            launched = ops.quant_gemv_tc_splits(k, splits)
            partials = torch.full((launched, min(rows, 16), n), float("nan"), device="cuda")
            counters = torch.zeros(n // 32, dtype=torch.int32, device="cuda")
            out = poisoned((rows, n), torch.float16)
            ops.quant_gemv_tc(
                x, strips(w), w.scales, w.zeros, w.bias, None, group_size, out, partials, counters, splits
            )
            assert rel_err(out, want) <= REL_TOL, (splits, launched)
    finally:
        ops.set_quant_gemv_tc_tuning(0, True, True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize(
    "shape", [(4096, 14336, 128), (14336, 4096, 128), (4352, 512, 256), (640, 256, 64)], ids=str
)
def test_rolling_loads_give_the_bits_of_loads_batch_by_batch(shape, rows, dtype):
    """The rolling loads change when each weight vector is requested, not what is computed."""
    if dtype == torch.bfloat16 and rows <= 8:
        pytest.skip("bf16 loads batch by batch at one row tile: nothing to compare")
    k, n, group_size = shape
    ops = exlsp_ops()
    seed = k + n + rows
    w = random_packed_weight(k, n, bits=4, group_size=group_size, dtype=dtype, bias=True, seed=seed)
    x = torch.randn((rows, k), generator=generator(seed + 1), device="cuda").to(dtype)
    outs = []
    try:
        for rolling in (True, False):
            ops.set_quant_gemv_tc_tuning(0, True, rolling)
            out = poisoned((rows, n), dtype)
            ops.quant_gemv_tc(x, strips(w), w.scales, w.zeros, w.bias, None, group_size, out)
            outs.append(out)
    finally:
        ops.set_quant_gemv_tc_tuning(0, True, True)
    assert torch.equal(outs[0], outs[1])


def test_tensor_core_gemv_needs_whole_batches_of_k_and_quant_linear_routes_the_rest():
    """K = 96 is 3 chunks of 32, no whole batch of 4: the tensor-core op refuses it by name, and
    quant_linear serves it with the CUDA-core kernel."""
    from engine.ops import cuda_quant_linear

    ops = exlsp_ops()
    w = random_packed_weight(96, 64, bits=4, group_size=32, dtype=torch.float16, bias=True, seed=9)
    x = torch.randn((3, 96), generator=generator(10), device="cuda").half()
    out = torch.empty((3, 64), device="cuda").half()
    with pytest.raises(RuntimeError, match="needs K a multiple of 128, .* got K=96 N=64 group_size=32"):
        ops.quant_gemv_tc(x, strips(w), w.scales, w.zeros, w.bias, None, 32, out)
    prepared = cuda_quant_linear.prepare_quant_weight(w)
    assert prepared.integer_zeros and not cuda_quant_linear._tc_ok(prepared)
    assert rel_err(cuda_quant_linear.quant_linear(x, prepared), reference(x, prepared)) <= REL_TOL


def test_tensor_core_gemv_rejects_a_bad_block_size():
    with pytest.raises(RuntimeError, match=r"block_warps must be 0 \(the launcher chooses\) or 2..8, got 9"):
        exlsp_ops().set_quant_gemv_tc_tuning(9, True)


@pytest.mark.parametrize("pdl", [0, 1])
@pytest.mark.parametrize("splits", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("rows", [1, 9, 40])
@pytest.mark.parametrize("shape", [(4096, 14336, 128), (14336, 4096, 128), (512, 96, 32)], ids=str)
def test_tensor_core_gemv_split_k_matches_reference_and_resets_its_counters(shape, rows, splits, pdl):
    """K split over several blocks per column tile: same answer (bias and residual epilogue in the
    block that finishes the tile), bitwise the same on a second call, and counters left at zero."""
    k, n, group_size = shape
    ops = exlsp_ops()
    seed = k + n + rows * 7 + splits
    w = random_packed_weight(k, n, bits=4, group_size=group_size, dtype=torch.float16, bias=True, seed=seed)
    x = torch.randn((rows, k), generator=generator(seed + 1), device="cuda").half()
    residual = torch.randn((rows, n), generator=generator(seed + 2), device="cuda").half()
    launched = ops.quant_gemv_tc_splits(k, splits)
    assert launched == 1 if splits == 1 else 2 <= launched <= splits
    partials = torch.full((launched, min(rows, 16), n), float("nan"), device="cuda")
    counters = torch.zeros(n // 32 + 5, dtype=torch.int32, device="cuda")
    out, again = poisoned((rows, n), torch.float16), poisoned((rows, n), torch.float16)
    ops.set_launch_pdl(pdl)
    try:
        ops.quant_gemv_tc(
            x, strips(w), w.scales, w.zeros, w.bias, residual, group_size, out, partials, counters, splits
        )
        ops.quant_gemv_tc(
            x, strips(w), w.scales, w.zeros, w.bias, residual, group_size, again, partials, counters, splits
        )
    finally:
        ops.set_launch_pdl(-1)
    assert rel_err(out, reference(x, w) + residual.double()) <= REL_TOL
    assert torch.equal(out, again)
    assert not counters.any()


def test_tensor_core_gemv_split_k_needs_its_buffers():
    w = random_packed_weight(1024, 512, bits=4, group_size=128, dtype=torch.float16)
    x = torch.randn((1, 1024), device="cuda").half()
    out = torch.empty((1, 512), device="cuda").half()
    with pytest.raises(RuntimeError, match="splits > 1 needs partials and counters"):
        exlsp_ops().quant_gemv_tc(x, strips(w), w.scales, w.zeros, None, None, 128, out, None, None, 4)
    small = torch.empty((1, 1, 512), device="cuda")
    counters = torch.zeros(16, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match="partials must be contiguous float32 with at least 2048 elements"):
        exlsp_ops().quant_gemv_tc(x, strips(w), w.scales, w.zeros, None, None, 128, out, small, counters, 4)


def test_quant_linear_splits_k_for_the_decode_shapes_and_matches_reference():
    """The public op with the engine's own choice of split (counters created by prepare)."""
    from engine.ops import cuda_common, cuda_quant_linear

    exlsp_ops()
    w = cuda_quant_linear.prepare_quant_weight(
        random_packed_weight(14336, 4096, bits=4, group_size=128, dtype=torch.float16, seed=5)
    )
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert cuda_quant_linear.gemv_splits(14336, 4096, 1, sms) > 1
    x = torch.randn((1, 14336), generator=generator(6), device="cuda").half()
    assert rel_err(cuda_quant_linear.quant_linear(x, w), reference(x, w)) <= REL_TOL
    assert not cuda_common.split_counters(x.device).any()
