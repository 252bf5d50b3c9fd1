"""SwiGLU feed-forward: down(silu(gate(x)) * up(x)) with gate|up fused into one matrix."""

from __future__ import annotations

import torch
from torch import nn

from engine import ops


class GatedMLP(nn.Module):
    def __init__(self, gate_up_proj: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.gate_up_proj = gate_up_proj  # H -> 2I, gate | up side by side
        self.down_proj = down_proj  # I -> H

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))  # (T, 2I) -> (T, I) -> (T, H)
