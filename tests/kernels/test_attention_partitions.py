"""Decode attention's partitions grown from each sequence's length (the op's max_partition_size,
csrc/attention_merge.cuh partition_size_of) on the GPU: a batch of mixed lengths against the reference,
the partitions each sequence fills, the fixed path when the size may not grow, and the engine's choice."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.ops import reference
from tests.kernels.gpu import DTYPES, REL_TOL, exlsp_ops, generator, gpu, poisoned, rel_err
from tests.kernels.test_attention import paged_batch, run_decode_kernel

pytestmark = gpu

PARTITION = 128
GROW_ABOVE_PARTITIONS = 32  # csrc/attention_merge.cuh kGrowAbovePartitions
CAPTURE_LEN = 16384  # partitions counted for a graph captured for a 16k cache, as the engine's are
# 5: one partition; 2048: 16 of 128 (no growth); 4100: just past 32 x 128, a multiple of no size;
# 8192: 32 of 256; 9000: past 32 x 256 (512 where allowed), a multiple of no size either
SEQ_LENS = [5, 2048, 4100, 8192, 9000]
HEADS = {"llama3-8b-gqa4-d128": (32, 8, 128), "gqa8-d64": (8, 1, 64)}  # (Hq, Hkv, D)


def partitions_filled(seq_len: int, max_part: int) -> int:
    """Partitions of a sequence by the kernel's size rule: 128 tokens doubled up to max_part while the
    sequence would need more than 32 of them."""
    size = PARTITION
    while size * 2 <= max_part and seq_len > GROW_ABOVE_PARTITIONS * size:
        size *= 2
    return -(-seq_len // size)


def mixed_batch(hq, hkv, d, dtype, seed):
    """SEQ_LENS and a padding row (length 0, as a graph bucket has), partitions counted for
    CAPTURE_LEN; the reference of the real rows."""
    cache, attn = paged_batch(SEQ_LENS, [1] * len(SEQ_LENS), hkv, d, dtype, seed=seed)
    q = torch.randn((len(SEQ_LENS) + 1, hq, d), generator=generator(seed + 1), device="cuda").to(dtype)
    captured = dataclasses.replace(
        attn,
        seq_lens=torch.cat([attn.seq_lens, attn.seq_lens.new_zeros(1)]),
        block_tables=torch.cat([attn.block_tables, attn.block_tables[:1]]),
        max_seq_len=CAPTURE_LEN,
    )
    return q, cache, captured, attn


@pytest.mark.parametrize("window", [None, 1000], ids=["full", "window-1000"])
@pytest.mark.parametrize("max_part", [256, 512])
@pytest.mark.parametrize("heads", HEADS.values(), ids=HEADS.keys())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grown_partitions_match_reference(dtype, heads, max_part, window):
    """Each sequence with its own partition size: the merge kernel's output matches the reference,
    each sequence fills only the partitions its size gives (the rest of the poisoned scratch stays
    NaN), and the merge in the last block gives the merge kernel's bits, twice (counters left zero)."""
    hq, hkv, d = heads
    q, cache, captured, attn = mixed_batch(hq, hkv, d, dtype, seed=hq + max_part + (window or 0))
    scale = d**-0.5
    ref = reference.paged_attention(q[:-1], cache, attn, scale, window)
    tmp_max = poisoned((q.shape[0], hq, CAPTURE_LEN // PARTITION), torch.float32)
    separate = run_decode_kernel(
        q, cache, captured, scale, window, PARTITION, 1, max_part=max_part, tmp_max=tmp_max
    )
    assert rel_err(separate[:-1], ref) <= REL_TOL
    filled = [partitions_filled(n, max_part) for n in SEQ_LENS] + [0]
    assert tmp_max.isfinite().sum(-1).tolist() == [[n] * hq for n in filled]
    counters = torch.zeros(q.shape[0] * hkv, dtype=torch.int32, device="cuda")
    for _ in range(2):
        merged = run_decode_kernel(
            q, cache, captured, scale, window, PARTITION, 1, counters, max_part=max_part
        )
        assert torch.equal(merged, separate)
        assert not counters.any()
    assert not merged[-1].any()


@pytest.mark.parametrize("part", [128, 256])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_partitions_that_may_not_grow_are_the_fixed_path(dtype, part):
    """max_partition_size equal to partition_size: bit for bit the fixed partitions (0), with either
    merge."""
    hq, hkv, d = HEADS["llama3-8b-gqa4-d128"]
    q, cache, captured, _ = mixed_batch(hq, hkv, d, dtype, seed=part)
    counters = torch.zeros(q.shape[0] * hkv, dtype=torch.int32, device="cuda")
    for merge_counters in (None, counters):
        fixed = run_decode_kernel(q, cache, captured, d**-0.5, None, part, 1, merge_counters)
        same = run_decode_kernel(q, cache, captured, d**-0.5, None, part, 1, merge_counters, max_part=part)
        assert torch.equal(same, fixed)


def test_the_engine_grows_partitions_unless_given_a_size():
    """cuda_attention.decode_attention: partitions grown up to GROWN_PARTITION on the ordinary path
    (the op's bits with that max), fixed when the caller gives a size."""
    from engine.ops import cuda_attention

    hq, hkv, d = HEADS["llama3-8b-gqa4-d128"]
    q, cache, captured, _ = mixed_batch(hq, hkv, d, torch.float16, seed=5)
    grown = run_decode_kernel(
        q, cache, captured, d**-0.5, None, PARTITION, 1, max_part=cuda_attention.GROWN_PARTITION
    )
    fixed = run_decode_kernel(q, cache, captured, d**-0.5, None, PARTITION, 1)
    args = (q, cache, captured.block_tables, captured.seq_lens, CAPTURE_LEN, d**-0.5, None)
    assert torch.equal(cuda_attention.decode_attention(*args), grown)
    assert torch.equal(cuda_attention.decode_attention(*args, partition_size=PARTITION), fixed)
    assert not torch.equal(grown, fixed)  # 4100, 8192 and 9000 tokens split otherwise


def test_the_launch_takes_the_largest_partitions_shared_memory():
    """8 query heads per KV head at D = 128: the scores of 512 tokens (16 KB) and the K/V stages (68
    KB) pass an 80 KB limit only with partitions of 128 (4 KB of scores): a kernel that may grow its
    partitions to 512 asks for their shared memory at launch, however short the batch."""
    ops = exlsp_ops()
    hq, hkv, d = 16, 2, 128
    cache, attn = paged_batch([300, 9000], [1, 1], hkv, d, torch.float16, seed=9)
    q = torch.randn((2, hq, d), generator=generator(10), device="cuda").half()
    ref = reference.paged_attention(q, cache, attn, d**-0.5, None)
    assert (
        rel_err(run_decode_kernel(q, cache, attn, d**-0.5, None, PARTITION, 1, max_part=512), ref) <= REL_TOL
    )
    ops.set_decode_attention_smem_limit(80 * 1024)
    try:
        assert rel_err(run_decode_kernel(q, cache, attn, d**-0.5, None, PARTITION, 1), ref) <= REL_TOL
        with pytest.raises(RuntimeError, match="paged_attention_decode: kernel launch failed"):
            run_decode_kernel(q, cache, attn, d**-0.5, None, PARTITION, 1, max_part=512)
    finally:
        ops.set_decode_attention_smem_limit(0)


def test_partitions_grow_by_doubling_on_the_per_sequence_path_only():
    cache, attn = paged_batch([40, 50], [1, 1], 2, 64, torch.float16, seed=3)
    q = torch.randn((2, 8, 64), device="cuda").half()
    for max_part in (64, 384, 1024):  # under partition_size, not a doubling of it, over 512
        with pytest.raises(RuntimeError, match="max_partition_size must be 0 \\(fixed partitions\\)"):
            run_decode_kernel(q, cache, attn, 0.125, None, PARTITION, 1, max_part=max_part)
    with pytest.raises(RuntimeError, match="partitions grow on the per-sequence path only"):
        run_decode_kernel(q, cache, attn, 0.125, None, PARTITION, 16, max_part=256)
