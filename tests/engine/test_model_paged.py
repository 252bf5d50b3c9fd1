"""forward_paged through a persistent paged KV cache gives the same logits as the cache-free forward:
prefill in chunks, then decode token by token, several sequences in one mixed batch."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import engine
from engine.attention_metadata import AttentionMetadata
from engine.models.base import dense_attention_metadata
from tests.tiny_models import make_tiny_checkpoint

BLOCK_SIZE = 4


def step_metadata(steps, block_tables):
    """steps: per sequence (num_cached_tokens, num_new_tokens); block_tables: per sequence block ids."""
    new_lens = torch.tensor([new for _, new in steps])
    slots, positions = [], []
    for (cached, new), blocks in zip(steps, block_tables, strict=True):
        for pos in range(cached, cached + new):
            slots.append(blocks[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE)
            positions.append(pos)
    width = max(len(b) for b in block_tables)
    attn = AttentionMetadata(
        query_start_loc=F.pad(new_lens.cumsum(0), (1, 0)).to(torch.int32),
        seq_lens=torch.tensor([c + n for c, n in steps], dtype=torch.int32),
        block_tables=torch.tensor([b + [0] * (width - len(b)) for b in block_tables], dtype=torch.int32),
        slot_mapping=torch.tensor(slots),
        max_query_len=int(new_lens.max()),
        max_seq_len=max(c + n for c, n in steps),
        block_size=BLOCK_SIZE,
    )
    return attn, torch.tensor(positions)


def test_chunked_prefill_and_decode_match_the_full_forward(tmp_path):
    model = engine.load_model(make_tiny_checkpoint(tmp_path, "mistral", sliding_window=6), device="cpu")
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, model.config.vocab_size, (n,), generator=gen) for n in (15, 9)]
    full = [model(s[None])[0] for s in seqs]  # (S, V) each, no cache

    # sequence 0 in blocks 7, 2, 5, 0; sequence 1 in blocks 3, 6, 1: interleaved, out of order
    block_tables = [[7, 2, 5, 0], [3, 6, 1]]
    kv_cache = model.allocate_kv_cache(num_blocks=8, block_size=BLOCK_SIZE)
    # step 1: seq 0 prefills 6 tokens, seq 1 prefills 5; step 2: seq 0 prefills 7 more, seq 1 decodes;
    # then both decode one token per step
    schedule = [[(0, 6), (0, 5)], [(6, 7), (5, 1)], [(13, 1), (6, 1)], [(14, 1), (7, 1)], [(None, 0), (8, 1)]]
    for step in schedule:
        active = [(i, c, n) for i, (c, n) in enumerate(step) if n]
        attn, positions = step_metadata(
            [(c, n) for _, c, n in active], [block_tables[i] for i, _, _ in active]
        )
        input_ids = torch.cat([seqs[i][c : c + n] for i, c, n in active])
        hidden = model.forward_paged(input_ids, positions, attn, kv_cache)
        assert hidden.shape == (input_ids.shape[0], model.config.hidden_size)
        logits = model.compute_logits(hidden)
        assert logits.dtype == torch.float32
        start = 0
        for i, c, n in active:
            torch.testing.assert_close(logits[start : start + n], full[i][c : c + n], rtol=1e-4, atol=1e-4)
            start += n


def test_load_model_returns_the_documented_module(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "qwen2")
    vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]
    model = engine.load_model(folder, device="cpu")
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model.config.vocab_size == vocab_size and model.config.model_type == "qwen2"
    logits = model(torch.zeros(3, 5, dtype=torch.long))
    assert logits.shape == (3, 5, vocab_size) and logits.dtype == torch.float32
    assert not logits.requires_grad
    kv_cache = model.allocate_kv_cache(num_blocks=4, block_size=16)
    assert kv_cache.shape == (2, 2, 4, 16, 2, 16) and kv_cache.dtype == torch.float32


def test_casting_the_model_keeps_the_rotary_table_in_float32(tmp_path):
    model = engine.load_model(
        make_tiny_checkpoint(tmp_path, "llama", quant={"bits": 4, "group_size": 32}), device="cpu"
    )
    ids = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    reference = model(ids)
    model.to(torch.bfloat16)
    assert model.rotary.cos_sin_cache.dtype == torch.float32
    assert model.layers[0].self_attn.rotary.cos_sin_cache.dtype == torch.float32  # one shared table
    assert (
        model.dtype == torch.bfloat16
        and model.layers[0].mlp.down_proj.packed().scales.dtype == torch.bfloat16
    )
    logits = model(ids)
    assert ((logits - reference).norm() / reference.norm()).item() < 5e-2


@pytest.mark.parametrize("batch_size, seq_len", [(2, 1), (3, 5), (1, 16)])
def test_dense_metadata_slots_are_contiguous_whatever_the_batch(batch_size, seq_len):
    """The CUDA K/V write reads slot_mapping as a flat array: a (B, 1) slice viewed as (B,) would keep
    the block stride (it did, and the kernel refused it)."""
    attn = dense_attention_metadata(batch_size, seq_len, 16, torch.device("cpu"))
    assert attn.slot_mapping.is_contiguous()
    expected = [b * 16 * -(-seq_len // 16) + t for b in range(batch_size) for t in range(seq_len)]
    assert attn.slot_mapping.tolist() == expected


def test_engine_keeps_the_rotary_rows_its_cache_can_reach(tmp_path):
    """A 16-block cache of 16 tokens holds positions 0..255: the runner trims the table to them,
    with the same values, and a cast keeps the trim (the table is rebuilt in float32)."""
    folder = make_tiny_checkpoint(tmp_path, "llama")
    full = engine.load_model(folder, device="cpu").rotary.cos_sin_cache.clone()
    assert full.shape[0] > 256  # the model reaches further than this cache
    with engine.Engine(folder, device="cpu", num_cache_blocks=16, block_size=16) as eng:
        rotary = eng.model.rotary
        assert torch.equal(rotary.cos_sin_cache, full[:256])
        rotary.to(torch.float16)
        assert rotary.cos_sin_cache.dtype == torch.float32 and torch.equal(rotary.cos_sin_cache, full[:256])
        assert eng.generate([1, 2, 3], max_new_tokens=3).token_ids
