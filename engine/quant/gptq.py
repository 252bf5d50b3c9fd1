"""GPTQ (Frantar et al., 2022): quantize a linear layer's weight column by column, pushing each
column's rounding error onto the columns not yet quantized so that the layer's output on the
calibration inputs moves as little as possible.

The objective of one layer with weight W (N, K) and calibration inputs X (K, num_samples) is
||(W - W_hat) X||^2, whose Hessian in each row of W is H = 2 X X^T (K, K). `Hessian` accumulates
it from batches of activations; `gptq_quantize` consumes it. Pure torch: runs where the tensors are.
"""

from __future__ import annotations

import torch

from engine.quant.rtn import (
    Grid,
    QuantizedWeight,
    QuantSpec,
    dequantize_codes,
    find_grid,
    quantize_codes,
)

HESSIAN_BLOCK = 512  # rows of H per matmul when accumulating only its upper block triangle


class Hessian:
    """H = 2/n * sum_i x_i x_i^T over all n rows seen so far, accumulated in float32.

    The mean (not the sum) keeps H's scale independent of the number of calibration tokens, which
    matters for the dampening term: it is a fraction of mean(diag(H)). H is symmetric, so `add` only
    computes the blocks on and above the diagonal (55% of the multiply-adds of the full X^T X at
    K = 4864, the down_proj input that dominates the quantizer's time); `matrix` mirrors them.
    """

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        self.in_features = in_features
        self._sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)  # upper blocks
        self.num_samples = 0

    def add(self, x: torch.Tensor) -> None:
        """x: (..., K) activations entering the layer."""
        k = self.in_features
        x = x.reshape(-1, k).to(self._sum.device, torch.float32)  # (n, K)
        for r0 in range(0, k, HESSIAN_BLOCK):
            r1 = min(r0 + HESSIAN_BLOCK, k)
            self._sum[r0:r1, r0:].addmm_(x[:, r0:r1].t(), x[:, r0:])  # (R, K - r0)
        self.num_samples += x.shape[0]

    @property
    def matrix(self) -> torch.Tensor:
        """(K, K) float32, a new tensor on each read."""
        upper = torch.triu(self._sum)
        h = upper + torch.triu(self._sum, diagonal=1).t()
        return h.mul_(2.0 / max(self.num_samples, 1))


def _inverse_cholesky_upper(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U) after dampening the diagonal.

    Row i of U, divided by U[i, i], is how quantizing column i must update the later columns; this
    is the sequential elimination of the GPTQ paper done once up front. If H is still not positive
    definite (too few distinct inputs), the dampening grows until it is.
    """
    k = h.shape[0]
    mean_diag = torch.mean(torch.diag(h)).item()
    eye = torch.eye(k, dtype=h.dtype, device=h.device)
    damp = damp_percent
    for _ in range(6):
        lower, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if info.item() == 0:
            h_inv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(h_inv, upper=True)
            if info.item() == 0:
                return upper
        damp *= 10
    raise RuntimeError(f"Hessian of a {k}-input layer is not positive definite even with damp {damp}")


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Quantize `weight` (N, K) given the Hessian (K, K) of its calibration inputs."""
    n, k = weight.shape
    assert hessian.shape == (k, k), (hessian.shape, weight.shape)
    group_size = spec.group_size_for(k)
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group size {group_size}")
    maxq = spec.maxq
    w = weight.detach().to(hessian.device, torch.float32).clone()  # (N, K)
    h = hessian.to(torch.float32).clone()

    # An input that is always zero carries no information: pin its weights to 0 and keep H invertible.
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    if spec.act_order:
        perm = torch.argsort(torch.diag(h), descending=True)  # (K,) big-influence columns first
        w = w[:, perm]
        h = h[perm][:, perm]
    else:
        perm = torch.arange(k, device=w.device)

    u = _inverse_cholesky_upper(h, spec.damp_percent)  # (K, K)
    codes = torch.zeros_like(w)  # (N, K) in visiting order
    scales: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []
    grid: Grid | None = None

    for b0 in range(0, k, spec.block_size):
        b1 = min(b0 + spec.block_size, k)
        w_block = w[:, b0:b1].clone()  # (N, B) updated as the block's columns get quantized
        err_block = torch.zeros_like(w_block)  # (N, B) scaled errors, applied to the rest at the end
        u_block = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:
                # The group's grid comes from its columns as they are now, error updates included.
                rest = group_size - (b1 - b0 - i)  # columns of the group beyond this block
                group = torch.cat([w_block[:, i : i + group_size], w[:, b1 : b1 + max(rest, 0)]], dim=1)
                grid = find_grid(group, spec)
                scales.append(grid.scale)
                zeros.append(grid.zero)
            assert grid is not None
            q = quantize_codes(w_block[:, i], grid, maxq)  # (N,)
            codes[:, col] = q
            err = (w_block[:, i] - dequantize_codes(q, grid)) / u_block[i, i]  # (N,)
            w_block[:, i:] -= err.unsqueeze(1) * u_block[i, i:].unsqueeze(0)
            err_block[:, i] = err
        w[:, b1:] -= err_block @ u[b0:b1, b1:]  # lazy batch update of all later columns

    inv_perm = torch.argsort(perm)
    g_idx = (torch.arange(k, device=w.device) // group_size)[inv_perm]  # group of each input feature
    return QuantizedWeight(
        codes=codes[:, inv_perm].t().to(torch.int32).contiguous(),
        scales=torch.stack(scales),
        zeros=torch.stack(zeros).to(torch.int32),
        g_idx=g_idx.to(torch.int32),
        bits=spec.bits,
        group_size=group_size,
    )
