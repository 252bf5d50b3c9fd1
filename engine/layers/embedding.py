"""Token embedding: a float matrix, or quantized rows with one scale per group of features.

The output head may share the float matrix (tied embeddings): CausalLM.compute_logits reads it then.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine import ops
from engine.quant.rtn import QuantSpec, rtn_quantize

EMBED_GROUP_SIZE = 128  # features per scale
EMBED_ROWS_PER_PASS = 16384  # vocabulary rows quantized at once: bounds the float32 temporaries


class Embedding(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (V, H)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)  # (..., H)


class QuantEmbedding(nn.Module):
    """Rows of codes q with a scale s and an offset b per (row, group of features): e = q * s + b.

    8 bits: int8 codes, symmetric (b = 0, |q| <= 127, each group's largest magnitude exact).
    4 bits: two codes per byte (even feature in the low nibble), the asymmetric round-to-nearest grid
    of the 4-bit head with its searched range (engine/quant/rtn.py; b = -zero * s), as llama.cpp's
    Q4_K_M files keep their token embedding. A lookup reads bits/8 bytes per feature and rescales;
    nothing of the matrix multiplies."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, bits: int):
        super().__init__()
        assert bits in (4, 8) and codes.dtype == (torch.uint8 if bits == 4 else torch.int8), (
            bits,
            codes.dtype,
        )
        self.bits = bits
        self.hidden_size = codes.shape[1] * 8 // bits
        self.group_size = self.hidden_size // scales.shape[1]
        assert offsets is None or offsets.shape == scales.shape
        self.register_buffer("codes", codes)  # (V, H * bits / 8)
        self.register_buffer("scales", scales)  # (V, H // group_size) model dtype
        self.register_buffer("offsets", offsets)  # same, 4 bits only

    @classmethod
    @torch.no_grad()
    def from_float(
        cls,
        weight: torch.Tensor,
        bits: int = 8,
        dtype: torch.dtype | None = None,
        rows_per_pass: int = EMBED_ROWS_PER_PASS,
    ) -> QuantEmbedding:
        v, h = weight.shape
        group = EMBED_GROUP_SIZE if h % EMBED_GROUP_SIZE == 0 else h
        dtype = dtype or weight.dtype
        device = weight.device
        codes = torch.empty((v, h * bits // 8), dtype=torch.int8 if bits == 8 else torch.uint8, device=device)
        scales = torch.empty((v, h // group), dtype=dtype, device=device)
        offsets = torch.empty((v, h // group), dtype=dtype, device=device) if bits == 4 else None
        for start in range(0, v, rows_per_pass):  # float32 temporaries of one row block at a time
            rows = slice(start, start + rows_per_pass)
            w = weight[rows].float()
            if bits == 8:
                grouped = w.view(-1, h // group, group)
                s = (grouped.abs().amax(dim=2) / 127.0).to(dtype)  # stored precision, then used for rounding
                s_used = torch.where(s == 0, torch.ones_like(s), s).float()
                codes[rows] = (
                    torch.round(grouped / s_used.unsqueeze(2)).clamp_(-127, 127).to(torch.int8).view(-1, h)
                )
                scales[rows] = s
            else:
                q = rtn_quantize(w, QuantSpec(bits=4, group_size=group, sym=False, mse=True))
                nibbles = q.codes.t().to(torch.uint8)  # (rows, H) in [0, 16)
                codes[rows] = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
                scales[rows] = q.scales.t().to(dtype)  # fp16-representable already
                offsets[rows] = (-q.zeros.t().float() * q.scales.t()).to(dtype)
        return cls(codes, scales, offsets, bits)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return ops.quant_embedding(input_ids, self.codes, self.scales, self.offsets, self.bits)  # (..., H)

    def dense(self) -> torch.Tensor:
        """The (V, H) matrix the lookups return rows of."""
        return self(torch.arange(self.codes.shape[0], device=self.codes.device))
