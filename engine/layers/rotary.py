"""Rotary position embedding: the cos/sin table, with linear and llama3 frequency scaling.

cos_sin_cache (max_positions, head_dim) float32: [:, :D/2] = cos(pos * inv_freq), [:, D/2:] = sin,
for the neox half-split rotation that Llama, Mistral and Qwen2 checkpoints on the Hub use.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine import ops
from engine.config import RopeScaling


def inv_frequencies(
    head_dim: int, theta: float, scaling: RopeScaling | None, max_positions: int
) -> torch.Tensor:
    """(head_dim / 2,) float32 angular frequency of each rotated pair."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":  # positions stretched by `factor`
        return inv_freq / scaling.factor
    assert scaling.rope_type == "llama3", scaling.rope_type
    # Llama 3.1: long wavelengths slowed down by `factor`, short ones kept, the band between blended.
    old_context = scaling.original_max_position_embeddings or max_positions
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def cos_sin_cache(
    head_dim: int, theta: float, scaling: RopeScaling | None, max_positions: int
) -> torch.Tensor:
    inv_freq = inv_frequencies(head_dim, theta, scaling, max_positions)  # (D/2,)
    angles = torch.arange(max_positions, dtype=torch.float32).unsqueeze(1) * inv_freq  # (P, D/2)
    return torch.cat((angles.cos(), angles.sin()), dim=-1)  # (P, D)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None, max_positions: int):
        super().__init__()
        self._args = (head_dim, theta, scaling, max_positions)
        self._rows = max_positions  # rows kept (limit_positions)
        # float32 even in a half-precision model: cos/sin of large positions need the mantissa
        self.register_buffer("cos_sin_cache", cos_sin_cache(*self._args), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.cos_sin_cache.dtype != torch.float32:  # the model was cast: rebuild, never round the table
            self.cos_sin_cache = cos_sin_cache(*self._args)[: self._rows].to(self.cos_sin_cache.device)
        return self

    def limit_positions(self, max_positions: int) -> None:
        """Keep only the table's first `max_positions` rows (same values: the scaling depends on the
        model's context, not on the rows kept). An engine whose KV cache holds N tokens never sees a
        position >= N, since every token of a sequence holds a slot (the scheduler refuses longer
        ones), and the whole table of a 128k-context model is 67 MB of GPU memory."""
        if max_positions < self._rows:
            self._rows = max_positions
            self.cos_sin_cache = self.cos_sin_cache[:max_positions].clone()

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (T, Hq, D), k (T, Hkv, D), positions (T,) -> rotated (q, k)."""
        return ops.apply_rotary(q, k, positions, self.cos_sin_cache)
