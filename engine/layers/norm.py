"""RMSNorm with the residual add fused in (ops.rms_norm), writing its output in the order the next
linear reads it where that linear's act-order permutation was moved here (engine/models/act_order.py)."""

from __future__ import annotations

import torch
from torch import nn

from engine import ops


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (H,)
        self.eps = eps
        self.register_buffer("out_perm", None)  # (H,) int32: out[:, j] = normed[:, out_perm[j]]

    def set_output_order(self, perm: torch.Tensor) -> None:
        self.out_perm = perm.to(device=self.weight.device, dtype=torch.int32).contiguous()

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed, new_residual): new_residual = x + residual (or x), normed = rmsnorm(new_residual)."""
        return ops.rms_norm(x, self.weight, self.eps, residual, self.out_perm)
