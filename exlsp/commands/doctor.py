"""`exlsp doctor`: check what exlsp needs, one PASS/FAIL line each; non-zero exit on a failure."""

from __future__ import annotations

import argparse
import platform
import sys
import time

HELP = (
    "check python, torch, device, kernels, model load, attention kernels and FIM support (PASS/FAIL per line)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="device to check the model on (default: cuda when available)")


def _line(ok: bool, name: str, detail: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {name:<10} {detail}", flush=True)
    return ok


def run(args: argparse.Namespace) -> int:
    ok = _line(sys.version_info >= (3, 11), "python", f"{platform.python_version()} ({sys.executable})")
    try:
        import torch
    except Exception as exc:
        _line(False, "torch", f"cannot import torch: {exc}")
        return 1
    ok &= _line(True, "torch", torch.__version__)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        ok &= _line(True, "device", f"cuda: {name} ({torch.cuda.device_count()} visible)")
    else:
        ok &= _line(True, "device", "cpu only (no CUDA device): completions run on the reference ops, slowly")
    try:
        from engine import ops

        report = getattr(ops, "backend_report", None)
        ok &= _line(
            True, "kernels", _describe_backends(report()) if report else "backend report not available"
        )
    except Exception as exc:
        ok &= _line(False, "kernels", f"{type(exc).__name__}: {exc}")

    from exlsp.prompt import detect_fim, fim_status
    from exlsp.server import open_engine, resolve_model_path

    started = time.perf_counter()
    try:
        path = resolve_model_path(args.model)
        engine = open_engine(str(path), device=args.device)
    except Exception as exc:
        _line(False, "model", f"{type(exc).__name__}: {exc}")
        _line(False, "fim", "no model to check")
        return 1
    try:
        seconds = time.perf_counter() - started
        result = engine.generate("def ", max_new_tokens=4)
        stats = engine.stats()
        ok &= _line(
            result.finish_reason != "error",
            "model",
            f"{path} on {engine.device} loaded in {seconds:.1f}s "
            f"(head {stats['head_bits']}-bit, embedding {stats['embed_bits']}-bit), "
            f"generated {len(result.token_ids)} tokens ({result.finish_reason})",
        )
        ok &= _line(True, "attention", _describe_attention(engine.device))
        template = detect_fim(engine.tokenizer)
        ok &= _line(template is not None, "fim", fim_status(template))
    finally:
        engine.close()
    return 0 if ok else 1


def _describe_attention(device) -> str:
    """Which kernels serve the model's attention: the decode step's and a prompt's (prefill)."""
    import torch

    from engine import ops

    if torch.device(device).type != "cuda":
        return f"reference ops on {device} (decode and prefill)"
    if ops.backend_report().get("paged_attention") != "cuda":
        return "reference ops (the CUDA kernels did not load: see the kernels line)"
    from engine.ops import cuda_prefill_attention

    return f"decode: exlsp's paged flash-decoding kernel; prefill: {cuda_prefill_attention.describe()}"


def _describe_backends(report) -> str:
    """{"rms_norm": "cuda", "paged_attention": "reference", ...} -> "cuda: rms_norm; reference: ..."."""
    if not isinstance(report, dict):
        return str(report)
    by_backend: dict[str, list[str]] = {}
    for op, backend in report.items():
        by_backend.setdefault(str(backend), []).append(op)
    return "; ".join(f"{backend}: {', '.join(ops)}" for backend, ops in sorted(by_backend.items()))
