"""GPU benchmark: copy bandwidth, per-kernel GB/s, decode tok/s (CUDA graph), prefill tok/s, TTFT
after a cached prefix, peak VRAM, on random-weight GPTQ 4-bit g128 models at real shapes.

    python bench/bench_gpu.py [--models llama3-8b,...] [--json out.json]    (or: exlsp bench)

Every time is the median of many runs measured with CUDA events after warm-up; kernels too short
to time alone are captured many times in one CUDA graph and the replay is divided by the count.
The decode step is the engine's own model code (engine/models) driven through engine/cuda_graph.py.
"""

from __future__ import annotations

import argparse
import gc
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
    chunked_prefill,
    cold_prompt,
    decode_metadata,
    first_token_id,
    suffix_metadata,
)
from bench.gpu_shapes import build_model, kernels_ready, random_packed  # noqa: E402
from bench.gpu_timing import (  # noqa: E402
    copies_past_l2,
    copy_bandwidth_gbs,
    graph_of,
    launch_gap_us,
    median_ms,
    same_bytes_copy_gbs,
)
from engine.cuda_graph import token_level_metadata  # noqa: E402
from engine.engine import default_prefill_chunk_tokens  # noqa: E402
from engine.loader import default_vocab_bits  # noqa: E402
from engine.quant.layout import to_column_strips  # noqa: E402


def gemv_gbs(
    k: int,
    n: int,
    rows: int,
    dtype: torch.dtype,
    *,
    tc: bool = True,
    splits: int | None = None,
    pdl: bool = False,
    repeats: int = 10,
) -> dict:
    """Fused GEMV (tensor-core or CUDA-core kernel) on rotating weight sets (so L2 holds none of
    them) -> achieved GB/s. `splits`: K slices per column tile (None: the engine's choice). PDL off
    by default: each call alone, its launch and first loads not hidden. With `pdl` each call's first
    weight loads overlap the previous call's tail, as the decode step launches the GEMVs after its
    other kernels: the two are reported side by side."""
    from engine.ops import cuda_common, cuda_quant_linear

    counters = cuda_common.split_counters(torch.device("cuda"))
    if splits is None:
        splits = cuda_quant_linear.gemv_splits(
            k, n, rows, torch.cuda.get_device_properties(0).multi_processor_count
        )
    splits = torch.ops.exlsp.quant_gemv_tc_splits(k, splits)
    partials = torch.empty((splits, min(rows, 16), n), dtype=torch.float32, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(k + n)
    weights = [random_packed(k, n, bits=4, group_size=128, dtype=dtype, bias=False, gen=gen)]
    w = weights[0]
    weight_bytes = sum(t.numel() * t.element_size() for t in (w.qweight, w.scales, w.zeros))
    num_weights = copies_past_l2(weight_bytes)
    weights += [
        random_packed(k, n, bits=4, group_size=128, dtype=dtype, bias=False, gen=gen)
        for _ in range(num_weights - 1)
    ]
    x = torch.randn((rows, k), device="cuda", generator=gen).to(dtype)
    out = torch.empty((rows, n), device="cuda", dtype=dtype)
    # the tensor-core GEMV's layout, made before capture (as the engine does once at load)
    codes = [to_column_strips(w.qweight) if tc else w.qweight for w in weights]

    def calls():
        for w, q in zip(weights, codes, strict=True):
            if tc:
                torch.ops.exlsp.quant_gemv_tc(
                    x, q, w.scales, w.zeros, None, None, 128, out, partials, counters, splits
                )
            else:
                torch.ops.exlsp.quant_gemv(x, q, w.scales, w.zeros, None, None, 4, 128, out)

    torch.ops.exlsp.set_launch_pdl(1 if pdl else 0)
    try:
        graph = graph_of(calls, repeats)
    finally:
        torch.ops.exlsp.set_launch_pdl(-1)
    ms = median_ms(graph.replay) / (repeats * num_weights)
    nbytes = weight_bytes + sum(t.numel() * t.element_size() for t in (x, out))
    return {"us": ms * 1e3, "gbs": nbytes / ms / 1e6, "splits": splits if tc else 0}


def torch_int4_gbs(k: int, n: int, rows: int, repeats: int = 10) -> dict | str:
    """torch's built-in int4 path (tinygemm, bf16) on the same shape, for comparison."""
    num_weights = copies_past_l2(n * k // 2)
    try:
        gen = torch.Generator(device="cuda").manual_seed(1)
        packs = []
        for _ in range(num_weights):
            w_u8 = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=gen)
            packed = torch._convert_weight_to_int4pack(w_u8, 8)
            sz = torch.rand((k // 128, n, 2), device="cuda", generator=gen).to(torch.bfloat16)
            packs.append((packed, sz))
        x = torch.randn((rows, k), device="cuda", generator=gen).to(torch.bfloat16)

        def calls():
            for packed, sz in packs:
                torch._weight_int4pack_mm(x, packed, 128, sz)

        graph = graph_of(calls, repeats)
        ms = median_ms(graph.replay) / (repeats * num_weights)
        nbytes = n * k // 2 + packs[0][1].numel() * 2 + x.numel() * 2 + rows * n * 2
        return {"us": ms * 1e3, "gbs": nbytes / ms / 1e6}
    except Exception as exc:  # the private API changes between torch versions
        return f"unavailable: {type(exc).__name__}: {str(exc)[:120]}"


def time_decode(step: ServedStep, ctx: int, steps: int = 50) -> tuple[float, float]:
    """(ms per token with steps queued back to back, ms per token with the token read each step)."""
    ids, pos, attn = decode_metadata(ctx)
    queued = median_ms(lambda: [step.run(ids, pos, attn) for _ in range(steps)], warmup=2, iters=7) / steps
    synced = median_ms(lambda: step.run(ids, pos, attn).item(), warmup=3, iters=30)
    return queued, synced


def profile_decode(model, kv_cache, ctx: int = 2048, steps: int = 5) -> str:
    """Per-kernel GPU time of eager decode steps (same kernels and grids as the graph replays)."""
    from torch.profiler import ProfilerActivity, profile

    ids, pos, attn = decode_metadata(ctx)
    for _ in range(2):
        first_token_id(model, kv_cache, ids, pos, attn)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            first_token_id(model, kv_cache, ids, pos, attn)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)


def bench_model(
    name: str,
    *,
    contexts: list[int],
    full: bool,
    head_bits: int,
    embed_bits: int,
    profile_to: Path | None = None,
    compare_pdl: bool = False,
    act_order: bool = False,
) -> dict:
    gc.collect()  # the previous model's graphs and buffers, so that base_bytes is this model's baseline
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base_bytes = torch.cuda.memory_allocated()
    model = build_model(name, head_bits=head_bits, embed_bits=embed_bits, act_order=act_order)
    torch.cuda.synchronize()
    weight_bytes = torch.cuda.memory_allocated() - base_bytes
    num_blocks = CACHE_TOKENS // BLOCK_SIZE + 4
    kv_cache = model.allocate_kv_cache(num_blocks, BLOCK_SIZE)
    kv_cache.normal_()  # never time on zeros
    cache_bytes = kv_cache.numel() * kv_cache.element_size()
    model.rotary.limit_positions(num_blocks * BLOCK_SIZE)  # as engine/model_runner.py does
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    res: dict = {"model": name, "weights_GB": weight_bytes / 1e9, "cache_GB": cache_bytes / 1e9,
                 "head_bits": head_bits, "embed_bits": embed_bits, "act_order": act_order}  # fmt: skip

    if compare_pdl:  # the same step captured without programmatic dependent launch, same run
        torch.ops.exlsp.set_launch_pdl(0)
        try:
            served = ServedStep(model, kv_cache)
            res["decode_ctx2048_no_pdl_tok_s"] = 1e3 / time_decode(served, 2048)[0]
        finally:
            torch.ops.exlsp.set_launch_pdl(-1)
        del served
    served = ServedStep(model, kv_cache)
    for ctx in contexts:
        ms, synced = time_decode(served, ctx)
        res[f"decode_ctx{ctx}_tok_s"] = 1e3 / ms
        res[f"decode_ctx{ctx}_synced_tok_s"] = 1e3 / synced
    if full:
        # Serving: an 8k prompt in 512-, 1024- and 2048-token chunks (each leaves an 8k prefix in
        # blocks 0..511), then 16 new tokens after it, the keystroke case. Each chunk size gets its own
        # peak; the engine's default chunk counts toward the serving peak.
        peaks = [torch.cuda.max_memory_allocated()]  # decode so far
        default_chunk = default_prefill_chunk_tokens(torch.device("cuda"))
        for chunk in (512, 1024, 2048):
            torch.cuda.reset_peak_memory_stats()
            ms = median_ms(lambda c=chunk: chunked_prefill(model, kv_cache, 8192, c), warmup=1, iters=3)
            res[f"prefill_8192_chunked{chunk}_tok_s"] = 8192 * 1e3 / ms
            res[f"peak_vram_chunked{chunk}_GB"] = (torch.cuda.max_memory_allocated() - base_bytes) / 1e9
            if chunk == default_chunk:
                peaks.append(torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        suffix, prefix = 16, 8192
        attn = suffix_metadata(prefix, suffix)
        ids = torch.randint(0, model.config.vocab_size, (suffix,), device="cuda")
        pos = torch.arange(prefix, prefix + suffix, device="cuda")

        def first_token() -> float:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            first_token_id(model, kv_cache, ids, pos, attn).item()  # the token id reaches the host
            return (time.perf_counter() - t0) * 1e3

        for _ in range(3):
            first_token()
        res["ttft_16_after_8k_eager_ms"] = statistics.median(first_token() for _ in range(20))

        def first_token_graph() -> float:
            """The engine's short-prefill path: the 16 tokens as one-token sequences, one graph replay."""
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            served.run(ids, pos, token_level_metadata(attn, suffix), rows=slice(-1, None)).item()
            return (time.perf_counter() - t0) * 1e3

        for _ in range(3):
            first_token_graph()
        res["ttft_16_after_8k_graph_ms"] = statistics.median(first_token_graph() for _ in range(20))
    peak = max(peaks + [torch.cuda.max_memory_allocated()]) if full else torch.cuda.max_memory_allocated()
    res["peak_vram_GB"] = (peak - base_bytes) / 1e9  # serving: decode, default-chunk prefill, TTFT
    res["peak_vram_GiB"] = res["peak_vram_GB"] * 1e9 / 2**30
    if full:
        # Cold prefill throughput: each prompt in one forward pass. Its activations (8k x 28672 for
        # gate|up alone) are a peak the engine's chunked prefill never reaches: reported on its own.
        torch.cuda.reset_peak_memory_stats()
        for length in (2048, 8192):
            prompt = cold_prompt(model.config.vocab_size, length)
            ms = median_ms(lambda p=prompt: first_token_id(model, kv_cache, *p), warmup=1, iters=5)
            res[f"prefill_{length}_tok_s"] = length * 1e3 / ms
        res["peak_vram_one_pass_8k_prefill_GB"] = (torch.cuda.max_memory_allocated() - base_bytes) / 1e9
    if profile_to is not None:
        # Last: once the profiler has run, every kernel launch of this process costs more host time
        # (a one-element kernel's eager launch 10 -> 13-18 us: bench/NOTES.md 80a), which the
        # host-bound figures (eager TTFT, chunked prefill) would show.
        profile_to.write_text(profile_decode(model, kv_cache))
        if full:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                first_token()
            table = prof.key_averages().table(
                sort_by="cuda_time_total", row_limit=25, max_name_column_width=60
            )
            with profile_to.open("a") as f:
                f.write("\n\nTTFT, 16 tokens after a cached 8k prefix:\n" + table)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama3-8b,qwen2.5-coder-7b,qwen2.5-coder-1.5b")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    parser.add_argument("--quick", action="store_true", help="decode at 2k only, no prefill/TTFT")
    parser.add_argument("--gemv-only", action="store_true", help="copy bandwidth and GEMV figures only")
    parser.add_argument(
        "--profile", default=None, help="write a per-kernel profile of the first model's decode here"
    )
    parser.add_argument("--gemv-sweep", action="store_true", help="also time every K split at batch 1")
    parser.add_argument("--no-pdl-compare", action="store_true", help="skip the decode run without PDL")
    parser.add_argument(
        "--no-variants", action="store_true", help="skip the act-order and head/embedding-bit variants"
    )
    args = parser.parse_args(argv)
    if not kernels_ready("exlsp bench"):
        return 1
    torch.set_grad_enabled(False)
    report: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["copy_GBs"] = copy_bw = copy_bandwidth_gbs()
    report["launch_gap_us"] = launch_gap_us()
    gemv = {}
    shapes = [(4096, 14336), (4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096), (4096, 1024)]
    for k, n in shapes:
        for rows in (1, 8, 16):
            r = gemv_gbs(k, n, rows, torch.float16)
            r["of_copy"] = r["gbs"] / copy_bw
            gemv[f"tc_{k}x{n}_m{rows}_fp16"] = r
        # batch 1 as the decode step launches it (back to back with PDL), and a copy of its bytes
        r = gemv_gbs(k, n, 1, torch.float16, pdl=True)
        r["of_copy"] = r["gbs"] / copy_bw
        gemv[f"tc_{k}x{n}_m1_fp16_pdl"] = r
        nbytes = round(r["gbs"] * r["us"] * 1e3)
        gbs = same_bytes_copy_gbs(nbytes)
        gemv[f"copy_same_bytes_as_{k}x{n}_m1"] = {
            "us": nbytes / gbs / 1e3,
            "gbs": gbs,
            "of_copy": gbs / copy_bw,
        }
    if args.gemv_sweep:  # every split of K at batch 1, to check the engine's choice
        for k, n in shapes[:5]:
            for splits in (1, 2, 3, 4):
                gemv[f"tc_{k}x{n}_m1_fp16_splits{splits}"] = gemv_gbs(k, n, 1, torch.float16, splits=splits)
    for rows in (1, 8):
        gemv[f"cudacore_4096x14336_m{rows}_fp16"] = gemv_gbs(4096, 14336, rows, torch.float16, tc=False)
    gemv["tc_4096x14336_m1_bf16"] = gemv_gbs(4096, 14336, 1, torch.bfloat16)
    gemv["torch_int4_4096x14336_m1_bf16"] = torch_int4_gbs(4096, 14336, 1)
    report["gemv"] = gemv
    contexts = [2048] if args.quick else [32, 2048, 8192]
    report["models"] = []
    for i, name in enumerate([] if args.gemv_only else args.models.split(",")):
        full = i == 0 and not args.quick
        profile_to = Path(args.profile) if args.profile and i == 0 else None
        head_bits, embed_bits = default_vocab_bits(torch.device("cuda"))  # what the engine serves
        report["models"].append(
            bench_model(
                name,
                contexts=contexts,
                full=full,
                head_bits=head_bits,
                embed_bits=embed_bits,
                profile_to=profile_to,
                compare_pdl=i == 0 and not args.no_pdl_compare,
            )  # fmt: skip
        )
        # act-order weights (exlsp's own GPTQ default), then the other head/embedding choices
        if full and not args.no_variants:
            variants = [{"head_bits": head_bits, "embed_bits": embed_bits, "act_order": True}]
            variants += [
                {"head_bits": h, "embed_bits": e}
                for h, e in ((4, 8), (8, 4), (16, 16))
                if (h, e) != (head_bits, embed_bits)
            ]
            for variant in variants:
                report["models"].append(bench_model(name, contexts=contexts, full=False, **variant))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(
        f"\ncard: {report['card']}  torch {report['torch']}  copy bandwidth {copy_bw:.0f} GB/s"
        f"  launch gap {report['launch_gap_us']:.2f} us"
    )
    for key, r in gemv.items():
        print(
            f"  gemv {key:34s} {r}"
            if isinstance(r, str)
            else f"  gemv {key:40s} {r['us']:8.1f} us {r['gbs']:7.0f} GB/s {r['gbs'] / copy_bw:5.0%}"
            f" splits {r.get('splits', '-')}"
        )
    for m in report["models"]:
        print("  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
