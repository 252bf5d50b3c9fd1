"""The sequential driver: quantize a whole float model, one decoder layer at a time (a checkpoint
folder in and out around it: engine/quant/quantize_checkpoint.py).

Each decoder layer is quantized on the inputs it receives from the layers before it *after* those
were quantized, so a layer learns to correct the errors upstream instead of assuming float inputs.
Inside a layer the linears go in four stages, in the order data flows through them:
q/k/v (one shared input), o, gate/up (one shared input), down; a stage's inputs are taken after the
stages before it were quantized. Memory stays at one layer's activations for the calibration set.

How the engine's model (engine/models/base.py: `.layers`, each called as
layer(positions, hidden, residual, attn, kv_cache_layer) -> (hidden, residual), with q/k/v fused
into `self_attn.qkv_proj` and gate/up into `mlp.gate_up_proj`) is driven:
  1. the model runs on each calibration batch with a hook that records the first layer's arguments
     and stops the forward there;
  2. a layer is called directly on recorded arguments; a pre-hook on a stage's linear adds its
     input to the stage's Hessian and stops the layer there (no wasted compute on later stages);
  3. the layer's output under its quantized weights becomes the next layer's arguments. The layer
     returns (mlp(x), residual) with mlp(x) = down_proj(its input), so the last stage's pass keeps
     down_proj's inputs and the residual (the output of `post_attention_layernorm`) and the output is
     down_proj(input) once down_proj is quantized, instead of a whole second forward of the layer
     (that saves ~40% of the quantizer's forward work). The first calibration batch of every layer
     is checked against a whole forward; a layer where they differ gets whole forwards.
A fused linear is quantized as one matrix (GPTQ treats rows independently given the shared Hessian,
so this equals quantizing the parts one by one, with one act-order g_idx they can all share) and
split back into the checkpoint's q/k/v and gate/up. The quantized weights replace the float ones in
place (dequantized, so plain matmuls compute with them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from engine.quant.gptq import Hessian, OutputShift, float_target_weight, gptq_quantize
from engine.quant.rtn import QuantizedWeight, QuantSpec, rtn_quantize


@dataclass(frozen=True)
class Stage:
    module: str  # path of the (possibly fused) linear inside a decoder layer
    parts: tuple[str, ...]  # checkpoint names of its output-feature slices, in order


STAGES: tuple[Stage, ...] = (
    Stage("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    Stage("self_attn.o_proj", ("self_attn.o_proj",)),
    Stage("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")),
    Stage("mlp.down_proj", ("mlp.down_proj",)),
)
LAYERS_PREFIX = "model.layers"  # checkpoint name of the decoder layer list (Hugging Face layout)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted activations are recorded."""


@dataclass
class LayerArgs:
    args: tuple  # (positions, hidden, residual, attn, kv_cache_layer)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no decoder layer list at .layers")
    return layers


def part_sizes(model: nn.Module, stage: Stage) -> list[int]:
    """Output features of each checkpoint part of a stage's linear."""
    c = model.config
    return {
        "self_attn.qkv_proj": [c.q_size, c.kv_size, c.kv_size],
        "self_attn.o_proj": [c.hidden_size],
        "mlp.gate_up_proj": [c.intermediate_size, c.intermediate_size],
        "mlp.down_proj": [c.hidden_size],
    }[stage.module]


def split_out_features(q: QuantizedWeight, sizes: Sequence[int]) -> list[QuantizedWeight]:
    """Slices of a fused quantized linear along its output features (columns of codes (K, N))."""
    assert sum(sizes) == q.codes.shape[1], (sizes, q.codes.shape)
    out, start = [], 0
    for n in sizes:
        cols = slice(start, start + n)
        out.append(
            QuantizedWeight(q.codes[:, cols].contiguous(), q.scales[:, cols].contiguous(),
                            q.zeros[:, cols].contiguous(), q.g_idx, q.bits, q.group_size)
        )  # fmt: skip
        start += n
    return out


def next_layer_args(inputs: LayerArgs, output: tuple[torch.Tensor, torch.Tensor]) -> LayerArgs:
    positions, _hidden, _residual, attn, kv_cache_layer = inputs.args
    hidden, residual = output
    return LayerArgs((positions, hidden, residual, attn, kv_cache_layer))


def capture_first_layer_args(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[LayerArgs]:
    layer0 = decoder_layers(model)[0]
    captured: list[LayerArgs] = []

    def record(_module, args, kwargs):
        assert not kwargs, "decoder layers are called with positional arguments"
        # the layer's own inputs; the model's next_norm is dropped, so the passes run every module
        # as written and the hooks on them fire (engine/models/base.py DecoderLayer)
        captured.append(LayerArgs(tuple(args[:5])))
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


RESIDUAL_NORM = "post_attention_layernorm"  # returns (mlp input, residual) in every family's layer
# The norm whose residual output (the stream so far) a stage's output is added to, for the stages that
# write the residual stream: o_proj's output enters post_attention_layernorm as x, down_proj's the
# next layer's input_layernorm.
STREAM_NORMS = {"self_attn.o_proj": "input_layernorm", "mlp.down_proj": RESIDUAL_NORM}


@dataclass
class StagePass:
    hessian: Hessian
    kept_inputs: list[torch.Tensor]  # the stage's input per calibration batch, when asked to keep them
    residuals: list[torch.Tensor]  # RESIDUAL_NORM's residual output per batch, idem
    shift: OutputShift | None = None  # towards the float model's outputs, when given its inputs


def _stage_pass(
    layer: nn.Module,
    path: str,
    inputs: Sequence[LayerArgs],
    keep: bool = False,
    float_inputs: Sequence[torch.Tensor] | None = None,
    float_streams: Sequence[torch.Tensor] | None = None,
) -> StagePass:
    """float_inputs: the stage's input per batch in the float model, for `StagePass.shift`;
    float_streams: the residual stream per batch in the float model where the stage's output joins
    it (STREAM_NORMS), to cancel its drift as well."""
    module = layer.get_submodule(path)
    device = module.weight.device
    found = StagePass(Hessian(module.weight.shape[1], device=device), [], [])
    if float_inputs is not None:
        assert len(float_inputs) == len(inputs), (len(float_inputs), len(inputs))
        found.shift = OutputShift(module.weight.data, device=device)
    seen = [0]  # batches so far: float_inputs pairs with the inputs by position
    stream: list[torch.Tensor] = []  # this batch's residual stream in the quantized model

    def record(_module, args):
        found.hessian.add(args[0].detach())
        if found.shift is not None:
            drift = None if float_streams is None else float_streams[seen[0]] - stream.pop()
            found.shift.add(float_inputs[seen[0]], args[0].detach(), drift)
        seen[0] += 1
        if keep:
            found.kept_inputs.append(args[0].detach())
        raise _Stop

    def record_residual(_module, _args, output):
        found.residuals.append(output[1].detach())

    handles = [module.register_forward_pre_hook(record)]
    if float_streams is not None:
        norm = layer.get_submodule(STREAM_NORMS[path])
        handles.append(norm.register_forward_hook(lambda _m, _a, output: stream.append(output[1].detach())))
    if keep:
        handles.append(layer.get_submodule(RESIDUAL_NORM).register_forward_hook(record_residual))
    try:
        for item in inputs:
            try:
                layer(*item.args)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return found


@dataclass
class FloatPass:
    stage_inputs: dict[str, list[torch.Tensor]]  # stage module -> its input per batch, float model
    outputs: list[LayerArgs]  # the next layer's arguments in the float model
    streams: dict[str, list[torch.Tensor]]  # stage module -> the residual stream it joins (STREAM_NORMS)


def _float_pass(layer: nn.Module, inputs: Sequence[LayerArgs]) -> FloatPass:
    """One whole forward of a still-float layer on the float model's inputs, keeping every stage's
    input (the targets of `StagePass.shift`) and the outputs (the float model's next inputs)."""
    found = FloatPass({stage.module: [] for stage in STAGES}, [], {path: [] for path in STREAM_NORMS})

    def record(_module, args, key):
        found.stage_inputs[key].append(args[0].detach())

    handles = [
        layer.get_submodule(stage.module).register_forward_pre_hook(
            lambda m, a, key=stage.module: record(m, a, key)
        )
        for stage in STAGES
    ]
    handles += [
        layer.get_submodule(norm).register_forward_hook(
            lambda _m, _a, output, key=path: found.streams[key].append(output[1].detach())
        )
        for path, norm in STREAM_NORMS.items()
    ]
    try:
        found.outputs = [next_layer_args(item, layer(*item.args)) for item in inputs]
    finally:
        for handle in handles:
            handle.remove()
    return found


def _layer_outputs(layer: nn.Module, inputs: Sequence[LayerArgs], last: StagePass) -> list[LayerArgs]:
    """The next layer's arguments: from the last stage's kept inputs when they reproduce the layer's
    own forward on the first batch (they do for engine/models/base.py's DecoderLayer), else whole
    forwards."""
    down = layer.get_submodule(STAGES[-1].module)
    if len(last.kept_inputs) == len(last.residuals) == len(inputs):
        whole = layer(*inputs[0].args)
        fast = (down(last.kept_inputs[0]), last.residuals[0])
        if all(
            a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
            for a, b in zip(whole, fast, strict=True)
        ):
            outputs = [whole] + [
                (down(x), r) for x, r in zip(last.kept_inputs[1:], last.residuals[1:], strict=True)
            ]
            return [next_layer_args(item, out) for item, out in zip(inputs, outputs, strict=True)]
    return [next_layer_args(item, layer(*item.args)) for item in inputs]


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
    # With float targets a second stream of inputs runs through the float layers beside the quantized
    # one (the same embeddings enter layer 0): one more whole layer forward per layer.
    float_inputs = inputs if method == "gptq" and spec.float_target > 0 else None
    for index, layer in enumerate(layers):
        last: StagePass | None = None
        float_pass = _float_pass(layer, float_inputs) if float_inputs is not None else None
        for stage in STAGES:
            module = layer.get_submodule(stage.module)
            weight = module.weight.data  # (N, K), parts side by side along N
            if method == "gptq":
                found = _stage_pass(
                    layer, stage.module, inputs, keep=stage is STAGES[-1] and index + 1 < len(layers),
                    float_inputs=float_pass.stage_inputs.pop(stage.module) if float_pass else None,
                    float_streams=float_pass.streams.pop(stage.module, None)
                    if float_pass and spec.residual_target else None,
                )  # fmt: skip
                hessian = found.hessian.matrix
                found.hessian = None  # type: ignore[assignment]  # free the (K, K) accumulator now
                target = weight
                if found.shift is not None:
                    target = float_target_weight(
                        weight, hessian, found.shift.matrix, spec.damp_percent, spec.float_target
                    )
                    found.shift = None
                q = gptq_quantize(target, hessian, spec)
                del hessian, target
                last = found
            else:
                q = rtn_quantize(weight, spec)
            module.weight.data = q.dequantize().to(weight.device, weight.dtype)
            for part, part_q in zip(
                stage.parts, split_out_features(q, part_sizes(model, stage)), strict=True
            ):
                results[f"{LAYERS_PREFIX}.{index}.{part}"] = part_q
        if method == "gptq" and index + 1 < len(layers):
            # The layer's output under its quantized weights is what the next layer will really see.
            assert last is not None
            inputs = _layer_outputs(layer, inputs, last)
            del last
            if float_pass is not None:
                float_inputs = float_pass.outputs
        del float_pass
        if on_layer_done is not None:
            on_layer_done(index, len(layers))
    return results
