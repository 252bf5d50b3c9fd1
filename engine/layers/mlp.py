"""SwiGLU feed-forward: down(silu(gate(x)) * up(x)) with gate|up fused into one matrix; for a quantized
gate|up on a GPU the activation runs in the GEMV's epilogue (ops.quant_linear_silu_mul) where it can."""

from __future__ import annotations

import torch
from torch import nn

from engine import ops
from engine.layers.linear import QuantLinear


class GatedMLP(nn.Module):
    def __init__(self, gate_up_proj: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.gate_up_proj = gate_up_proj  # H -> 2I, gate | up side by side
        self.down_proj = down_proj  # I -> H

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (T, H) -> (T, H)."""
        if isinstance(self.gate_up_proj, QuantLinear):
            gate_up = self.gate_up_proj
            act = ops.quant_linear_silu_mul(x, gate_up.packed(), gate_up.read_next_hint(x))  # (T, I) or None
            if act is not None:
                return self.down_proj(act)
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))  # (T, 2I) -> (T, I) -> (T, H)
