"""Paged attention on the GPU: the flash-decoding kernel and the prefill path, against the reference
(float32 math over the same paged cache)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.attention_metadata import AttentionMetadata
from engine.ops import reference
from tests.kernels.gpu import DTYPES, REL_TOL, exlsp_ops, generator, gpu, poisoned, rel_err

pytestmark = gpu

BLOCK_SIZE = 16


def paged_batch(
    seq_lens, query_lens, num_kv_heads, head_dim, dtype, seed, extra_blocks=7, block_size=BLOCK_SIZE
):
    """A random cache whose blocks are handed out in shuffled order, and its metadata."""
    gen = generator(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + extra_blocks
    cache = torch.randn((2, num_blocks, block_size, num_kv_heads, head_dim), generator=gen, device="cuda").to(
        dtype
    )
    order = torch.randperm(num_blocks, generator=gen, device="cuda").tolist()
    width = max(blocks_per_seq)
    tables, slots, taken = [], [], 0
    for seq_len, query_len, nb in zip(seq_lens, query_lens, blocks_per_seq, strict=True):
        table = order[taken : taken + nb]
        taken += nb
        tables.append(table + [0] * (width - nb))
        slots += [
            table[p // block_size] * block_size + p % block_size for p in range(seq_len - query_len, seq_len)
        ]
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    attn = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device="cuda"),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        block_tables=torch.tensor(tables, dtype=torch.int32, device="cuda"),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device="cuda"),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        block_size=block_size,
    )
    return cache, attn


# (seq_lens, Hq, Hkv, D, sliding_window)
DECODE_CASES = {
    "one-token": ([1], 8, 8, 128, None),
    "llama3-8b-gqa4": ([1, 17, 300, 2049], 32, 8, 128, None),
    "qwen-7b-gqa7": ([5000, 33], 28, 4, 128, None),
    "qwen-1.5b-gqa6-d128": ([129, 700], 12, 2, 128, None),
    "d64-mha": ([64, 65, 1000], 4, 4, 64, None),
    "gqa8-long": ([9000], 8, 1, 64, None),
    "sliding-window": ([40, 1500, 2100], 16, 4, 128, 100),
    # one partition (written directly, no merge) up to 128 tokens, two from 129 on
    "partition-edges": ([127, 128, 129, 256], 8, 2, 128, None),
    # 16+ independent sequences: runs of queries_per_block with no shared blocks
    "twenty-sequences": ([1 + 97 * i for i in range(20)], 8, 2, 128, None),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DECODE_CASES.values(), ids=DECODE_CASES.keys())
def test_decode_kernel_matches_reference(case, dtype):
    from engine.ops import cuda_attention

    seq_lens, hq, hkv, d, window = case
    cache, attn = paged_batch(seq_lens, [1] * len(seq_lens), hkv, d, dtype, seed=sum(seq_lens) + hq)
    q = torch.randn((len(seq_lens), hq, d), generator=generator(1), device="cuda").to(dtype)
    scale = d**-0.5
    ref = reference.paged_attention(q, cache, attn, scale, window)

    part = cuda_attention.partition_size_for(attn.max_seq_len)
    out = run_decode_kernel(q, cache, attn, scale, window, part, queries_per_block=1)
    assert rel_err(out, ref) <= REL_TOL
    assert rel_err(cuda_attention.paged_attention(q, cache, attn, scale, window), ref) <= REL_TOL
    # Independent sequences through the multi-query kernel take the per-sequence path: bit for bit.
    multi = run_decode_kernel(q, cache, attn, scale, window, part, queries_per_block=16)
    assert torch.equal(multi, out)


def run_decode_kernel(
    q, cache, attn, scale, window, part, queries_per_block, counters=None, out_index=None, max_part=0,
    tmp_max=None,
):  # fmt: skip
    """The op on poisoned outputs and scratch, partitions of `part` tokens (grown up to max_part; 0:
    fixed) counted for attn.max_seq_len. tmp_max: the caller's poisoned (S, Hq, partitions) scratch,
    to see which partitions were written."""
    num_seqs, hq, d = q.shape
    num_parts = -(-attn.max_seq_len // part)
    out = poisoned(q.shape, q.dtype)
    tmp_out = poisoned((num_seqs, hq, num_parts, d), torch.float32)
    tmp_max = poisoned(tmp_out.shape[:3], torch.float32) if tmp_max is None else tmp_max
    tmp_sum = poisoned(tmp_out.shape[:3], torch.float32)
    exlsp_ops().paged_attention_decode(
        q, cache, attn.block_tables, attn.seq_lens, scale, window or 0, part, queries_per_block,
        out, tmp_out, tmp_max, tmp_sum, counters, out_index, max_part,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DECODE_CASES.values(), ids=DECODE_CASES.keys())
def test_decode_merge_in_the_last_block_equals_the_merge_kernel(case, dtype):
    """With counters the decode kernel's last block per (sequence, KV head) merges the partitions:
    bit for bit the separate merge kernel's output, twice in a row (the counters are left zero), and
    zeros for a padding row of length 0 (as a CUDA graph bucket has)."""
    from engine.ops import cuda_attention

    seq_lens, hq, hkv, d, window = case
    cache, attn = paged_batch(seq_lens, [1] * len(seq_lens), hkv, d, dtype, seed=sum(seq_lens) + hq + 1)
    attn = dataclasses.replace(
        attn,  # and a padding row
        seq_lens=torch.cat([attn.seq_lens, attn.seq_lens.new_zeros(1)]),
        block_tables=torch.cat([attn.block_tables, attn.block_tables[:1]]),
    )
    q = torch.randn((len(seq_lens) + 1, hq, d), generator=generator(2), device="cuda").to(dtype)
    scale = d**-0.5
    part = cuda_attention.partition_size_for(attn.max_seq_len)
    separate = run_decode_kernel(q, cache, attn, scale, window, part, 1)
    counters = torch.zeros(len(seq_lens) * hkv + hkv + 3, dtype=torch.int32, device="cuda")
    for _ in range(2):
        merged = run_decode_kernel(q, cache, attn, scale, window, part, 1, counters)
        assert torch.equal(merged, separate)
        assert not counters.any()
    assert not merged[-1].any()


@pytest.mark.parametrize("mode", ["merge-in-kernel", "merge-kernel", "multi-query"])
@pytest.mark.parametrize("seq_lens", [[1, 100, 128, 129, 2049], [7]], ids=["mixed", "one-short"])
def test_decode_writes_each_output_where_the_act_order_puts_it(seq_lens, mode):
    """out_index (o's act-order moved into the attention): every path's output equals its unordered
    output gathered by the permutation, bit for bit, padding rows' zeros included."""
    exlsp_ops()
    hq, hkv, d = 32, 8, 128
    cache, attn = paged_batch(seq_lens, [1] * len(seq_lens), hkv, d, torch.float16, seed=len(seq_lens))
    attn = dataclasses.replace(
        attn,  # and a padding row
        seq_lens=torch.cat([attn.seq_lens, attn.seq_lens.new_zeros(1)]),
        block_tables=torch.cat([attn.block_tables, attn.block_tables[:1]]),
    )
    q = torch.randn((len(seq_lens) + 1, hq, d), generator=generator(3), device="cuda").half()
    perm = torch.randperm(hq * d, generator=generator(4), device="cuda")
    index = torch.argsort(perm).int()
    from engine.ops import cuda_attention

    part = cuda_attention.partition_size_for(attn.max_seq_len)
    queries = 16 if mode == "multi-query" else 1

    def counters():
        if mode != "merge-in-kernel":
            return None
        return torch.zeros(len(seq_lens) * hkv + hkv, dtype=torch.int32, device="cuda")

    plain = run_decode_kernel(q, cache, attn, d**-0.5, None, part, queries, counters())
    ordered = run_decode_kernel(q, cache, attn, d**-0.5, None, part, queries, counters(), index)
    assert torch.equal(ordered.view(q.shape[0], -1), plain.view(q.shape[0], -1)[:, perm])


def test_decode_merge_counters_must_cover_every_row():
    cache, attn = paged_batch([40, 50], [1, 1], 2, 64, torch.float16, seed=3)
    q = torch.randn((2, 8, 64), device="cuda").half()
    with pytest.raises(
        RuntimeError, match="counters must be int32 with at least num_seqs \\* Hkv = 4 elements"
    ):
        run_decode_kernel(
            q, cache, attn, 0.125, None, 128, 1, torch.zeros(3, dtype=torch.int32, device="cuda")
        )


# The multi-query path: the new tokens of one prompt as one-token sequences (the short-prefill
# graph path) sharing their blocks. (cached prefix, new tokens, Hq, Hkv, D, window, block size,
# partition size or None for the engine's choice)
MULTI_QUERY_CASES = {
    "16-after-1000-gqa4-d128": (1000, 16, 32, 8, 128, None, 16, None),
    "1-query": (300, 1, 8, 2, 128, None, 16, None),
    "2-queries-gqa8-d64": (257, 2, 8, 1, 64, None, 16, None),
    "3-queries-gqa1-d128": (129, 3, 4, 4, 128, None, 16, None),
    "5-queries-gqa1-d64": (130, 5, 4, 4, 64, None, 16, None),
    "7-queries-gqa7": (999, 7, 28, 4, 128, None, 16, None),
    "13-queries-gqa6-block8": (517, 13, 12, 2, 128, None, 8, None),
    "16-queries-gqa8-block32": (4000, 16, 16, 2, 128, None, 32, None),
    "16-queries-gqa8-d64-long": (9000, 16, 8, 1, 64, None, 16, None),
    "16-queries-gqa1": (700, 16, 4, 4, 128, None, 16, None),
    "16-queries-gqa4-d64": (333, 16, 16, 4, 64, None, 16, None),
    "no-prefix": (0, 16, 32, 8, 128, None, 16, None),
    "shorter-than-a-partition": (20, 11, 32, 8, 128, None, 16, None),
    "partitions-straddle-blocks": (611, 16, 8, 2, 128, None, 16, 40),
    "small-partitions": (250, 9, 8, 2, 64, None, 16, 8),
    "sliding-window": (1500, 16, 16, 4, 128, 100, 16, None),
    "window-shorter-than-the-new-tokens": (300, 12, 8, 2, 64, 8, 16, None),
    "window-at-a-partition-edge": (245, 16, 8, 2, 128, 128, 16, None),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MULTI_QUERY_CASES.values(), ids=MULTI_QUERY_CASES.keys())
def test_multi_query_kernel_matches_reference(case, dtype):
    from engine.cuda_graph import token_level_metadata
    from engine.ops import cuda_attention

    prefix, new, hq, hkv, d, window, block_size, part = case
    cache, attn = paged_batch(
        [prefix + new], [new], hkv, d, dtype, seed=prefix + new + hq, block_size=block_size
    )
    q = torch.randn((new, hq, d), generator=generator(7), device="cuda").to(dtype)
    scale = d**-0.5
    ref = reference.paged_attention(q, cache, attn, scale, window)
    tokens = token_level_metadata(attn, new)
    parts = (
        [part]
        if part
        else [
            128,
            cuda_attention.partition_size_for(tokens.max_seq_len, cuda_attention.MULTI_QUERY_MIN_PARTITION),
        ]
    )
    for queries_per_block in (16, 1, 4):
        for p in parts:
            out = run_decode_kernel(q, cache, tokens, scale, window, p, queries_per_block)
            assert rel_err(out, ref) <= REL_TOL, (queries_per_block, p)
    assert rel_err(cuda_attention.paged_attention(q, cache, tokens, scale, window), ref) <= REL_TOL


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multi_query_kernel_in_a_mixed_batch(dtype):
    """Prompts and decode sequences side by side, runs crossing prompt boundaries, and padding rows
    (sequence length 0, as in a CUDA graph bucket): each row as the reference says."""
    from engine.cuda_graph import token_level_metadata
    from engine.ops import cuda_attention

    seq_lens, query_lens = [1200, 77, 530, 16, 2049], [9, 1, 16, 16, 1]
    hq, hkv, d = 32, 8, 128
    cache, attn = paged_batch(seq_lens, query_lens, hkv, d, dtype, seed=11)
    num_tokens = sum(query_lens)
    q = torch.randn((num_tokens, hq, d), generator=generator(8), device="cuda").to(dtype)
    ref = reference.paged_attention(q, cache, attn, d**-0.5, None)
    tokens = token_level_metadata(attn, num_tokens)
    padding = 5
    padded = AttentionMetadata(
        query_start_loc=torch.arange(num_tokens + padding + 1, dtype=torch.int32, device="cuda"),
        seq_lens=torch.cat([tokens.seq_lens, torch.zeros(padding, dtype=torch.int32, device="cuda")]),
        block_tables=torch.cat([tokens.block_tables, torch.zeros_like(tokens.block_tables[:padding])]),
        slot_mapping=tokens.slot_mapping,
        max_query_len=1,
        max_seq_len=4096,  # as a graph captured for a longer context: unused partitions stay out
        block_size=BLOCK_SIZE,
    )
    q_padded = torch.cat([q, torch.randn((padding, hq, d), generator=generator(9), device="cuda").to(dtype)])
    part = cuda_attention.partition_size_for(padded.max_seq_len)
    for queries_per_block in (16, 8, 1):
        out = run_decode_kernel(q_padded, cache, padded, d**-0.5, None, part, queries_per_block)
        assert rel_err(out[:num_tokens], ref) <= REL_TOL, queries_per_block


def test_decode_kernel_with_more_partitions_than_the_context_needs():
    """As under a CUDA graph captured for a longer context: unused partitions must not leak in."""
    from engine.ops import cuda_attention

    exlsp_ops()
    cache, attn = paged_batch([37, 300], [1, 1], 2, 128, torch.float16, seed=5)
    q = torch.randn((2, 8, 128), generator=generator(6), device="cuda").half()
    ref = reference.paged_attention(q, cache, attn, 0.1, None)
    out = cuda_attention.decode_attention(q, cache, attn.block_tables, attn.seq_lens, 40000, 0.1, None)
    assert rel_err(out, ref) <= REL_TOL


SM86_SMEM_PER_BLOCK = 99 * 1024  # the opt-in limit of sm_86 / sm_89 cards (A10, L4, RTX 30xx / 40xx)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "seq_lens,hq,hkv", [([1, 300, 2049], 16, 2), ([70000], 8, 1)], ids=["gqa8", "gqa8-512-token-partitions"]
)
def test_decode_kernels_fit_a_99kb_card(seq_lens, hq, hkv, dtype):
    """8 query heads per KV head at D = 128 (CodeLlama-34B, Llama-3-70B shapes) with the longest
    partitions are the most shared memory the decode kernels take: under the 99 KB that sm_86 / sm_89
    allow per block, every path (merge kernel, merge in the last block, multi-query) still launches
    and matches the reference. A limit below that need makes the launch fail, so the limit is real."""
    from engine.cuda_graph import token_level_metadata
    from engine.ops import cuda_attention

    ops = exlsp_ops()
    d = 128
    cache, attn = paged_batch(seq_lens, [1] * len(seq_lens), hkv, d, dtype, seed=sum(seq_lens) + hq)
    q = torch.randn((len(seq_lens), hq, d), generator=generator(3), device="cuda").to(dtype)
    ref = reference.paged_attention(q, cache, attn, d**-0.5, None)
    part = cuda_attention.partition_size_for(attn.max_seq_len)
    ops.set_decode_attention_smem_limit(SM86_SMEM_PER_BLOCK)
    try:
        counters = torch.zeros(len(seq_lens) * hkv, dtype=torch.int32, device="cuda")
        for merge_counters in (None, counters):
            out = run_decode_kernel(q, cache, attn, d**-0.5, None, part, 1, merge_counters)
            assert rel_err(out, ref) <= REL_TOL
        # a short prompt's tokens as one-token sequences (the multi-query kernel)
        new = min(seq_lens[-1], 16)
        cache, attn = paged_batch([seq_lens[-1]], [new], hkv, d, dtype, seed=hq)
        q = torch.randn((new, hq, d), generator=generator(4), device="cuda").to(dtype)
        ref = reference.paged_attention(q, cache, attn, d**-0.5, None)
        tokens = token_level_metadata(attn, new)
        part = cuda_attention.partition_size_for(tokens.max_seq_len, cuda_attention.MULTI_QUERY_MIN_PARTITION)
        out = run_decode_kernel(q, cache, tokens, d**-0.5, None, part, 16)
        assert rel_err(out, ref) <= REL_TOL
        ops.set_decode_attention_smem_limit(48 * 1024)
        with pytest.raises(RuntimeError, match="paged_attention_decode: kernel launch failed"):
            run_decode_kernel(q, cache, tokens, d**-0.5, None, part, 16)
    finally:
        ops.set_decode_attention_smem_limit(0)


# (seq_lens, query_lens, Hq, Hkv, D, sliding_window)
PREFILL_CASES = {
    "fresh-prompts": ([50, 300], [50, 300], 8, 2, 128, None),
    "suffix-after-cached-prefix": ([1000, 64], [16, 64], 32, 8, 128, None),
    "mixed-decode-and-prefill": ([200, 31], [1, 7], 4, 4, 64, None),
    "sliding-window": ([500], [120], 8, 2, 64, 64),
}


@pytest.fixture
def prefill_kernel():
    """Sets cuda_prefill_attention's kernel for one test, cuDNN taking calls of 16 new tokens or more
    of any length (its code on small and odd shapes); the defaults and a clean state after."""
    from engine.ops import cuda_prefill_attention as module

    min_queries, multiple = module.CUDNN_MIN_QUERIES, module.CUDNN_SHAPE_MULTIPLE
    module.CUDNN_MIN_QUERIES, module.CUDNN_SHAPE_MULTIPLE = 16, 1
    yield module.set_prefill_attention
    module.CUDNN_MIN_QUERIES, module.CUDNN_SHAPE_MULTIPLE = min_queries, multiple
    module.set_prefill_attention("cudnn")
    module._cudnn_ok = True


@pytest.mark.parametrize("kernel", ["cudnn", "flash"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PREFILL_CASES.values(), ids=PREFILL_CASES.keys())
def test_prefill_attention_matches_reference(case, dtype, kernel, prefill_kernel):
    """Both kernels, on cold prompts (as many keys as queries) and on new tokens after a cached prefix
    (cuDNN's two parts merged); the one asked for must be the one that ran, short calls on flash."""
    from engine.ops import cuda_attention, cuda_prefill_attention

    prefill_kernel(kernel)
    seq_lens, query_lens, hq, hkv, d, window = case
    cache, attn = paged_batch(seq_lens, query_lens, hkv, d, dtype, seed=sum(seq_lens))
    q = torch.randn((sum(query_lens), hq, d), generator=generator(2), device="cuda").to(dtype)
    ref = reference.paged_attention(q, cache, attn, d**-0.5, window)
    cuda_prefill_attention.last_kernel = None
    assert rel_err(cuda_attention.paged_attention(q, cache, attn, d**-0.5, window), ref) <= REL_TOL
    if window is None:  # a sliding window takes the masked SDPA path, neither kernel
        # the last sequence's call: cuDNN if asked and its shape is one cuDNN takes
        takes = cuda_prefill_attention.cudnn_takes(query_lens[-1], seq_lens[-1])
        assert cuda_prefill_attention.last_kernel == (kernel if takes else "flash")


def test_prefill_attention_of_a_long_prompt_after_a_long_prefix(prefill_kernel):
    """Llama-3-8B's heads, 1000 new tokens after a 3000-token prefix: the cuDNN parts at a size where
    their merge weighs both, no less accurate than flash on the same inputs."""
    from engine.ops import cuda_attention, cuda_prefill_attention

    cuda_prefill_attention.CUDNN_MIN_QUERIES = 512  # the default; any length (the fixture's multiple 1)
    cache, attn = paged_batch([4000], [1000], 8, 128, torch.float16, seed=11)
    q = torch.randn((1000, 32, 128), generator=generator(12), device="cuda").half()
    outs = {}
    for kernel in ("flash", "cudnn"):
        prefill_kernel(kernel)
        outs[kernel] = cuda_attention.paged_attention(q, cache, attn, 128**-0.5, None)
        assert cuda_prefill_attention.last_kernel == kernel
    ref = reference.paged_attention(q, cache, attn, 128**-0.5, None)
    # fp16 rounding alone leaves flash at 3.1e-4 and cuDNN's parts merged in fp16 at 7.7e-4 (H200,
    # bench/NOTES.md 81g); a merge that is off (a wrong share, a log base) is 1e-2 or worse
    assert rel_err(outs["cudnn"], ref) <= 3 * rel_err(outs["flash"], ref)


def test_cudnn_plans_the_engines_whole_chunks_at_load(prefill_kernel):
    """warm_cudnn_plans on the GPU: every whole 2048-token chunk of an 8k context taken by cuDNN."""
    from engine.ops import cuda_prefill_attention as module

    module.CUDNN_MIN_QUERIES, module.CUDNN_SHAPE_MULTIPLE = 512, 256  # the defaults, not the fixture's
    assert module.warm_cudnn_plans(32, 8, 128, torch.float16, 2048, 8192) == 4
    prefill_kernel("flash")
    assert module.warm_cudnn_plans(32, 8, 128, torch.float16, 2048, 8192) == 0


@pytest.mark.parametrize("case", ["suffix-after-cached-prefix", "mixed-decode-and-prefill", "sliding-window"])
def test_prefill_as_one_token_sequences_matches_reference(case):
    """The graph path of short prefills: new tokens as one-token sequences through the decode kernel."""
    from engine.cuda_graph import token_level_metadata
    from engine.ops import cuda_attention

    exlsp_ops()
    seq_lens, query_lens, hq, hkv, d, window = PREFILL_CASES[case]
    cache, attn = paged_batch(seq_lens, query_lens, hkv, d, torch.float16, seed=3 + sum(query_lens))
    q = torch.randn((sum(query_lens), hq, d), generator=generator(4), device="cuda").half()
    ref = reference.paged_attention(q, cache, attn, d**-0.5, window)
    tokens = token_level_metadata(attn, q.shape[0])
    assert rel_err(cuda_attention.paged_attention(q, cache, tokens, d**-0.5, window), ref) <= REL_TOL
