"""Round-to-nearest quantization, and the grid it shares with GPTQ (engine/quant/gptq.py).

RTN is the baseline GPTQ must beat: every group's codes are the nearest points of a min/max grid,
with no error compensation. The grid is a per-output-channel scale and zero of one group.

A grid maps a float weight w to an integer code q in [0, maxq] and back:
    q = clamp(round(w / scale) + zero, 0, maxq)        w_hat = (q - zero) * scale
Scales are rounded to fp16 as soon as they are found, because the checkpoint stores them in fp16:
the quantizer then compensates the error of exactly the grid the engine will dequantize with.

The range of a grid is the group's min/max, or with `mse` the min/max shrunk by the factor p in
{1, 0.99, ..., 0.21} that minimises sum |w - w_hat|^2.4 per row (the "mse" option of the reference
GPTQ quantizer, IST-DASLab/gptq quant.py: grid 100, maxshrink 0.8, norm 2.4). Clipping a few outliers
buys a finer step for all the other weights of the group.

Weights here are in the torch.nn.Linear orientation, (N, K) = (out_features, in_features); a group
is a slice of columns, and every row (output channel) gets its own scale and zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int = 128  # columns (input features) per group; -1 means one group per row
    sym: bool = True
    act_order: bool = False  # GPTQ only: visit columns by descending Hessian diagonal
    damp_percent: float = 0.01  # GPTQ only: damping added to diag(H), as a fraction of its mean
    block_size: int = 128  # GPTQ only: columns updated lazily per block (speed, not the result)
    mse: bool = False  # search a shrunk range per group instead of plain min/max (see module doc)
    # GPTQ only, in the sequential driver: how far each linear's target moves from its own float
    # outputs on the quantized model's inputs towards the float model's outputs (engine/quant/gptq.py
    # float_target_weight); 0 is plain GPTQ, 1 the full asymmetric objective ||W Xf - W_hat X||^2.
    float_target: float = 0.0
    # With float_target: o_proj and down_proj, whose outputs are added to the residual stream, also aim
    # to cancel the stream's drift from the float model so far (target W Xf + Rf - R).
    residual_target: bool = False
    refit_scales: bool = False  # GPTQ only: refit each row's scales to its final codes (gptq.refit_scales)

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ValueError(f"group size must be positive or -1, got {self.group_size}")
        if not 0.0 < self.damp_percent < 1.0:
            raise ValueError(f"damp must be in (0, 1), got {self.damp_percent}")
        if not 0.0 <= self.float_target <= 1.0:
            raise ValueError(f"float target must be in [0, 1], got {self.float_target}")

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def group_size_for(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size


@dataclass(frozen=True)
class Grid:
    scale: torch.Tensor  # (N,) float32, fp16-representable
    zero: torch.Tensor  # (N,) float32 holding integers in [0, maxq]


MSE_GRID_STEPS = 100  # candidate shrink factors are 1 - i / MSE_GRID_STEPS ...
MSE_MAX_SHRINK = 0.8  # ... for i < MSE_MAX_SHRINK * MSE_GRID_STEPS, i.e. down to 0.21 x the range
MSE_NORM = 2.4  # error norm of the search: between L2 and the L4-ish weight of outliers
MSE_CHUNK_ELEMENTS = 1 << 22  # (candidates, N, G) elements evaluated at once: bounds the memory


def find_grid(w: torch.Tensor, spec: QuantSpec) -> Grid:
    """The grid of the columns `w` (N, G): min/max, or the best shrunk range with `spec.mse`.
    The range always contains 0 so zero is exact."""
    w = w.float()
    wmin = w.min(dim=1).values.clamp(max=0)  # (N,)
    wmax = w.max(dim=1).values.clamp(min=0)
    if spec.sym:
        # Symmetric around the middle code: the range must reach -max|w| even for an all-positive row.
        wmax = torch.maximum(wmin.abs(), wmax)
        wmin = -wmax
    empty = (wmin == 0) & (wmax == 0)  # an all-zero row still needs a finite scale
    wmin = torch.where(empty, torch.full_like(wmin, -1.0), wmin)
    wmax = torch.where(empty, torch.full_like(wmax, 1.0), wmax)
    if not spec.mse:
        scale, zero = _grid_of_range(wmin, wmax, spec)
        return Grid(scale=scale, zero=zero)
    return _mse_grid(w, wmin, wmax, spec)


def _grid_of_range(
    wmin: torch.Tensor, wmax: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero of the ranges [wmin, wmax] (any shape; wmin <= 0 <= wmax, not both 0)."""
    maxq = spec.maxq
    scale = ((wmax - wmin) / maxq).half().float()
    scale = torch.where(scale == 0, torch.full_like(scale, 2.0**-24), scale)  # fp16 underflow
    if spec.sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        # Zero >= 1: a "gptq" checkpoint stores zero - 1 in `bits` bits, and loaders differ in how
        # they unwrap a stored -1. Only an all-non-negative group would want 0; it loses one code.
        zero = torch.round(-wmin / scale).clamp(1, maxq)
    return scale, zero


def _mse_grid(w: torch.Tensor, wmin: torch.Tensor, wmax: torch.Tensor, spec: QuantSpec) -> Grid:
    """The shrink factor per row with the least |w - w_hat|^MSE_NORM; p = 1 (min/max) is a candidate,
    so the result is never worse than the min/max grid in that norm."""
    n, g = w.shape
    shrink = (
        1.0 - torch.arange(int(MSE_MAX_SHRINK * MSE_GRID_STEPS), device=w.device) / MSE_GRID_STEPS
    )  # (P,)
    best_err = torch.full((n,), float("inf"), device=w.device)
    best_scale = torch.empty(n, device=w.device)
    best_zero = torch.empty(n, device=w.device)
    rows = torch.arange(n, device=w.device)
    chunk = max(1, MSE_CHUNK_ELEMENTS // (n * g))
    for p in shrink.split(chunk):
        scale, zero = _grid_of_range(p[:, None] * wmin, p[:, None] * wmax, spec)  # (P, N)
        s, z = scale.unsqueeze(2), zero.unsqueeze(2)  # (P, N, 1)
        err = torch.div(w, s).round_().add_(z).clamp_(0, spec.maxq).sub_(z).mul_(s).sub_(w)  # (P, N, G)
        err = err.abs_().pow_(MSE_NORM).sum(dim=2)  # (P, N)
        err, index = err.min(dim=0)  # (N,) best candidate of this chunk, first one on ties
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale[index, rows], best_scale)
        best_zero = torch.where(better, zero[index, rows], best_zero)
    return Grid(scale=best_scale, zero=best_zero)


def quantize_codes(w: torch.Tensor, grid: Grid, maxq: int) -> torch.Tensor:
    """Integer codes (as float) of `w` (N,) or (N, G) on `grid`."""
    scale, zero = grid.scale, grid.zero
    if w.dim() == 2:
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def dequantize_codes(q: torch.Tensor, grid: Grid) -> torch.Tensor:
    scale, zero = grid.scale, grid.zero
    if q.dim() == 2:
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    return (q - zero) * scale


@dataclass(frozen=True)
class QuantizedWeight:
    """One quantized linear layer, in the orientation of the GPTQ checkpoint (K rows, N columns).

    `g_idx[k]` is the group of input feature k. With act-order the groups follow the order in which
    GPTQ visited the columns, so g_idx is not monotonic; without it g_idx[k] == k // group_size.
    """

    codes: torch.Tensor  # (K, N) int32 in [0, 2**bits)
    scales: torch.Tensor  # (G, N) float32, fp16-representable
    zeros: torch.Tensor  # (G, N) int32, the true zero (stored as zero - 1 in a "gptq" checkpoint)
    g_idx: torch.Tensor  # (K,) int32
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        """The (N, K) float32 weight the engine computes with (torch.nn.Linear orientation)."""
        g = self.g_idx.long()
        w = (self.codes.float() - self.zeros[g].float()) * self.scales[g]  # (K, N)
        return w.t().contiguous()


def rtn_quantize(weight: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Quantize `weight` (N, K) group by group in input-feature order."""
    n, k = weight.shape
    group_size = spec.group_size_for(k)
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group size {group_size}")
    w = weight.float()
    codes = torch.empty(n, k, dtype=torch.float32, device=w.device)
    scales, zeros = [], []
    for start in range(0, k, group_size):
        cols = w[:, start : start + group_size]  # (N, G)
        grid = find_grid(cols, spec)
        codes[:, start : start + group_size] = quantize_codes(cols, grid, spec.maxq)
        scales.append(grid.scale)
        zeros.append(grid.zero)
    g_idx = torch.arange(k, device=w.device, dtype=torch.int32) // group_size
    return QuantizedWeight(
        codes=codes.t().to(torch.int32).contiguous(),
        scales=torch.stack(scales),
        zeros=torch.stack(zeros).to(torch.int32),
        g_idx=g_idx,
        bits=spec.bits,
        group_size=group_size,
    )
