"""Time to first token for a 16-token suffix after a cached 8k prefix, and the decode-attention
kernel behind it, with the multi-query kernel and with the per-sequence kernel alone, in one run.

    python bench/bench_ttft.py [--model llama3-8b] [--json out.json]

The graph path is the engine's short-prefill route (engine/cuda_graph.py): the 16 new tokens as
one-token sequences through the decode graph of bucket 16, captured for a 16k-token cache. "before"
captures it with engine/ops/cuda_attention.py QUERIES_PER_BLOCK = 1 (each token's block reads its K/V alone),
"after" with the default (one block reads each K/V chunk once for all 16). The kernel figure
rotates several layers' caches so that L2 holds none of the 33.5 MB of K/V per layer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine_step import (  # noqa: E402
    BLOCK_SIZE,
    CACHE_TOKENS,
    ServedStep,
    first_token_id,
    served_model,
    suffix_metadata,
)
from bench.gpu_shapes import kernels_ready  # noqa: E402
from bench.gpu_timing import graph_of, median_ms  # noqa: E402
from engine.cuda_graph import token_level_metadata  # noqa: E402

PREFIX_TOKENS = 8192
SUFFIX_TOKENS = 16


def attention_kernel(
    queries_per_block: int, partition_size: int | None = None, *, hq=32, hkv=8, d=128, layers=4, repeats=5
) -> dict:
    """Decode attention of the 16 suffix tokens as one-token sequences (Llama-3-8B heads), per layer."""
    from engine.ops import cuda_attention

    tokens = token_level_metadata(suffix_metadata(PREFIX_TOKENS, SUFFIX_TOKENS), SUFFIX_TOKENS)
    num_blocks = tokens.block_tables.shape[1] + 1
    gen = torch.Generator(device="cuda").manual_seed(0)
    caches = torch.randn((layers, 2, num_blocks, BLOCK_SIZE, hkv, d), generator=gen, device="cuda").half()
    q = torch.randn((SUFFIX_TOKENS, hq, d), generator=gen, device="cuda").half()
    lens, tables = tokens.seq_lens, tokens.block_tables

    def calls():
        for layer in range(layers):
            cuda_attention.decode_attention(
                q,
                caches[layer],
                tables,
                lens,
                CACHE_TOKENS,
                d**-0.5,
                None,
                queries_per_block=queries_per_block,
                partition_size=partition_size,
            )

    graph = graph_of(calls, repeats)
    ms = median_ms(graph.replay) / (repeats * layers)
    kv_bytes = 2 * (PREFIX_TOKENS + SUFFIX_TOKENS) * hkv * d * 2
    return {"us": ms * 1e3, "kv_GBs": kv_bytes / ms / 1e6}


def ttft(model_name: str) -> dict:
    from engine.ops import cuda_attention

    model, kv_cache = served_model(model_name)
    attn = suffix_metadata(PREFIX_TOKENS, SUFFIX_TOKENS)
    ids = torch.randint(0, model.config.vocab_size, (SUFFIX_TOKENS,), device="cuda")
    pos = torch.arange(PREFIX_TOKENS, PREFIX_TOKENS + SUFFIX_TOKENS, device="cuda")

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(20):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    res = {"model": model_name}
    res["ttft_eager_ms"] = timed(lambda: first_token_id(model, kv_cache, ids, pos, attn).item())
    tokens_out = {}
    default = cuda_attention.QUERIES_PER_BLOCK
    for label, queries_per_block in (("per_sequence", 1), ("multi_query", default)):
        cuda_attention.QUERIES_PER_BLOCK = queries_per_block  # read when the graph is captured
        try:
            served = ServedStep(model, kv_cache)

            def run(s=served):
                return s.run(ids, pos, token_level_metadata(attn, SUFFIX_TOKENS), rows=slice(-1, None)).item()

            res[f"ttft_graph_{label}_ms"] = timed(run)
            tokens_out[label] = served.run(ids, pos, token_level_metadata(attn, SUFFIX_TOKENS)).clone()
        finally:
            cuda_attention.QUERIES_PER_BLOCK = default
        del served
    res["graph_tokens_agree"] = float(
        (tokens_out["per_sequence"] == tokens_out["multi_query"]).float().mean().item()
    )
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    if not kernels_ready("bench_ttft"):
        return 1
    from engine.ops import cuda_attention

    torch.set_grad_enabled(False)
    report: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["attention_per_sequence"] = attention_kernel(1)
    for part in (128, 256, 512):
        report[f"attention_multi_query_p{part}"] = attention_kernel(cuda_attention.QUERIES_PER_BLOCK, part)
    report["ttft"] = ttft(args.model)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
