"""Grouped-query self-attention over the paged KV cache.

One implementation for every family and every call: the new tokens' K/V are written into their
slots first, then the new queries attend to each sequence's cached blocks (themselves included).
For a quantized q|k|v on a GPU, the rotation and the K/V write run in the GEMV's epilogue
(ops.quant_qkv_rotary_kv) where it can.
Layouts: hidden (T, H) with all sequences' new tokens packed along T; q (T, Hq, D); k, v (T, Hkv, D);
kv_cache_layer (2, num_blocks, block_size, Hkv, D).
"""

from __future__ import annotations

import torch
from torch import nn

from engine import ops
from engine.attention_metadata import AttentionMetadata
from engine.layers.linear import QuantLinear
from engine.layers.norm import NormedRows, rows_and_norm
from engine.layers.rotary import RotaryEmbedding
from engine.ops.reference import OutputOrder, apply_row_norm


class Attention(nn.Module):
    def __init__(
        self,
        qkv_proj: nn.Module,  # H -> (Hq + 2 * Hkv) * D, q | k | v side by side
        o_proj: nn.Module,  # Hq * D -> H
        rotary: RotaryEmbedding,
        *,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        sliding_window: int | None,
    ):
        super().__init__()
        self.qkv_proj, self.o_proj = qkv_proj, o_proj
        self.rotary = rotary
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.sliding_window = sliding_window
        self.scale = head_dim**-0.5
        # o_proj's act-order permutation, moved here (engine/models/act_order.py): the attention
        # writes its output in o's input order. (Hq * D,) int32 each, or None.
        self.register_buffer("out_perm", None)
        self.register_buffer("out_index", None)

    def set_output_order(self, perm: torch.Tensor) -> None:
        device = self.rotary.cos_sin_cache.device
        self.out_perm = perm.to(device=device, dtype=torch.int32).contiguous()
        self.out_index = torch.argsort(perm).to(device=device, dtype=torch.int32).contiguous()

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor | NormedRows,
        attn: AttentionMetadata,
        kv_cache_layer: torch.Tensor,
    ) -> torch.Tensor:
        return self.o_proj(self.attend(positions, hidden, attn, kv_cache_layer))  # (T, H)

    def attend(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor | NormedRows,
        attn: AttentionMetadata,
        kv_cache_layer: torch.Tensor,
    ) -> torch.Tensor:
        """Everything up to o_proj: the attention's output (T, Hq * D) in o's input order. hidden may
        carry its norm's row scale (NormedRows), which the fused q|k|v GEMV applies."""
        hidden, row_norm = rows_and_norm(hidden)
        num_tokens = hidden.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q = None
        if isinstance(self.qkv_proj, QuantLinear):
            q = ops.quant_qkv_rotary_kv(
                hidden, self.qkv_proj.packed(), positions, self.rotary.cos_sin_cache, kv_cache_layer,
                attn.slot_mapping, self.num_heads, self.head_dim, self.qkv_proj.read_next_hint(hidden), row_norm,
            )  # fmt: skip
        if q is None:
            if row_norm is not None:
                hidden = apply_row_norm(hidden, row_norm)
            q, k, v = self.qkv_proj(hidden).split([q_size, kv_size, kv_size], dim=-1)  # (T, q|kv|kv)
            q = q.reshape(num_tokens, self.num_heads, self.head_dim)  # (T, Hq, D)
            k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)  # (T, Hkv, D)
            v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
            q, k = self.rotary(q, k, positions)
            ops.write_kv(k, v, kv_cache_layer, attn.slot_mapping)
        order = None if self.out_perm is None else OutputOrder(self.out_perm, self.out_index)
        out = ops.paged_attention(
            q, kv_cache_layer, attn, self.scale, self.sliding_window, order
        )  # (T, Hq, D)
        return out.reshape(num_tokens, q_size)
