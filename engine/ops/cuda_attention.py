"""The CUDA side of the attention op (engine/ops/__init__.py paged_attention): one new token per
sequence goes to the flash-decoding kernel (csrc/attention_decode.cu); a short prompt whose tokens
come as one-token sequences (engine/cuda_graph.py token_level_metadata) to its multi-query kernel;
anything else to prefill attention (engine/ops/cuda_prefill_attention.py).
"""

from __future__ import annotations

import torch

from engine.attention_metadata import AttentionMetadata
from engine.ops import reference
from engine.ops.cuda_common import ATTENTION_COUNTERS_OFFSET, counters_of, is_model_dtype
from engine.ops.cuda_prefill_attention import prefill_attention

MIN_PARTITION = 128  # decode attention: tokens per partition, small so one sequence fills the GPU...
MAX_PARTITIONS = 256  # ...until a sequence would need more partitions than this
# The per-sequence kernel doubles a long sequence's partitions, on the device from its length, up to
# this many tokens while it would need more than 32 (csrc/attention_merge.cuh partition_size_of):
# an 8k sequence gets 256, a 2k one keeps 128 (fixed 256 there: -7.5%). H200, Llama-3-8B decode at
# 8k 421 -> 430 tok/s, 32 and 2k unchanged; up to 512: 384 (bench/NOTES.md 85e).
# 0: fixed partitions. A power of two times MIN_PARTITION.
GROWN_PARTITION = 256
# A short prefill's new tokens as one-token sequences (engine/cuda_graph.py token_level_metadata):
# up to this many consecutive ones that share their blocks are computed by one block from one read
# of each K/V chunk (the multi-query kernel); 1 selects the per-sequence kernel for them too.
QUERIES_PER_BLOCK = 16
MULTI_QUERY_MIN_PARTITION = 256  # tokens per partition of the multi-query kernel (one block each)


def partition_size_for(max_seq_len: int, min_partition: int = MIN_PARTITION) -> int:
    """Smallest of 128, 256, ... tokens per partition that keeps at most MAX_PARTITIONS partitions:
    small partitions spread a single short sequence over many SMs; the cap bounds the merge."""
    size = min_partition
    while size < 512 and -(-max_seq_len // size) > MAX_PARTITIONS:
        size *= 2
    return size


def grown_partition_for(partition_size: int) -> int:
    """The op's max_partition_size for partitions of partition_size tokens: GROWN_PARTITION where it
    is larger, else 0 (fixed: a graph captured for a long enough context has larger ones already)."""
    return GROWN_PARTITION if GROWN_PARTITION > partition_size else 0


def decode_attention(
    q, kv_cache_layer, block_tables, seq_lens, max_seq_len: int, scale: float, sliding_window,
    queries_per_block: int = 1, partition_size: int | None = None, out_index=None,
):  # fmt: skip
    """Flash-decoding kernel: q (S, Hq, D), one new token per sequence, its K/V already in the cache.
    queries_per_block > 1: the multi-query kernel (consecutive sequences sharing blocks together).
    partition_size: fixed partitions of this many tokens (else the engine's, grown on the per-sequence
    path). out_index: where each of a row's Hq * D outputs goes (reference.OutputOrder.index)."""
    num_seqs, num_heads, head_dim = q.shape
    min_partition = MIN_PARTITION if queries_per_block == 1 else MULTI_QUERY_MIN_PARTITION
    part = partition_size or partition_size_for(max(1, max_seq_len), min_partition)
    grown = grown_partition_for(part) if not partition_size and queries_per_block == 1 else 0
    # counted in the base size: enough partitions however a sequence's grow
    num_partitions = -(-max(1, max_seq_len) // part)
    out = torch.empty_like(q)
    tmp_out = torch.empty(
        (num_seqs, num_heads, num_partitions, head_dim), dtype=torch.float32, device=q.device
    )
    tmp_max = torch.empty((num_seqs, num_heads, num_partitions), dtype=torch.float32, device=q.device)
    tmp_sum = torch.empty_like(tmp_max)
    torch.ops.exlsp.paged_attention_decode(
        q, kv_cache_layer, block_tables, seq_lens, float(scale), int(sliding_window or 0), part,
        queries_per_block, out, tmp_out, tmp_max, tmp_sum,
        _merge_counters(q.device, num_seqs * kv_cache_layer.shape[3]) if queries_per_block == 1 else None,
        out_index, grown,
    )  # fmt: skip
    return out


def _merge_counters(device: torch.device, count: int) -> torch.Tensor | None:
    """Zeroed counters with which the decode kernel merges its partitions in its last block per
    sequence and KV head (one kernel less per layer); None (a separate merge kernel) where the
    device's counters were not created at load, since they must not be allocated under a graph
    capture, or there are too many rows."""
    counters = counters_of(device)
    if counters is None or count > counters.numel() - ATTENTION_COUNTERS_OFFSET:
        return None
    return counters[ATTENTION_COUNTERS_OFFSET : ATTENTION_COUNTERS_OFFSET + count]


def decode_kernel_covers(head_dim: int, group: int) -> bool:
    """Head sizes and query heads per KV head the decode kernel is compiled for."""
    return head_dim in (64, 128) and 1 <= group <= 8


def _decode_supported(q: torch.Tensor, kv_cache_layer: torch.Tensor) -> bool:
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = kv_cache_layer.shape[3]
    return (
        num_heads % num_kv_heads == 0
        and decode_kernel_covers(head_dim, num_heads // num_kv_heads)
        and q.stride(2) == 1
        and q.stride(1) == head_dim
    )


def paged_attention(q, kv_cache_layer, attn: AttentionMetadata, scale, sliding_window, out_order=None):
    if not is_model_dtype(q, kv_cache_layer):
        return reference.paged_attention(q, kv_cache_layer, attn, scale, sliding_window, out_order)
    if attn.is_decode and q.shape[0] == attn.num_seqs and _decode_supported(q, kv_cache_layer):
        return decode_attention(
            q,
            kv_cache_layer,
            attn.block_tables.int(),
            attn.seq_lens.int(),
            attn.max_seq_len,
            scale,
            sliding_window,
            queries_per_block=QUERIES_PER_BLOCK if attn.prompt_tokens_as_sequences else 1,
            out_index=None if out_order is None else out_order.index,
        )
    return reference.in_order(prefill_attention(q, kv_cache_layer, attn, scale, sliding_window), out_order)
