"""RMSNorm with the residual add fused in (ops.rms_norm), writing its output in the order the next
linear reads it where that linear's act-order permutation was moved here (engine/models/act_order.py).

In a decode step the norm need not be a kernel of its own (linear_add_norm): the GEMV before it (o,
down) adds the residual, multiplies by the norm's weight and sums the squares per 32-column tile in
its epilogue, and the GEMV after it (q|k|v, gate|up) scales each row of its product by the norm's
rsqrt(mean(h^2) + eps), which is one multiply per output since the scale is the row's alone. What
travels between the two is NormedRows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from engine import ops
from engine.layers.linear import QuantLinear
from engine.ops.reference import RowNorm, apply_row_norm


class NormedRows(NamedTuple):
    """An RMSNorm's output for the next linear: `rows` (T, H) in that linear's input order, either the
    normed rows themselves (row_norm None) or h * weight whose row scale row_norm still holds."""

    rows: torch.Tensor
    row_norm: RowNorm | None = None

    def materialize(self) -> torch.Tensor:
        """The normed rows as a tensor, for a consumer that cannot take the row scale."""
        return self.rows if self.row_norm is None else apply_row_norm(self.rows, self.row_norm)


def rows_and_norm(x: torch.Tensor | NormedRows) -> tuple[torch.Tensor, RowNorm | None]:
    """A linear's input as (rows, the row scale still to apply or None)."""
    return (x.rows, x.row_norm) if isinstance(x, NormedRows) else (x, None)


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (H,)
        self.eps = eps
        self.register_buffer("out_perm", None)  # (H,) int32: out[:, j] = normed[:, out_perm[j]]
        self.register_buffer("out_index", None)  # (H,) int32: its inverse, column n goes to out_index[n]

    def set_output_order(self, perm: torch.Tensor) -> None:
        self.out_perm = perm.to(device=self.weight.device, dtype=torch.int32).contiguous()
        self.out_index = torch.argsort(perm).to(device=self.weight.device, dtype=torch.int32).contiguous()

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed, new_residual): new_residual = x + residual (or x), normed = rmsnorm(new_residual)."""
        return ops.rms_norm(x, self.weight, self.eps, residual, self.out_perm)


def linear_add_norm(
    linear: nn.Module, x: torch.Tensor, residual: torch.Tensor, norm: RMSNorm
) -> tuple[NormedRows, torch.Tensor]:
    """norm(linear(x), residual) as (NormedRows, new residual): the norm's work in the linear's GEMV
    where a kernel serves that (ops.quant_linear_add_norm), its row scale then left to the next linear;
    else the two modules as written."""
    if isinstance(linear, QuantLinear):
        fused = ops.quant_linear_add_norm(
            x, linear.packed(), residual, norm.weight, norm.out_index, linear.read_next_hint(x)
        )
        if fused is not None:
            weighted, sumsq_tiles, new_residual = fused
            return NormedRows(weighted, RowNorm(sumsq_tiles, norm.eps)), new_residual
    normed, new_residual = norm(linear(x), residual)
    return NormedRows(normed), new_residual
