"""The sequential driver: quantize a whole float model, one decoder layer at a time.

Each decoder layer is quantized on the inputs it receives from the layers before it *after* those
were quantized, so a layer learns to correct the errors upstream instead of assuming float inputs.
Inside a layer the linears go in four stages, in the order data flows through them:
q/k/v (one shared input), o, gate/up (one shared input), down; a stage's inputs are taken after the
stages before it were quantized. Memory stays at one layer's activations for the calibration set.

How the model is driven (any module whose decoder layers are a ModuleList `.model.layers` or
`.layers` and whose linears are named like Hugging Face's, e.g. the engine's families):
  1. the model runs on each calibration batch with a hook that records the first layer's arguments
     and stops the forward there;
  2. a layer is called directly on recorded arguments; a pre-hook on a stage's first linear adds its
     input to the stage's Hessian and stops the layer there (no wasted compute on later stages);
  3. after its last stage the layer runs whole, and its output becomes the next layer's arguments.
The quantized weights replace the float ones in place (dequantized, so plain matmuls compute them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from engine.quant.calibration import CalibrationConfig, build_samples
from engine.quant.gptq import Hessian, gptq_quantize
from engine.quant.gptq_writer import (
    check_destination,
    pack_linear,
    quantization_config,
    staged_directory,
    write_checkpoint,
)
from engine.quant.rtn import QuantizedWeight, QuantSpec, rtn_quantize

# Module paths inside one decoder layer; each inner tuple shares one input.
STAGES: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
LAYERS_PREFIX = "model.layers"  # checkpoint name of the decoder layer list (Hugging Face layout)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted activations are recorded."""


@dataclass
class LayerArgs:
    args: tuple
    kwargs: dict[str, Any]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for owner in (getattr(model, "model", None), model):
        layers = getattr(owner, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(f"{type(model).__name__} has no decoder layer list at .model.layers or .layers")


def next_layer_args(inputs: LayerArgs, output: Any) -> LayerArgs:
    """The arguments of layer i + 1 from those of layer i and its output.

    A layer either returns the new hidden states (Hugging Face), or a tuple whose leading tensors
    replace, in order, the leading tensor arguments it was given ((hidden, residual) style).
    """
    outputs = list(output) if isinstance(output, (tuple, list)) else [output]
    outputs = [o for o in outputs if isinstance(o, torch.Tensor)]
    if "hidden_states" in inputs.kwargs:
        return LayerArgs(inputs.args, {**inputs.kwargs, "hidden_states": outputs[0]})
    args = list(inputs.args)
    tensor_slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    for slot, value in zip(tensor_slots, outputs, strict=False):
        args[slot] = value
    return LayerArgs(tuple(args), inputs.kwargs)


def capture_first_layer_args(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[LayerArgs]:
    layer0 = decoder_layers(model)[0]
    captured: list[LayerArgs] = []

    def record(_module, args, kwargs):
        captured.append(LayerArgs(tuple(args), dict(kwargs)))
        raise _Stop

    handle = layer0.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(batch)
            except _Stop:
                pass
    finally:
        handle.remove()
    assert len(captured) == len(batches), "the model never reached its first decoder layer"
    return captured


def _stage_hessian(layer: nn.Module, first: str, inputs: Sequence[LayerArgs]) -> Hessian:
    module = layer.get_submodule(first)
    hessian = Hessian(module.weight.shape[1], device=module.weight.device)

    def record(_module, args):
        hessian.add(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(record)
    try:
        for item in inputs:
            try:
                layer(*item.args, **item.kwargs)
            except _Stop:
                pass
    finally:
        handle.remove()
    return hessian


@torch.no_grad()
def quantize_layers(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    spec: QuantSpec,
    *,
    method: str = "gptq",
    on_layer_done: Callable[[int, int], None] | None = None,
) -> dict[str, QuantizedWeight]:
    """Quantize every decoder linear of `model` in place; return checkpoint prefix -> quantized weight.

    batches: token id tensors (B, S) the model can be called on (ignored by RTN).
    on_layer_done(index, num_layers): progress callback.
    """
    if method not in ("gptq", "rtn"):
        raise ValueError(f"unknown quantization method {method!r}; use 'gptq' or 'rtn'")
    layers = decoder_layers(model)
    results: dict[str, QuantizedWeight] = {}
    inputs = capture_first_layer_args(model, batches) if method == "gptq" else []
    for index, layer in enumerate(layers):
        for stage in STAGES:
            hessian = _stage_hessian(layer, stage[0], inputs) if method == "gptq" else None
            for path in stage:
                module = layer.get_submodule(path)
                weight = module.weight.data  # (N, K)
                if hessian is None:
                    q = rtn_quantize(weight, spec)
                else:
                    q = gptq_quantize(weight, hessian.matrix, spec)
                module.weight.data = q.dequantize().to(weight.device, weight.dtype)
                results[f"{LAYERS_PREFIX}.{index}.{path}"] = q
            del hessian
        if method == "gptq" and index + 1 < len(layers):
            # The layer's output under its quantized weights is what the next layer will really see.
            inputs = [next_layer_args(item, layer(*item.args, **item.kwargs)) for item in inputs]
        if on_layer_done is not None:
            on_layer_done(index, len(layers))
    return results


# ---- a whole checkpoint folder in, a GPTQ checkpoint folder out ------------------------------------

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

    # float32 on the CPU (fast there, and exact Hessians); the checkpoint's own dtype on a GPU.
    dtype = torch.float32 if device.type == "cpu" else None
    return load_model(src, device=device, dtype=dtype)
