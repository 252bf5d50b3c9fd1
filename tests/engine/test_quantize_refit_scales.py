"""Refitting GPTQ's scales to its final codes (engine/quant/gptq.py refit_scales).

GPTQ fixes a group's scale from the group's columns as they are when it reaches the group's first
column, then picks codes one column at a time while later columns keep moving. Once every code is
known, each row's weight is linear in its group scales, and the best scales are a small least-squares
solve; zero points stay the integers the checkpoint stores.
"""

from __future__ import annotations

import dataclasses

import torch

from engine.quant.gptq import gptq_quantize, refit_scales
from engine.quant.rtn import QuantSpec
from tests.engine.test_quantize_gptq import correlated_inputs, hessian_of, outlier_weight

SPEC = QuantSpec(bits=4, group_size=32, sym=False, act_order=True, damp_percent=0.1, mse=True)
REFIT = dataclasses.replace(SPEC, refit_scales=True)


def row_objective(weight: torch.Tensor, weight_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(w - w_hat)^T H (w - w_hat) per row: (N,)."""
    err = (weight - weight_hat).double()
    return ((err @ h.double()) * err).sum(dim=1)


def dampened(h: torch.Tensor, damp: float) -> torch.Tensor:
    return h + damp * torch.diag(h).mean() * torch.eye(h.shape[0])


def test_refit_keeps_the_codes_zeros_and_groups_and_stores_fp16_scales() -> None:
    x = correlated_inputs(1024, 128, seed=1)
    weight = outlier_weight(48, 128, seed=2)
    plain, refit = gptq_quantize(weight, hessian_of(x), SPEC), gptq_quantize(weight, hessian_of(x), REFIT)
    assert torch.equal(plain.codes, refit.codes)
    assert torch.equal(plain.zeros, refit.zeros)
    assert torch.equal(plain.g_idx, refit.g_idx)
    assert refit.scales.shape == plain.scales.shape and (refit.scales > 0).all()
    assert torch.equal(refit.scales.half().float(), refit.scales)  # what an fp16 checkpoint stores
    assert not torch.equal(refit.scales, plain.scales)  # it did something


def test_refit_never_raises_a_rows_objective_and_lowers_the_total() -> None:
    x = correlated_inputs(2048, 256, seed=3)
    weight = outlier_weight(64, 256, seed=4)
    h = hessian_of(x)
    plain = gptq_quantize(weight, h, SPEC).dequantize()
    refit = gptq_quantize(weight, h, REFIT).dequantize()
    target = dampened(h, SPEC.damp_percent)  # the objective the refit solves
    before, after = row_objective(weight, plain, target), row_objective(weight, refit, target)
    assert (after <= before).all()
    # A clear margin on the objective the refit solves, and on the calibration objective itself
    # (measured: 0.97 and 0.95 of plain GPTQ's).
    assert after.sum() < 0.985 * before.sum(), float(after.sum() / before.sum())
    assert row_objective(weight, refit, h).sum() < row_objective(weight, plain, h).sum()


def test_refit_scales_are_the_least_squares_optimum_of_each_row() -> None:
    # Against an independent solve in float64 of one row: min_s ||L^T (w - A s)||, H' = L L^T.
    x = correlated_inputs(512, 64, seed=5)
    weight = outlier_weight(4, 64, seed=6)
    h = hessian_of(x)
    q = gptq_quantize(weight, h, SPEC)
    refit = refit_scales(q, weight, h, SPEC.damp_percent)
    lower = torch.linalg.cholesky(dampened(h, SPEC.damp_percent).double())
    g = q.g_idx.long()
    for row in range(4):
        offsets = q.codes[:, row].double() - q.zeros[g, row].double()  # (K,)
        a = torch.nn.functional.one_hot(g, 2).double() * offsets[:, None]  # (K, G)
        best = torch.linalg.lstsq(lower.t() @ a, lower.t() @ weight[row].double()).solution
        torch.testing.assert_close(refit.scales[:, row].double(), best, rtol=2e-3, atol=0)  # fp16 rounding


def test_a_group_whose_codes_all_sit_on_its_zero_keeps_its_scale() -> None:
    x = correlated_inputs(512, 64, seed=7)
    weight = outlier_weight(8, 64, seed=8)
    h = hessian_of(x)
    q = gptq_quantize(weight, h, SPEC)
    rows_group0 = q.g_idx == 0
    codes = q.codes.clone()
    codes[rows_group0, 3] = q.zeros[0, 3]  # row 3's group 0 dequantizes to all zeros
    q = dataclasses.replace(q, codes=codes)
    refit = refit_scales(q, weight, h, SPEC.damp_percent)
    assert refit.scales[0, 3] == q.scales[0, 3]
    assert torch.isfinite(refit.scales).all()
