"""The reference paged attention equals plain dense causal attention over each whole sequence,
whatever the block size, block placement, GQA ratio, sliding window or mix of prefill and decode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import ops
from engine.attention_metadata import AttentionMetadata

# (cached tokens, new tokens) per sequence: a fresh prefill, decodes, a chunk continuing a prefill
MIXED_BATCH = [(0, 13), (20, 1), (5, 7), (33, 1), (0, 1)]


def dense_causal_attention(q, k, v, scale, sliding_window):
    """q (Tq, Hq, D) are the last Tq of the L tokens whose k, v (L, Hkv, D) are given."""
    num_queries, seq_len = q.shape[0], k.shape[0]
    offset = seq_len - num_queries
    allowed = torch.ones(num_queries, seq_len, dtype=torch.bool).tril(offset)
    if sliding_window is not None:
        allowed &= ~torch.ones(num_queries, seq_len, dtype=torch.bool).tril(offset - sliding_window)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1),
        v.transpose(0, 1),
        attn_mask=allowed,
        scale=scale,
        enable_gqa=True,
    )  # (Hq, Tq, D)
    return out.transpose(0, 1)


def build_batch(batch, block_size, num_kv_heads, head_dim, gen):
    """Random K/V per sequence placed in randomly chosen blocks of one pool: cached tokens written
    directly, new tokens through ops.write_kv. Returns (kv_cache_layer, attn, per-sequence K/V)."""
    blocks_per_seq = [-(-(cached + new) // block_size) for cached, new in batch]
    num_blocks = sum(blocks_per_seq) + 3  # some blocks stay unused
    kv_cache_layer = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"))
    pool = torch.randperm(num_blocks, generator=gen).tolist()
    block_tables = torch.zeros(len(batch), max(blocks_per_seq), dtype=torch.int32)  # 0-padded
    seq_kv, new_k, new_v, slot_mapping = [], [], [], []
    for i, ((cached, new), num_seq_blocks) in enumerate(zip(batch, blocks_per_seq, strict=True)):
        blocks = [pool.pop() for _ in range(num_seq_blocks)]
        block_tables[i, :num_seq_blocks] = torch.tensor(blocks)
        k = torch.randn(cached + new, num_kv_heads, head_dim, generator=gen)
        v = torch.randn(cached + new, num_kv_heads, head_dim, generator=gen)
        seq_kv.append((k, v))
        slots = [blocks[pos // block_size] * block_size + pos % block_size for pos in range(cached + new)]
        flat = kv_cache_layer.view(2, -1, num_kv_heads, head_dim)
        flat[0, slots[:cached]], flat[1, slots[:cached]] = k[:cached], v[:cached]
        new_k.append(k[cached:])
        new_v.append(v[cached:])
        slot_mapping += slots[cached:]
    new_lens = torch.tensor([new for _, new in batch])
    attn = AttentionMetadata(
        query_start_loc=F.pad(new_lens.cumsum(0), (1, 0)).to(torch.int32),
        seq_lens=torch.tensor([c + n for c, n in batch], dtype=torch.int32),
        block_tables=block_tables,
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64),
        max_query_len=max(n for _, n in batch),
        max_seq_len=max(c + n for c, n in batch),
        block_size=block_size,
    )
    ops.write_kv(torch.cat(new_k), torch.cat(new_v), kv_cache_layer, attn.slot_mapping)
    return kv_cache_layer, attn, seq_kv


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (8, 1)])
@pytest.mark.parametrize("sliding_window", [None, 5])
def test_paged_attention_equals_dense_causal_attention(block_size, num_heads, num_kv_heads, sliding_window):
    gen = torch.Generator().manual_seed(block_size * 100 + num_heads * 10 + num_kv_heads)
    head_dim, scale = 16, 16**-0.5
    kv_cache_layer, attn, seq_kv = build_batch(MIXED_BATCH, block_size, num_kv_heads, head_dim, gen)
    q = torch.randn(attn.slot_mapping.shape[0], num_heads, head_dim, generator=gen)

    out = ops.paged_attention(q, kv_cache_layer, attn, scale, sliding_window)

    assert out.shape == q.shape
    starts = attn.query_start_loc.tolist()
    for i, (k, v) in enumerate(seq_kv):
        expected = dense_causal_attention(q[starts[i] : starts[i + 1]], k, v, scale, sliding_window)
        torch.testing.assert_close(out[starts[i] : starts[i + 1]], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sliding_window", [None, 100])
@pytest.mark.parametrize("num_cached", [40, 0])  # 0: the first chunk takes the unmasked causal call
def test_long_prefill_split_into_query_chunks(sliding_window, num_cached):
    gen = torch.Generator().manual_seed(2)
    batch = [(num_cached, 600), (0, 1)]  # 600 new tokens: three query chunks of the reference
    kv_cache_layer, attn, seq_kv = build_batch(batch, 16, 2, 8, gen)
    q = torch.randn(601, 4, 8, generator=gen)
    out = ops.paged_attention(q, kv_cache_layer, attn, 0.3, sliding_window)
    torch.testing.assert_close(out[:600], dense_causal_attention(q[:600], *seq_kv[0], 0.3, sliding_window))
    torch.testing.assert_close(out[600:], dense_causal_attention(q[600:], *seq_kv[1], 0.3, sliding_window))


def test_decode_only_batch():
    gen = torch.Generator().manual_seed(1)
    batch = [(9, 1), (1, 1), (31, 1)]
    kv_cache_layer, attn, seq_kv = build_batch(batch, 8, 2, 16, gen)
    assert attn.is_decode
    q = torch.randn(3, 4, 16, generator=gen)
    out = ops.paged_attention(q, kv_cache_layer, attn, 0.25, None)
    for i, (k, v) in enumerate(seq_kv):
        torch.testing.assert_close(out[i : i + 1], dense_causal_attention(q[i : i + 1], k, v, 0.25, None))


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("sliding_window", [None, 5])
@pytest.mark.parametrize("batch", [[(9, 1), (1, 1), (31, 1), (0, 1)], [(22, 1)]])
def test_batched_decode_equals_dense_attention(block_size, num_heads, num_kv_heads, sliding_window, batch):
    """The one-call decode path (every sequence padded to the longest) sees neither its padding, which
    holds NaN here, nor another sequence's keys."""
    gen = torch.Generator().manual_seed(block_size + 10 * num_kv_heads + len(batch))
    kv_cache_layer, attn, seq_kv = build_batch(batch, block_size, num_kv_heads, 16, gen)
    assert attn.is_decode
    q = torch.randn(len(batch), num_heads, 16, generator=gen)
    out = ops.paged_attention(q, kv_cache_layer, attn, 0.25, sliding_window)
    assert not out.isnan().any()
    for i, (k, v) in enumerate(seq_kv):
        expected = dense_causal_attention(q[i : i + 1], k, v, 0.25, sliding_window)
        torch.testing.assert_close(out[i : i + 1], expected, rtol=1e-5, atol=1e-5)


def test_write_kv_stores_at_slots_and_skips_negative_ones():
    kv_cache_layer = torch.zeros(2, 3, 4, 1, 2)  # 3 blocks of 4 slots, 1 kv head, head_dim 2
    k = torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]], [[3.0, 3.0]]])
    ops.write_kv(k, -k, kv_cache_layer, torch.tensor([5, -1, 11]))
    flat = kv_cache_layer.view(2, 12, 2)
    assert flat[0, 5].tolist() == [1.0, 1.0] and flat[1, 5].tolist() == [-1.0, -1.0]
    assert flat[0, 11].tolist() == [3.0, 3.0]
    assert int((flat != 0).any(-1).sum()) == 4  # nothing else written: the -1 token went nowhere
