"""Compare quantizer variants on a few decoder layers of a float checkpoint, cheaply, on held-out inputs.

For each chosen layer the float model runs the calibration and held-out samples up to that layer;
each stage's Hessian is accumulated from its float inputs (not the sequential, already-quantized
inputs of `exlsp quantize`: a comparison of variants, not a model). A variant's score per stage is
the layer objective on the held-out inputs, tr(dW H_held dW^T) with dW = W - W_hat, summed over rows.

Held-out inputs: library modules of the standard library (no test/ or encodings/ files) whose path
hashes into bucket 0 of 8; no calibration set below ever contains them, nor any evaluation file of
exlsp/eval_files.txt. Calibration sets: "stdlib" (the quantizer's default: all of the standard
library) and "library" (the mix `--calib-mix library` builds), both minus the held-out files.

    .venv/bin/python -m bench.quant_layer_objective FLOAT_CHECKPOINT --layers 0 11 \
        --variant stdlib:32:0.1:sym:minmax --variant stdlib:64:0.1:asym:mse
(each GPTQ variant is MIX:SAMPLES:DAMP:sym|asym:minmax|mse[:refit], refit = --refit-scales; the four
RTN variants always run)
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch

from engine.quant.calibration import (
    CalibrationConfig,
    default_calibration_roots,
    find_source_files,
    is_library_module,
)
from engine.quant.gptq import Hessian, gptq_quantize
from engine.quant.quantize_checkpoint import calibration_batches
from engine.quant.quantize_model import (
    STAGES,
    capture_first_layer_args,
    decoder_layers,
    next_layer_args,
)
from engine.quant.rtn import QuantSpec, rtn_quantize
from exlsp.evaluate import eval_file_paths

SEQ_LEN_TOKENS = 256
HELD_OUT_SAMPLES = 16


def parse_variant(text: str) -> tuple[str, int, float, QuantSpec]:
    mix, samples, damp, sym, mse, *refit = text.split(":")
    assert mix in ("stdlib", "library") and sym in ("sym", "asym") and mse in ("minmax", "mse"), text
    assert refit in ([], ["refit"]), text
    assert int(samples) % 32 == 0, "calibration sizes are multiples of 32 samples"
    spec = QuantSpec(4, 128, sym=sym == "sym", act_order=True, damp_percent=float(damp), mse=mse == "mse",
                     refit_scales=bool(refit))  # fmt: skip
    return mix, int(samples), float(damp), spec


def held_out_bucket(path: Path) -> bool:
    return hashlib.sha256(str(path).encode()).digest()[0] % 8 == 0


def stage_hessians(layer, items, parts: list[tuple[str, int, int]]) -> dict[tuple[str, str], Hessian]:
    """Hessians of every stage's float inputs, one per (part name, stage) over items[start:stop]."""
    found: dict[tuple[str, str], Hessian] = {}
    current: list[str] = []
    handles = []
    for stage in STAGES:
        module = layer.get_submodule(stage.module)
        for name, _, _ in parts:
            found[(name, stage.module)] = Hessian(module.weight.shape[1])

        def record(_m, args, module_name=stage.module):
            for name in current:
                found[(name, module_name)].add(args[0])

        handles.append(module.register_forward_pre_hook(record))
    try:
        for index, item in enumerate(items):
            current[:] = [name for name, start, stop in parts if start <= index < stop]
            layer(*item.args)
    finally:
        for handle in handles:
            handle.remove()
    return found


def combined(hessians: list[Hessian]) -> torch.Tensor:
    total = sum(h.num_samples for h in hessians)
    return sum(h.matrix * (h.num_samples / total) for h in hessians)


def objective(weight: torch.Tensor, weight_hat: torch.Tensor, h: torch.Tensor) -> float:
    dw = (weight - weight_hat).float()  # (N, K)
    return float(((dw @ h) * dw).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("--layers", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--variant", action="append", default=[], help="MIX:SAMPLES:DAMP:sym|asym:minmax|mse[:refit]"
    )
    args = parser.parse_args()
    args.variants = [parse_variant(v) for v in args.variant]
    torch.manual_seed(0)
    excluded = eval_file_paths()
    everything = find_source_files(default_calibration_roots(), exclude=excluded)
    held_files = [p for p in everything if held_out_bucket(p) and is_library_module(p)]
    pool = [p for p in everything if p not in set(held_files)]
    mixes = {"stdlib": pool, "library": [p for p in pool if is_library_module(p)]}
    mixes = {name: files for name, files in mixes.items() if any(v[0] == name for v in args.variants)}
    max_samples = max([32] + [n for _, n, _, _ in args.variants])
    device = torch.device("cpu")
    batches = {
        name: calibration_batches(args.src, files, CalibrationConfig(max_samples, SEQ_LEN_TOKENS), 8, device)
        for name, files in mixes.items()
    }
    held = calibration_batches(
        args.src, held_files, CalibrationConfig(HELD_OUT_SAMPLES, SEQ_LEN_TOKENS), 8, device
    )
    from engine.loader import load_model

    model = load_model(args.src, device=device)
    all_batches = [b for name in mixes for b in batches[name]] + held
    with torch.no_grad():
        items = capture_first_layer_args(model, all_batches)
        per_mix = len(next(iter(batches.values())))
        parts = []  # (name, first item, end item): calibration prefixes of 32 samples, then held-out
        for m, name in enumerate(mixes):
            for s in range(0, max_samples, 32):
                parts.append((f"{name}:{s}", m * per_mix + s // 8, m * per_mix + (s + 32) // 8))
        parts.append(("held", len(mixes) * per_mix, len(items)))
        for index, layer in enumerate(decoder_layers(model)):
            if index in args.layers:
                run_layer(index, layer, items, parts, args)
            if index == max(args.layers):
                break
            items = [next_layer_args(item, layer(*item.args)) for item in items]


def run_layer(index, layer, items, parts, args) -> None:
    t0 = time.monotonic()
    hessians = stage_hessians(layer, items, parts)
    print(f"# layer {index}: Hessians in {time.monotonic() - t0:.0f} s", flush=True)
    variants = []
    for sym in (True, False):
        for mse in (False, True):
            variants.append(("rtn", "-", 0, 0.0, QuantSpec(bits=4, group_size=128, sym=sym, mse=mse)))
    variants += [("gptq", mix, n, damp, spec) for mix, n, damp, spec in args.variants]
    print(
        "| layer | method | calib mix | samples | damp | sym | mse | refit | "
        + " | ".join(s.module for s in STAGES)
        + " | sum |"
    )
    print("|---" * (9 + len(STAGES)) + "|")
    for method, mix, n, damp, spec in variants:
        scores = []
        for stage in STAGES:
            weight = layer.get_submodule(stage.module).weight.data.float()
            h_held = hessians[("held", stage.module)].matrix
            if method == "rtn":
                q = rtn_quantize(weight, spec)
            else:
                h = combined([hessians[(f"{mix}:{s}", stage.module)] for s in range(0, n, 32)])
                q = gptq_quantize(weight, h, spec)
            scores.append(objective(weight, q.dequantize(), h_held))
        cells = " | ".join(f"{v:.4g}" for v in scores)
        print(
            f"| {index} | {method} | {mix} | {n} | {damp} | {spec.sym} | {spec.mse} | {spec.refit_scales} | "
            f"{cells} | {sum(scores):.4g} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
