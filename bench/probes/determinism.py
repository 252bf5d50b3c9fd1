"""Probe: does the served step give the same bits every time for the same inputs?

    python bench/probes/determinism.py [--model llama3-8b] [--repeats 5]

Runs a keystroke's step (16 new tokens after a cached 8k prefix, as one-token sequences through the
decode graph; multi-query and per-sequence attention) and a 2k decode step several times on the
same weights, cache and inputs, and prints whether the final hidden states are bitwise equal to the
first run's (and the largest difference where not). Every exlsp kernel is meant to be deterministic
(fixed reduction orders, no float atomics); a difference points at a race.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.engine_step import (  # noqa: E402
    ServedStep,
    decode_metadata,
    served_model,
    suffix_metadata,
)
from bench.gpu_shapes import kernels_ready  # noqa: E402
from engine import ops  # noqa: E402
from engine.cuda_graph import token_level_metadata  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not kernels_ready("determinism"):
        return 1
    torch.set_grad_enabled(False)
    from engine.ops import cuda_attention

    gen = torch.Generator(device="cuda").manual_seed(1)
    model, kv_cache = served_model(args.model, gen)
    prefix, new = 8192, 16
    key_ids = torch.randint(0, model.config.vocab_size, (new,), device="cuda", generator=gen)
    key_pos = torch.arange(prefix, prefix + new, device="cuda")
    key_attn = token_level_metadata(suffix_metadata(prefix, new), new)
    dec_ids, dec_pos, dec_attn = decode_metadata(2048)
    q = cuda_attention.QUERIES_PER_BLOCK
    cases = [
        ("keystroke, multi-query", q, True, key_ids, key_pos, key_attn),
        ("keystroke, per-sequence", 1, True, key_ids, key_pos, key_attn),
        ("keystroke, mq, unfused", q, False, key_ids, key_pos, key_attn),
        ("keystroke, per-seq, unfused", 1, False, key_ids, key_pos, key_attn),
        ("decode 2k", q, True, dec_ids, dec_pos, dec_attn),
    ]
    for label, queries_per_block, fused, ids, pos, attn in cases:
        cuda_attention.QUERIES_PER_BLOCK = queries_per_block  # read when the graph is captured
        ops.set_fused_ops(fused)
        try:
            served = ServedStep(model, kv_cache)
            outs = [served.graphs.run(ids, pos, attn).clone() for _ in range(args.repeats)]
        finally:
            cuda_attention.QUERIES_PER_BLOCK = q
            ops.set_fused_ops(True)
        del served
        bits = [o.view(torch.int16) for o in outs]  # NaN == NaN bit for bit
        same = [torch.equal(b, bits[0]) for b in bits[1:]]
        rows = sorted({r for b in bits[1:] for r in (b != bits[0]).any(dim=-1).nonzero().flatten().tolist()})
        nonfinite = (~torch.isfinite(outs[0])).any(dim=-1).nonzero().flatten().tolist()
        print(
            f"{label:28s} bitwise equal in {sum(same)}/{len(same)} repeats; rows differing {rows}; "
            f"rows with inf/NaN {nonfinite}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
