"""The decoder-only transformer every supported family shares: embedding, N x (RMSNorm, GQA attention,
RMSNorm, SwiGLU MLP) with the residual add fused into the norms, final norm, output head.

A family file (llama.py, mistral.py, qwen2.py) subclasses CausalLM; what differs between them
(biases, sliding windows, rope scaling) is data in ModelConfig. Weights come from a WeightSource
(engine/loader.py) that knows the checkpoint format; the model only names the tensors it needs.

API (the contract the model runner relies on):
  forward(input_ids (B, S) long) -> logits (B, S, V) float32, no cache kept
  forward_paged(input_ids (T,), positions (T,), attn, kv_cache) -> hidden (T, H), final norm applied
  compute_logits(hidden (N, H)) -> (N, V) float32
  kv_cache: (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim) in the model dtype
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from engine import ops
from engine.attention_metadata import AttentionMetadata
from engine.config import ModelConfig
from engine.layers.attention import Attention
from engine.layers.embedding import Embedding
from engine.layers.linear import link_read_order
from engine.layers.mlp import GatedMLP
from engine.layers.norm import NormedRows, RMSNorm, linear_add_norm
from engine.layers.rotary import RotaryEmbedding
from engine.models.act_order import fold_act_order


class WeightSource(Protocol):
    def tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The float tensor `name`, checked to have `shape`, in the model dtype and device."""
        ...

    def linear(
        self, prefixes: Sequence[str], in_features: int, out_features: Sequence[int], bias: bool
    ) -> nn.Module:
        """One module computing the linears `prefixes` (e.g. q/k/v_proj) on the same input, outputs
        concatenated in order: float or quantized, fused into one matrix where the format allows."""
        ...


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, weights: WeightSource, rotary: RotaryEmbedding):
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        p = f"model.layers.{layer}."
        self.input_layernorm = RMSNorm(weights.tensor(p + "input_layernorm.weight", (h,)), eps)
        self.self_attn = Attention(
            weights.linear(
                [p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"],
                h, [config.q_size, config.kv_size, config.kv_size], bias=config.qkv_bias,
            ),
            weights.linear([p + "self_attn.o_proj"], config.q_size, [h], bias=config.o_bias),
            rotary,
            num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            sliding_window=config.layer_sliding_windows[layer],
        )  # fmt: skip
        self.post_attention_layernorm = RMSNorm(
            weights.tensor(p + "post_attention_layernorm.weight", (h,)), eps
        )
        i = config.intermediate_size
        self.mlp = GatedMLP(
            weights.linear([p + "mlp.gate_proj", p + "mlp.up_proj"], h, [i, i], bias=config.mlp_bias),
            weights.linear([p + "mlp.down_proj"], i, [h], bias=config.mlp_bias),
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor | NormedRows,
        residual: torch.Tensor | None,
        attn: AttentionMetadata,
        kv_cache_layer: torch.Tensor,
        next_norm: RMSNorm | None = None,
    ) -> tuple[torch.Tensor | NormedRows, torch.Tensor]:
        """hidden (T, H) is the previous layer's output not yet added to the residual stream, or that
        output already through this layer's input norm (NormedRows, from the previous layer's down).
        With next_norm (the next layer's input norm; the model's forward passes it) each norm is left
        to the GEMV before it where a kernel serves that (linear_add_norm), and the output is
        next_norm's NormedRows. Without it every module runs as written: the quantizer's layer-by-layer
        passes (engine/quant/quantize_model.py) call the layers so, and hook the norms and linears."""
        if isinstance(hidden, NormedRows):
            x = hidden
        else:
            x, residual = self.input_layernorm(hidden, residual)
        if next_norm is None:
            x = self.self_attn(positions, x, attn, kv_cache_layer)
            x, residual = self.post_attention_layernorm(x, residual)
            return self.mlp(x), residual
        x = self.self_attn.attend(positions, x, attn, kv_cache_layer)
        x, residual = linear_add_norm(self.self_attn.o_proj, x, residual, self.post_attention_layernorm)
        return linear_add_norm(self.mlp.down_proj, self.mlp.activation(x), residual, next_norm)


def dense_attention_metadata(
    batch_size: int, seq_len: int, block_size: int, device: torch.device
) -> AttentionMetadata:
    """Metadata for `batch_size` fresh sequences of `seq_len` tokens, each in its own run of blocks."""
    blocks_per_seq = -(-seq_len // block_size)
    block_tables = torch.arange(batch_size * blocks_per_seq, device=device).view(batch_size, blocks_per_seq)
    slots = block_tables.unsqueeze(-1) * block_size + torch.arange(block_size, device=device)  # (B, nb, bs)
    return AttentionMetadata(
        query_start_loc=torch.arange(0, batch_size * seq_len + 1, seq_len, device=device, dtype=torch.int32),
        seq_lens=torch.full((batch_size,), seq_len, device=device, dtype=torch.int32),
        block_tables=block_tables.to(torch.int32),
        slot_mapping=slots.view(batch_size, -1)[:, :seq_len].reshape(-1).contiguous(),  # (B * S,) int64
        max_query_len=seq_len,
        max_seq_len=seq_len,
        block_size=block_size,
    )


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig, weights: WeightSource):
        super().__init__()
        self.config = config
        h, v = config.hidden_size, config.vocab_size
        self.embed_tokens = Embedding(weights.tensor("model.embed_tokens.weight", (v, h)))
        self.rotary = RotaryEmbedding(
            config.head_dim, config.rope_theta, config.rope_scaling, config.max_position_embeddings
        ).to(self.embed_tokens.weight.device)  # the table is built on the CPU; it lives beside the weights
        self.layers = nn.ModuleList(
            DecoderLayer(config, layer, weights, self.rotary) for layer in range(config.num_layers)
        )
        self.norm = RMSNorm(weights.tensor("model.norm.weight", (h,)), config.rms_norm_eps)
        # tied: compute_logits reads the embedding matrix itself, so moving or casting keeps them one
        self.lm_head = None if config.tie_word_embeddings else weights.linear(["lm_head"], h, [v], bias=False)
        fold_act_order(self.layers)
        link_read_order(self.linears_in_read_order())

    def linears_in_read_order(self) -> list[tuple[nn.Module, str]]:
        """(owner, attribute name) of every linear, in the order forward_paged and the head read them."""
        order: list[tuple[nn.Module, str]] = []
        for layer in self.layers:
            order += [(layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj")]
            order += [(layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")]
        return order + [(self, "lm_head")]

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype  # the embedding may be int8 (engine/quant/vocab.py)

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @torch.no_grad()
    def forward_paged(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: torch.Tensor,
        mark: tuple[int, Callable[[], None]] | None = None,
    ) -> torch.Tensor:
        """input_ids, positions (T,) -> final hidden states (T, H); writes the new tokens' K/V.
        mark (layer, fn): fn() is called once that layer is queued (a CUDA graph's progress event)."""
        hidden = self.embed_tokens(input_ids)  # (T, H)
        residual = None
        # where a kernel can do the norms' work in the GEMVs, each layer gets the next layer's input
        # norm for its down GEMV; the last layer's output goes to the model's norm and the head as is
        last = len(self.layers) - 1 if ops.norms_in_gemvs(hidden) else 0
        for layer, decoder_layer in enumerate(self.layers):
            next_norm = self.layers[layer + 1].input_layernorm if layer < last else None
            hidden, residual = decoder_layer(positions, hidden, residual, attn, kv_cache[layer], next_norm)
            if mark is not None and layer == mark[0]:
                mark[1]()
        hidden, _ = self.norm(hidden, residual)
        return hidden

    @torch.no_grad()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, V) float32."""
        if self.lm_head is None:
            return F.linear(hidden, self.embed_tokens.weight).float()
        return self.lm_head(hidden).float()

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> torch.Tensor:
        c = self.config
        shape = (c.num_layers, 2, num_blocks, block_size, c.num_kv_heads, c.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, block_size: int = 16) -> torch.Tensor:
        """(B, S) token ids -> (B, S, V) float32 logits, through a throwaway paged cache."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        batch_size, seq_len = input_ids.shape
        if (
            input_ids.numel()
            and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < self.config.vocab_size
        ):
            bad = input_ids[(input_ids < 0) | (input_ids >= self.config.vocab_size)][0].item()
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than the model's context "
                f"({self.config.max_position_embeddings} positions)"
            )
        device = self.device
        input_ids = input_ids.to(device)
        attn = dense_attention_metadata(batch_size, seq_len, block_size, device)
        kv_cache = self.allocate_kv_cache(attn.block_tables.numel(), block_size)
        positions = torch.arange(seq_len, device=device).repeat(batch_size)  # (B * S,)
        hidden = self.forward_paged(input_ids.reshape(-1), positions, attn, kv_cache)  # (B * S, H)
        return self.compute_logits(hidden).view(batch_size, seq_len, -1)
