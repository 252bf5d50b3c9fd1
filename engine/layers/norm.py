"""RMSNorm with the residual add fused in (ops.rms_norm)."""

from __future__ import annotations

import torch
from torch import nn

from engine import ops


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (H,)
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed, new_residual): new_residual = x + residual (or x), normed = rmsnorm(new_residual)."""
        return ops.rms_norm(x, self.weight, self.eps, residual)
