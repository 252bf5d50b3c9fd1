"""Token embedding: a float matrix, or int8 rows with one scale per group of features.

The output head may share the float matrix (tied embeddings): CausalLM.compute_logits reads it then.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBED_GROUP_SIZE = 128  # features per int8 scale


class Embedding(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (V, H)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)  # (..., H)


class QuantEmbedding(nn.Module):
    """Rows stored as int8 codes q with a per-(row, group) scale s: e = q * s, |q| <= 127 (symmetric:
    the largest magnitude of each group lands exactly on a code). A lookup gathers 1 byte per feature
    instead of 2, and the matrix takes half the memory of fp16."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, group_size: int):
        super().__init__()
        v, h = codes.shape
        assert codes.dtype == torch.int8 and scales.shape == (v, h // group_size), (codes.shape, scales.shape)
        self.group_size = group_size
        self.register_buffer("codes", codes)  # (V, H) int8
        self.register_buffer("scales", scales)  # (V, H // group_size) model dtype

    @classmethod
    @torch.no_grad()
    def from_float(cls, weight: torch.Tensor, dtype: torch.dtype | None = None, rows_per_pass: int = 16384):
        v, h = weight.shape
        group = EMBED_GROUP_SIZE if h % EMBED_GROUP_SIZE == 0 else h
        codes = torch.empty((v, h), dtype=torch.int8, device=weight.device)
        scales = torch.empty((v, h // group), dtype=dtype or weight.dtype, device=weight.device)
        for start in range(0, v, rows_per_pass):  # float32 temporaries of one row block at a time
            w = weight[start : start + rows_per_pass].float().view(-1, h // group, group)
            s = (w.abs().amax(dim=2) / 127.0).to(scales.dtype)  # stored precision, then used for rounding
            s_used = torch.where(s == 0, torch.ones_like(s), s).float()
            codes[start : start + rows_per_pass] = (
                torch.round(w / s_used.unsqueeze(2)).clamp_(-127, 127).to(torch.int8).view(-1, h)
            )
            scales[start : start + rows_per_pass] = s
        return cls(codes, scales, group)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.codes.shape[1]
        codes = self.codes[input_ids]  # (..., H) int8
        scales = self.scales[input_ids]  # (..., H // group)
        grouped = codes.to(self.scales.dtype).unflatten(-1, (h // self.group_size, self.group_size))
        return (grouped * scales.unsqueeze(-1)).flatten(-2)  # (..., H)

    def dense(self) -> torch.Tensor:
        """The (V, H) matrix the lookups return rows of."""
        return self(torch.arange(self.codes.shape[0], device=self.codes.device))
