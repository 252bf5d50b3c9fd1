"""The engine's step, driven by the GPU benchmarks (bench_gpu.py, bench_ttft.py) on a random model and a
KV cache of their own: the metadata of a sequence in blocks 0, 1, 2, ... of the cache, a forward to the
first token, a prompt prefilled chunk by chunk as the scheduler does, and ServedStep, which runs a step
as engine/model_runner.py does on a GPU.
"""

from __future__ import annotations

import torch

from engine import ops
from engine.attention_metadata import AttentionMetadata
from engine.cuda_graph import DecodeGraphs
from engine.loader import default_vocab_bits
from engine.models.base import dense_attention_metadata

BLOCK_SIZE = 16
CACHE_TOKENS = 16384
HEAD_IN_GRAPH = (
    True  # a decode step's head inside its graph, as the engine runs it (False: eager, for comparisons)
)


def served_model(name: str, generator: torch.Generator | None = None, act_order: bool = False):
    """(model, kv_cache): the random-weight model `name` (bench/gpu_shapes.py) with the head and
    embedding bits the engine serves on a GPU, and random_kv_cache's cache."""
    from bench.gpu_shapes import build_model

    head_bits, embed_bits = default_vocab_bits(torch.device("cuda"))
    model = build_model(name, head_bits=head_bits, embed_bits=embed_bits, act_order=act_order)
    return model, random_kv_cache(model, generator)


def random_kv_cache(model, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random cache of CACHE_TOKENS tokens for `model` (never time on zeros), the rotary table
    trimmed to it as engine/model_runner.py does."""
    num_blocks = CACHE_TOKENS // BLOCK_SIZE + 4
    kv_cache = model.allocate_kv_cache(num_blocks, BLOCK_SIZE)
    kv_cache.normal_(generator=generator)
    model.rotary.limit_positions(num_blocks * BLOCK_SIZE)
    return kv_cache


def suffix_metadata(prefix: int, suffix: int) -> AttentionMetadata:
    """`suffix` new tokens of one sequence after `prefix` cached ones, in blocks 0, 1, 2, ..."""
    nb = (prefix + suffix) // BLOCK_SIZE + 1
    return AttentionMetadata(
        query_start_loc=torch.tensor([0, suffix], dtype=torch.int32, device="cuda"),
        seq_lens=torch.tensor([prefix + suffix], dtype=torch.int32, device="cuda"),
        block_tables=torch.arange(nb, dtype=torch.int32, device="cuda").view(1, -1),
        slot_mapping=torch.arange(prefix, prefix + suffix, device="cuda"),
        max_query_len=suffix,
        max_seq_len=prefix + suffix,
        block_size=BLOCK_SIZE,
    )


def chunked_prefill(model, kv_cache, length: int, chunk: int) -> torch.Tensor:
    """A `length`-token prompt prefilled `chunk` tokens per forward, as the engine's scheduler does
    (engine/scheduler.py prefill_chunk_tokens); returns the first generated token."""
    ids = torch.randint(0, model.config.vocab_size, (length,), device="cuda")
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        pos = torch.arange(start, end, device="cuda")
        token = first_token_id(model, kv_cache, ids[start:end], pos, suffix_metadata(start, end - start))
    return token


def decode_metadata(ctx: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """(ids, positions, metadata) of one sequence whose token at position ctx is new."""
    return torch.tensor([7], device="cuda"), torch.tensor([ctx], device="cuda"), suffix_metadata(ctx, 1)


def cold_prompt(vocab_size: int, length: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """(ids, positions, metadata) of a `length`-token prompt with nothing cached: one forward pass's
    inputs for a cold prefill, as bench_gpu.py times it."""
    ids = torch.randint(0, vocab_size, (length,), device="cuda")
    pos = torch.arange(length, device="cuda")
    return ids, pos, dense_attention_metadata(1, length, BLOCK_SIZE, torch.device("cuda"))


def first_token_id(model, kv_cache, ids, pos, attn) -> torch.Tensor:
    hidden = model.forward_paged(ids, pos, attn, kv_cache)  # (T, H)
    return model.compute_logits(hidden[-1:]).argmax(dim=-1)  # (1,)


class ServedStep:
    """A step as engine/model_runner.py runs it on a GPU: a decode step's graph (engine/cuda_graph.py)
    computes the logits, the head inside it; a short prefill's graph the hidden states, then the head
    runs eagerly on the rows that sample (its last one); argmax stands in for the sampler."""

    def __init__(self, model, kv_cache) -> None:
        self.model = model
        self.graphs = DecodeGraphs(
            lambda ids, pos, attn: model.forward_paged(ids, pos, attn, kv_cache),
            device=torch.device("cuda"),
            block_size=BLOCK_SIZE,
            max_seq_len=CACHE_TOKENS,
            head=model.compute_logits if HEAD_IN_GRAPH else None,
        )

    def run(self, ids, pos, attn, rows: slice = slice(None)) -> torch.Tensor:
        out = self.graphs.run(ids, pos, attn)[rows]
        logits = out if self.graphs.returns_logits(attn) else self.model.compute_logits(out)
        return ops.argmax(logits)  # the engine's greedy sampler
