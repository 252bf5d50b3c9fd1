"""Where the new tokens of one forward pass sit in the paged KV cache.

Built by the model runner (the only place lists become tensors) and passed explicitly to every
attention layer: there is no global forward context.

Layouts assumed everywhere:
  kv_cache (whole pool): (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim), model dtype;
      kv_cache[layer, 0] holds K, kv_cache[layer, 1] holds V.
  new tokens of all sequences are packed along one axis (no padding): num_tokens = query_start_loc[-1].
  a token's flat slot = block_id * block_size + offset_in_block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    query_start_loc: torch.Tensor  # (num_seqs + 1,) int32: cumulative count of new tokens per sequence
    seq_lens: torch.Tensor  # (num_seqs,) int32: context length after this step (cached + new)
    block_tables: (
        torch.Tensor
    )  # (num_seqs, max_blocks_per_seq) int32, padded with 0 past each sequence's blocks
    slot_mapping: torch.Tensor  # (num_tokens,) int64: where each new token's K/V is written
    max_query_len: int  # host copies of the maxima, so kernels need no device->host sync
    max_seq_len: int
    block_size: int
    # The one-token sequences are new tokens of prompts (engine/cuda_graph.py token_level_metadata):
    # consecutive ones may share their blocks, which the CUDA decode kernel then reads once for all.
    prompt_tokens_as_sequences: bool = False

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def is_decode(self) -> bool:
        """Every sequence brings exactly one new token."""
        return self.max_query_len == 1
