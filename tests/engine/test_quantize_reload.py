"""Checkpoints written by the quantizer, read back by the engine's loader (engine/loader.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import engine.quant.quantize_checkpoint as qc
from engine.config import parse_quant_config
from engine.loader import load_model
from engine.quant.calibration import CalibrationConfig
from engine.quant.gptq import Hessian, gptq_quantize
from engine.quant.gptq_format import repack_gptq
from engine.quant.gptq_writer import pack_linear, quantization_config
from engine.quant.layout import dense_weight
from engine.quant.rtn import QuantSpec
from tests.tiny_models import CORPUS, dequantize_gptq_checkpoint, make_tiny_checkpoint

SPECS = [
    QuantSpec(bits=4, group_size=32, act_order=True, sym=False),
    QuantSpec(bits=4, group_size=32, act_order=True, sym=False, mse=True),  # the CLI's default grid
    QuantSpec(bits=4, group_size=64, act_order=False, sym=True),
    QuantSpec(bits=8, group_size=-1, act_order=True, sym=True),
]


def quantize_tiny(tmp_path: Path, family: str, spec: QuantSpec) -> tuple[Path, Path]:
    src = make_tiny_checkpoint(tmp_path / "float", family, seed=5)
    calib = tmp_path / "calib.py"
    calib.write_text(CORPUS * 3)
    dst = qc.quantize_checkpoint(
        src, tmp_path / "gptq", spec, calib_files=[calib], calib=CalibrationConfig(6, 48), device="cpu",
        load_float_model=lambda path, device: load_model(path, device=device, dtype=torch.float32),
    )  # fmt: skip
    return src, dst


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_engine_computes_from_the_gptq_checkpoint_what_its_dequantized_weights_compute(
    tmp_path, family, spec
):
    _, gptq = quantize_tiny(tmp_path, family, spec)
    reference = dequantize_gptq_checkpoint(gptq, tmp_path / "dequantized")  # the tests' own unpacker
    ids = torch.tensor([[5, 17, 200, 33, 7, 91, 4, 250], [1, 2, 3, 4, 5, 6, 7, 8]])
    quantized_logits = load_model(gptq, device="cpu", dtype=torch.float32)(ids)
    float_logits = load_model(reference, device="cpu", dtype=torch.float32)(ids)
    torch.testing.assert_close(quantized_logits, float_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_engine_repacks_every_layer_to_exactly_the_quantizers_weights(spec: QuantSpec) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 128, generator=gen) @ torch.randn(128, 128, generator=gen)
    h = Hessian(128)
    h.add(x)
    q = gptq_quantize(torch.randn(96, 128, generator=gen), h.matrix, spec)
    packed = repack_gptq(
        "layer", pack_linear(q), parse_quant_config(quantization_config(spec)), 128, 96, torch.float32
    )
    assert torch.equal(dense_weight(packed, torch.float32), q.dequantize().t())


def test_an_act_order_layer_equals_its_sequential_equivalent_on_the_same_inputs() -> None:
    # The act-order layer, and the same codes stored in group order (features sorted by group, the
    # inputs permuted to match) as an ordinary sequential checkpoint: one function.
    gen = torch.Generator().manual_seed(1)
    spec = QuantSpec(bits=4, group_size=32, act_order=True, sym=False)
    x = torch.randn(256, 128, generator=gen) @ torch.randn(128, 128, generator=gen)
    h = Hessian(128)
    h.add(x)
    q = gptq_quantize(torch.randn(64, 128, generator=gen), h.matrix, spec)
    assert not torch.equal(q.g_idx, torch.arange(128, dtype=torch.int32) // 32)  # really reordered
    order = torch.argsort(q.g_idx, stable=True)
    sequential = type(q)(q.codes[order], q.scales, q.zeros, q.g_idx[order], q.bits, q.group_size)
    assert torch.equal(sequential.g_idx, torch.arange(128, dtype=torch.int32) // 32)

    def engine_layer(weight, act_order: bool):
        config = parse_quant_config(
            quantization_config(QuantSpec(bits=4, group_size=32, act_order=act_order))
        )
        return repack_gptq("layer", pack_linear(weight), config, 128, 64, torch.float32)

    from engine import ops

    inputs = torch.randn(7, 128, generator=gen)
    y_act_order = ops.quant_linear(inputs, engine_layer(q, act_order=True))
    y_sequential = ops.quant_linear(inputs[:, order], engine_layer(sequential, act_order=False))
    torch.testing.assert_close(y_act_order, y_sequential, rtol=1e-6, atol=1e-5)


def test_fused_parts_share_one_act_order_g_idx_so_the_engine_keeps_one_matrix(tmp_path) -> None:
    _, gptq = quantize_tiny(tmp_path, "qwen2", QuantSpec(bits=4, group_size=32, act_order=True))
    tensors = load_file(str(gptq / "model.safetensors"))
    p = "model.layers.0.self_attn."
    assert torch.equal(tensors[p + "q_proj.g_idx"], tensors[p + "k_proj.g_idx"])
    assert torch.equal(tensors[p + "q_proj.g_idx"], tensors[p + "v_proj.g_idx"])
    model = load_model(gptq, device="cpu", dtype=torch.float32)
    assert type(model.layers[0].self_attn.qkv_proj).__name__ == "QuantLinear"
    assert type(model.layers[0].mlp.gate_up_proj).__name__ == "QuantLinear"
