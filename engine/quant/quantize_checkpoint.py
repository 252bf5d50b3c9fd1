"""A whole float checkpoint folder in, a GPTQ checkpoint folder out: read the float tensors, build the
calibration batches with the checkpoint's tokenizer, run the sequential driver
(engine/quant/quantize_model.py), and write the packed checkpoint atomically (engine/quant/gptq_writer.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from engine.quant.calibration import CalibrationConfig, build_samples
from engine.quant.gptq_writer import (
    check_destination,
    pack_linear,
    quantization_config,
    staged_directory,
    write_checkpoint,
)
from engine.quant.quantize_model import quantize_layers
from engine.quant.rtn import QuantizedWeight, QuantSpec

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def read_float_checkpoint(src: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and every tensor of a float safetensors checkpoint (single file or shards)."""
    src = Path(src)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{src} is not a checkpoint folder: no config.json")
    config = json.loads(config_path.read_text())
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        raise ValueError(f"{src} is already quantized ({method}); quantize a float checkpoint")
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src} holds no *.safetensors weights (pickle checkpoints are refused)")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return config, tensors


def eos_ids(config: dict) -> list[int]:
    eos = config.get("eos_token_id")
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def calibration_batches(
    src: Path, files: Sequence[Path], calib: CalibrationConfig, batch_size: int, device: torch.device
) -> list[torch.Tensor]:
    """Calibration samples of `files` tokenized with the checkpoint's tokenizer, as (B, S) batches."""
    tokenizer = Tokenizer.from_file(str(Path(src) / "tokenizer.json"))
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    config = json.loads((Path(src) / "config.json").read_text())
    samples = build_samples(files, encode, calib, separator_ids=eos_ids(config)[:1])
    ids = torch.tensor(samples, dtype=torch.long, device=device)  # (num_samples, S)
    return list(ids.split(batch_size))


def quantized_tensors(
    tensors: dict[str, torch.Tensor], results: dict[str, QuantizedWeight], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with each quantized linear's weight (and bias) replaced by GPTQ tensors."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        prefix = name.rsplit(".", 1)[0]
        if prefix not in results:
            out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    for prefix, q in results.items():
        for suffix, tensor in pack_linear(q, tensors.get(f"{prefix}.bias")).items():
            out[f"{prefix}.{suffix}"] = tensor
    return out


def quantize_checkpoint(
    src: Path,
    dst: Path,
    spec: QuantSpec,
    *,
    method: str = "gptq",
    calib_files: Sequence[Path] = (),
    calib: CalibrationConfig = CalibrationConfig(),
    batch_size: int = 8,
    device: torch.device | str | None = None,
    force: bool = False,
    load_float_model: Callable[[Path, torch.device], nn.Module] | None = None,
    on_layer_done: Callable[[int, int], None] | None = None,
) -> Path:
    """Quantize the float checkpoint `src` into the GPTQ checkpoint `dst` (written atomically)."""
    src, dst = Path(src), Path(dst)
    check_destination(dst, force)
    config, tensors = read_float_checkpoint(src)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if method == "gptq":
        batches = calibration_batches(src, calib_files, calib, batch_size, device)
    else:
        batches = []
    load = load_float_model or _load_with_engine
    model = load(src, device)
    results = quantize_layers(model, batches, spec, method=method, on_layer_done=on_layer_done)
    del model, batches
    out_config = {**config, "torch_dtype": "float16", "quantization_config": quantization_config(spec)}
    extra = {name: (src / name).read_bytes() for name in TOKENIZER_FILES if (src / name).is_file()}
    with staged_directory(dst, force) as staging:
        write_checkpoint(staging, quantized_tensors(tensors, results, torch.float16), out_config, extra)
    return dst


def _load_with_engine(src: Path, device: torch.device) -> nn.Module:
    from engine.loader import load_model

    # float32 on the CPU (fast there); the checkpoint's own half type on a GPU.
    return load_model(src, device=device)
