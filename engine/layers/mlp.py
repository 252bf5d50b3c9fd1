"""SwiGLU feed-forward: down(silu(gate(x)) * up(x)) with gate|up fused into one matrix; for a quantized
gate|up on a GPU the activation runs in the GEMV's epilogue (ops.quant_linear_silu_mul) where it can,
and so does the row scale of the RMSNorm before it when the GEMV before that norm did the rest
(engine/layers/norm.py linear_add_norm)."""

from __future__ import annotations

import torch
from torch import nn

from engine import ops
from engine.layers.linear import QuantLinear
from engine.layers.norm import NormedRows, rows_and_norm
from engine.ops.reference import apply_row_norm


class GatedMLP(nn.Module):
    def __init__(self, gate_up_proj: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.gate_up_proj = gate_up_proj  # H -> 2I, gate | up side by side
        self.down_proj = down_proj  # I -> H

    def forward(self, x: torch.Tensor | NormedRows) -> torch.Tensor:
        """x (T, H) -> (T, H)."""
        return self.down_proj(self.activation(x))

    def activation(self, x: torch.Tensor | NormedRows) -> torch.Tensor:
        """silu(gate) * up (T, I): down's input. x may carry its norm's row scale (NormedRows)."""
        rows, row_norm = rows_and_norm(x)
        if isinstance(self.gate_up_proj, QuantLinear):
            gate_up = self.gate_up_proj
            act = ops.quant_linear_silu_mul(rows, gate_up.packed(), gate_up.read_next_hint(rows), row_norm)
            if act is not None:
                return act
        if row_norm is not None:
            rows = apply_row_norm(rows, row_norm)
        return ops.silu_and_mul(self.gate_up_proj(rows))  # (T, 2I) -> (T, I)
