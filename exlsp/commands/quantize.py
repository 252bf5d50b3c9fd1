"""`exlsp quantize SRC DST`: GPTQ (or RTN) quantize a float checkpoint into a GPTQ checkpoint folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "GPTQ-quantize a float checkpoint (folder or store name) into DST"

# Calibration size and dampening: the GPU default is the usual GPTQ set; on a CPU a smaller one keeps
# a 0.5B model under 15 minutes on 2 cores. On Qwen2.5-Coder-0.5B (bench/RESULTS.md, "4-bit GPTQ
# closer to float") the held-out layer error fell most from calibrating on library modules rather
# than all of the standard library (codec tables, test data), then from asym and MSE grids; with
# that mix 16k tokens beat 8k on the layer objective (32k gave no perplexity gain over 16k), and
# damp 0.1 beats 0.01-0.03 (0.05 and 0.2 within 2%).
CALIB_DEFAULTS = {"cuda": (128, 512, 0.01), "cpu": (64, 256, 0.1)}  # device -> (samples, tokens, damp)
CALIB_MIXES = ("library", "all")
# GPTQ's target per linear: 0 = its own float outputs on the quantized model's inputs (plain GPTQ), 1 =
# the float model's outputs (engine/quant/gptq.py float_target_weight). 1 took the default model's 4-bit
# held-out perplexity from 5.581 to 5.532 (float 5.234) for ~+210 s on 2 cores (bench/RESULTS.md,
# "GPTQ aimed at the float model's outputs"); --residual-target and --refit-scales gained nothing there.
FLOAT_TARGET_DEFAULT = 1.0
RESIDUAL_TARGET_DEFAULT = False  # with a float target: o/down also cancel the residual stream's drift
REFIT_SCALES_DEFAULT = False  # gptq: refit each row's group scales to its final codes


def add_quant_arguments(parser: argparse.ArgumentParser) -> None:
    """The quantization options, shared with `exlsp import` and `exlsp pull`."""
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4, help="bits per weight (default 4)")
    parser.add_argument(
        "--group-size", type=int, default=128, help="inputs per scale group; -1 for one group"
    )
    parser.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                        help="quantize columns by descending Hessian diagonal (default on)")  # fmt: skip
    sym = parser.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="sym", action="store_true", default=False, help="symmetric grid")
    sym.add_argument(
        "--asym", dest="sym", action="store_false", help="asymmetric grid, a zero per group (default)"
    )
    parser.add_argument(
        "--damp",
        type=float,
        help="Hessian dampening, fraction of its mean diagonal (default 0.01 on CUDA, 0.1 on CPU)",
    )
    parser.add_argument("--mse", action=argparse.BooleanOptionalAction, default=None,
                        help="per group, shrink the min/max range to the one with the least |w - q(w)|^2.4 "
                             "(default: on for gptq, off so the rtn baseline stays plain min/max)")  # fmt: skip
    parser.add_argument("--float-target", type=float, metavar="ALPHA",
                        help="gptq: aim each linear at the float model's outputs (1) instead of its own "
                             "float outputs on the quantized model's inputs (0), or between "
                             f"(default {FLOAT_TARGET_DEFAULT:g}; one more layer forward per layer)")  # fmt: skip
    parser.add_argument("--residual-target", action=argparse.BooleanOptionalAction, default=None,
                        help="with --float-target: o_proj and down_proj also aim to cancel the residual "
                             "stream's drift from the float model "
                             f"(default {'on' if RESIDUAL_TARGET_DEFAULT else 'off'})")  # fmt: skip
    parser.add_argument("--refit-scales", action=argparse.BooleanOptionalAction, default=None,
                        help="gptq: once the codes are chosen, refit each row's group scales to them "
                             f"(least squares on the layer objective; default {'on' if REFIT_SCALES_DEFAULT else 'off'})")  # fmt: skip
    parser.add_argument("--method", choices=("gptq", "rtn"), default="gptq", help="gptq, or the rtn baseline")
    parser.add_argument("--calib", nargs="+", type=Path, metavar="PATH",
                        help="source files or folders for calibration (default: the Python standard library)")  # fmt: skip
    parser.add_argument("--calib-mix", choices=CALIB_MIXES,
                        help="'library': only Python library modules (no tests, test data or codec tables); "
                             "'all': every source file (default: library for the standard library, all "
                             "for --calib)")  # fmt: skip
    parser.add_argument(
        "--calib-samples", type=int, help="calibration samples (default: 128 on CUDA, 64 on CPU)"
    )
    parser.add_argument(
        "--calib-tokens", type=int, help="tokens per sample (default: 512 on CUDA, 256 on CPU)"
    )
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="float checkpoint folder or model store name")
    parser.add_argument("dst", metavar="DST", type=Path, help="output folder (refused if it exists)")
    add_quant_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")


def quantize_from_args(args: argparse.Namespace, src: Path, dst: Path, force: bool) -> dict:
    """Run the quantizer as the options say; returns the facts a manifest records."""
    import time

    import torch
    from tqdm import tqdm

    from engine.quant.calibration import (
        CalibrationConfig,
        CalibrationError,
        default_calibration_roots,
        find_source_files,
        is_library_module,
    )
    from engine.quant.quantize_checkpoint import quantize_checkpoint
    from engine.quant.rtn import QuantSpec
    from exlsp.evaluate import eval_file_paths

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    samples, tokens, damp = CALIB_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    calib = CalibrationConfig(args.calib_samples or samples, args.calib_tokens or tokens)
    mse = args.method == "gptq" if args.mse is None else args.mse
    spec = QuantSpec(bits=args.bits, group_size=args.group_size, sym=args.sym, act_order=args.act_order,
                     damp_percent=args.damp or damp, mse=mse,
                     float_target=FLOAT_TARGET_DEFAULT if args.float_target is None else args.float_target,
                     residual_target=RESIDUAL_TARGET_DEFAULT if args.residual_target is None else args.residual_target,
                     refit_scales=REFIT_SCALES_DEFAULT if args.refit_scales is None else args.refit_scales)  # fmt: skip
    files, calib_mix = [], None
    if args.method == "gptq":
        roots = args.calib or default_calibration_roots()
        files = find_source_files(roots, exclude=eval_file_paths())
        calib_mix = args.calib_mix or ("all" if args.calib else "library")
        if calib_mix == "library":
            files = [f for f in files if is_library_module(f)]
            if not files:
                raise CalibrationError(
                    "no Python library modules among the calibration files: pass --calib-mix all"
                )
    started = time.monotonic()
    with tqdm(desc=f"{args.method} {args.bits}-bit", unit="layer", file=sys.stderr) as bar:

        def on_layer(index: int, total: int) -> None:
            bar.total = total
            bar.update(1)

        quantize_checkpoint(src, dst, spec, method=args.method, calib_files=files, calib=calib,
                            device=device, force=force, on_layer_done=on_layer)  # fmt: skip
    return {
        "method": args.method,
        "act_order": spec.act_order,
        "sym": spec.sym,
        "mse": spec.mse,
        "damp": spec.damp_percent,
        "float_target": spec.float_target if args.method == "gptq" else None,
        "residual_target": spec.residual_target if args.method == "gptq" else None,
        "refit_scales": spec.refit_scales if args.method == "gptq" else None,
        "calibration": "default (Python standard library)"
        if not args.calib
        else [str(p) for p in args.calib],
        "calibration_mix": calib_mix if args.method == "gptq" else None,
        "calibration_samples": [calib.num_samples, calib.seq_len_tokens],
        "quantize_seconds": round(time.monotonic() - started, 1),
        "device": str(device),
    }


def run(args: argparse.Namespace) -> int:
    from exlsp.commands.models import report_errors
    from exlsp.store import resolve_model

    with report_errors("quantize"):
        src = resolve_model(args.src)
        facts = quantize_from_args(args, src, args.dst, args.force)
        print(f"wrote {args.dst} ({facts['method']}, {args.bits}-bit, group size {args.group_size}, "
              f"{facts['quantize_seconds']} s)")  # fmt: skip
        return 0
    return 1
