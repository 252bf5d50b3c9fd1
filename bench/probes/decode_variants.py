"""Probe: decode tok/s and a keystroke's latency of the served step under kernel variants, one model,
same weights and cache, the variants alternated:

    --compare fused     the default vs the GEMV without its fused epilogues (SiLU * up after gate|up,
                        rotary + K/V write after q|k|v);
    --compare prefetch  the GEMV's L2 prefetch of the next weight (csrc/l2_prefetch.cuh): off, 2, 4
                        (the default), 6 and 8 MB per GEMV.
    --compare head      a decode step's head inside its CUDA graph (the default) or launched eagerly
                        after it (the engine before this change).
    --compare trigger   the decode attention letting the next kernel (the o GEMV) launch right after
                        its wait (the default) or only once its first partition is computed.
    --compare entry     the RMSNorm letting the next kernel (a GEMV) launch at its entry (the default)
                        or only after its own wait (launch.cuh): every norm, or only the layers'
                        post-attention norms (before gate|up) or only their input norms (before q|k|v).
    --compare vocab     the embedding lookup and the greedy argmax as one kernel each (csrc/vocab_rows.cu,
                        the default) or as the torch ops they replaced.
    --compare rolling   the tensor-core GEMV's loads rolling (each weight register refilled with the
                        next batch's vector once read: the default) or batch by batch.
    --compare splits    the engine's K slices per GEMV (engine/ops/cuda_quant_linear.py gemv_splits) or
                        other counts for one decode GEMV of Llama-3-8B's shape (down, q|k|v, o).
    --compare norms     the RMSNorms done by the GEMVs beside them (engine/layers/norm.py
                        linear_add_norm: the default) or as kernels of their own.
    --compare partition the decode attention's tokens per partition (engine/ops/cuda_attention.py
                        MIN_PARTITION), fixed: 64, 128 (the default, tuned on an H100) and 256. On an
                        H200 the attention took 10.2 us of a 64 us layer at 2k (bench/NOTES.md 81m).
    --compare grown     the decode attention's partitions of 128 tokens fixed, or doubled on the device
                        while a sequence would need more than 32 of them, up to 256 (the default,
                        engine/ops/cuda_attention.py GROWN_PARTITION) or 512 tokens.
    --compare ablate    the step with a kernel family left out (the RMSNorms, the attention, both):
                        what each costs on the step's critical path with PDL on, where the profiler's
                        per-kernel times overlap. Speed does not depend on the values, but these
                        variants do not compute the model: timing only.

    python bench/probes/decode_variants.py [--model llama3-8b] [--compare fused] [--rounds 2]

Each variant is its own CUDA graph of the served step (bench/engine_step.py ServedStep): the op seam's
settings are read when the graph is captured. The keystroke is 16 new tokens after a cached 8k
prefix, the head on the last row (as bench_ttft.py's graph path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import engine_step  # noqa: E402
from bench.bench_gpu import time_decode  # noqa: E402
from bench.engine_step import ServedStep, served_model, suffix_metadata  # noqa: E402
from bench.gpu_shapes import kernels_ready  # noqa: E402
from engine import ops  # noqa: E402
from engine.cuda_graph import token_level_metadata  # noqa: E402
from engine.layers.norm import RMSNorm  # noqa: E402


def prefetch(limit: int) -> Callable[[], None]:
    def setup() -> None:
        from engine.ops import cuda_quant_linear

        cuda_quant_linear.set_l2_prefetch_bytes(limit)

    return setup


def partition(tokens: int) -> Callable[[], None]:
    """Every partition `tokens` long: none grown, so the sizes compared are the sizes run."""

    def setup() -> None:
        from engine.ops import cuda_attention

        cuda_attention.MIN_PARTITION = tokens
        cuda_attention.GROWN_PARTITION = 0

    return setup


def grown(limit: int) -> Callable[[], None]:
    """Partitions from 128 tokens, grown up to `limit` for long sequences (0: fixed)."""

    def setup() -> None:
        from engine.ops import cuda_attention

        cuda_attention.MIN_PARTITION = 128
        cuda_attention.GROWN_PARTITION = limit

    return setup


def head_in_graph(inside: bool) -> Callable[[], None]:
    def setup() -> None:
        engine_step.HEAD_IN_GRAPH = inside

    return setup


def trigger(early: bool) -> Callable[[], None]:
    return lambda: torch.ops.exlsp.set_decode_attention_early_trigger(early)


def norm_entry(at_entry: bool) -> Callable[[], None]:
    def setup() -> None:
        RMSNorm.forward = _ORIGINAL_NORM_FORWARD
        torch.ops.exlsp.set_norm_trigger_at_entry(at_entry)

    return setup


def norm_entry_by_role(after_wait: str) -> Callable[[], None]:
    """Every RMSNorm triggers at entry but those of one role ("attention": a layer's input norm, before
    q|k|v; "mlp": its post-attention norm, before gate|up), which trigger after their wait: the GEMV
    after them is then placed on SMs the kernel before the norm has left (kernel_trace showed gate|up's
    896 blocks on ~115 SMs, 8 each, when placed during o's tail). The role is read at capture."""

    def forward(self, x, residual=None):
        after = getattr(self, "variant_role", None) == after_wait
        torch.ops.exlsp.set_norm_trigger_at_entry(not after)
        try:
            return _ORIGINAL_NORM_FORWARD(self, x, residual)
        finally:
            torch.ops.exlsp.set_norm_trigger_at_entry(True)

    def setup() -> None:
        RMSNorm.forward = forward

    return setup


def mark_norm_roles(model) -> None:
    for layer in model.layers:
        layer.input_layernorm.variant_role = "attention"
        layer.post_attention_layernorm.variant_role = "mlp"


def vocab_kernels(enabled: bool) -> Callable[[], None]:
    def setup() -> None:
        from engine.ops import cuda

        table = ops._load_cuda_table()
        for name in ("argmax", "quant_embedding"):
            if enabled:
                table[name] = getattr(cuda, name)
            else:
                table.pop(name, None)

    return setup


def rolling(enabled: bool) -> Callable[[], None]:
    return lambda: torch.ops.exlsp.set_quant_gemv_tc_tuning(0, True, enabled)


_ENGINE_SPLITS = None  # engine/ops/cuda_quant_linear.py gemv_splits, kept at the first setup


def gemv_splits(shape: tuple[int, int] | None = None, splits: int = 1) -> Callable[[], None]:
    """The engine's K slices for every GEMV, or `splits` for the one-row-tile GEMVs of one shape (K, N)."""

    def setup() -> None:
        global _ENGINE_SPLITS
        from engine.ops import cuda_quant_linear

        if _ENGINE_SPLITS is None:
            _ENGINE_SPLITS = cuda_quant_linear.gemv_splits
        engine = _ENGINE_SPLITS
        if shape is None:
            cuda_quant_linear.gemv_splits = engine
        else:
            cuda_quant_linear.gemv_splits = lambda k, n, rows, sms: (
                splits if (k, n) == shape and rows <= 8 else engine(k, n, rows, sms)
            )

    return setup


def fused(enabled: bool) -> Callable[[], None]:
    return lambda: ops.set_fused_ops(enabled)


def norms_in_gemvs(enabled: bool) -> Callable[[], None]:
    return lambda: ops.set_norms_in_gemvs(enabled)


_ORIGINAL_OPS = {name: getattr(ops, name) for name in ("rms_norm", "paged_attention")}
_ORIGINAL_NORM_FORWARD = RMSNorm.forward


def _skip_norm(x, weight, eps, residual=None, out_perm=None):  # ops.rms_norm's signature
    return x, x


def _skip_attention(q, kv_cache_layer, attn, scale, sliding_window, out_order=None):
    return q


def ablate(*, norms: bool = False, attention: bool = False) -> Callable[[], None]:
    def setup() -> None:
        ops.set_norms_in_gemvs(not norms)  # the norm kernels are what is left out
        ops.rms_norm = _skip_norm if norms else _ORIGINAL_OPS["rms_norm"]
        ops.paged_attention = _skip_attention if attention else _ORIGINAL_OPS["paged_attention"]

    return setup


MB = 1 << 20
COMPARISONS: dict[str, dict[str, Callable[[], None]]] = {
    "fused": {"default": fused(True), "unfused": fused(False)},
    "norms": {"in GEMVs": norms_in_gemvs(True), "kernels": norms_in_gemvs(False)},
    "rolling": {"rolling": rolling(True), "by batch": rolling(False)},
    "splits": {
        "engine": gemv_splits(),
        "down 2": gemv_splits((14336, 4096), 2),
        "down 4": gemv_splits((14336, 4096), 4),
        "q|k|v 2": gemv_splits((4096, 6144), 2),
        "o 2": gemv_splits((4096, 4096), 2),
    },
    "prefetch": {
        "off": prefetch(0),
        "2 MB": prefetch(2 * MB),
        "4 MB": prefetch(4 * MB),
        "6 MB": prefetch(6 * MB),
        "8 MB": prefetch(8 * MB),
    },
    "trigger": {"early": trigger(True), "late": trigger(False)},
    "partition": {"64": partition(64), "128": partition(128), "256": partition(256)},
    "grown": {"fixed 128": grown(0), "up to 256": grown(256), "up to 512": grown(512)},
    "entry": {
        "at entry": norm_entry(True),
        "after wait": norm_entry(False),
        "mlp's after": norm_entry_by_role("mlp"),
        "attention's af": norm_entry_by_role("attention"),
    },
    "vocab": {"kernels": vocab_kernels(True), "torch ops": vocab_kernels(False)},
    "head": {"in the graph": head_in_graph(True), "eager": head_in_graph(False)},
    "ablate": {
        "whole step": ablate(),
        "no RMSNorm": ablate(norms=True),
        "no attention": ablate(attention=True),
        "neither": ablate(norms=True, attention=True),
    },
}


def restore_defaults(prefetch_bytes: int, min_partition: int, grown_partition: int) -> None:
    from engine.ops import cuda_attention, cuda_quant_linear

    ops.set_fused_ops(True)
    ops.set_norms_in_gemvs(True)
    rolling(True)()
    gemv_splits()()
    cuda_quant_linear.set_l2_prefetch_bytes(prefetch_bytes)
    cuda_attention.MIN_PARTITION, cuda_attention.GROWN_PARTITION = min_partition, grown_partition
    torch.ops.exlsp.set_decode_attention_early_trigger(True)
    norm_entry(True)()
    vocab_kernels(True)()
    engine_step.HEAD_IN_GRAPH = True
    ablate()()


def keystroke_ms(served: ServedStep, vocab_size: int, prefix: int = 8192, suffix: int = 16) -> float:
    ids = torch.randint(0, vocab_size, (suffix,), device="cuda")
    pos = torch.arange(prefix, prefix + suffix, device="cuda")
    attn = token_level_metadata(suffix_metadata(prefix, suffix), suffix)
    times = []
    for i in range(23):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        served.run(ids, pos, attn, rows=slice(-1, None)).item()
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="fused")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--act-order", action="store_true", help="every linear with a permutation")
    args = parser.parse_args(argv)
    if not kernels_ready("decode_variants"):
        return 1
    from engine.ops import cuda_attention, cuda_quant_linear

    default_prefetch = cuda_quant_linear.L2_PREFETCH_BYTES
    default_partition = cuda_attention.MIN_PARTITION, cuda_attention.GROWN_PARTITION
    model, kv_cache = served_model(args.model, act_order=args.act_order)
    mark_norm_roles(model)
    rows = []
    try:
        for r in range(args.rounds):
            for label, setup in COMPARISONS[args.compare].items():
                setup()
                served = ServedStep(model, kv_cache)
                tok_s = {ctx: 1e3 / time_decode(served, ctx)[0] for ctx in (32, 2048, 8192)}
                rows.append((r, label, tok_s, keystroke_ms(served, model.config.vocab_size)))
                del served
    finally:
        restore_defaults(default_prefetch, *default_partition)
    order = "  act-order" if args.act_order else ""
    print(
        f"{torch.cuda.get_device_name()}  {args.model}{order}  decode tok/s (graph, steps queued), keystroke ms"
    )
    print(f"{'round':>5}  {'variant':14}  {'ctx 32':>8}  {'ctx 2k':>8}  {'ctx 8k':>8}  {'keystroke':>9}")
    for r, label, tok_s, key_ms in rows:
        print(f"{r:>5}  {label:14}  {tok_s[32]:8.1f}  {tok_s[2048]:8.1f}  {tok_s[8192]:8.1f}  {key_ms:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
