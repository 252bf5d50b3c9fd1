"""The random GPTQ checkpoint bench/bench_vs_exllamav2.py writes for both engines: every linear decodes
to (code - 8) * scale as an independent unpacker reads it, and exlsp's loader serves those weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import engine
from bench.bench_vs_exllamav2 import GROUP_SIZE, LINEARS, write_random_checkpoint
from bench.gpu_shapes import LLAMA3_8B, QWEN25_CODER_7B
from engine.quant.layout import dense_weight
from tests.tiny_models import gptq_unpack

# The models' fields at a size a CPU writes in a moment: two layers, GQA 4, MLP 2.5x, group 128
TINY = dict(
    vocab_size=320,
    hidden_size=256,
    intermediate_size=640,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=1,
)


@pytest.mark.parametrize(
    "shapes,arch",
    [(LLAMA3_8B, "LlamaForCausalLM"), (QWEN25_CODER_7B, "Qwen2ForCausalLM")],
    ids=["llama", "qwen2"],
)
def test_random_checkpoint_decodes_to_codes_minus_8_times_scale_and_loads(tmp_path, shapes, arch):
    write_random_checkpoint(tmp_path, dict(shapes, **TINY), torch.Generator().manual_seed(3))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [arch]
    assert config["quantization_config"]["checkpoint_format"] == "gptq"
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert {n.removeprefix("model.layers.0.").rsplit(".", 1)[0] for n in tensors if ".qweight" in n} >= set(
        LINEARS
    )

    weights = {}  # (N, K) float by linear of layer 1
    for name in LINEARS:
        layer = {
            key: tensors[f"model.layers.1.{name}.{key}"] for key in ("qweight", "qzeros", "scales", "g_idx")
        }
        weights[name] = gptq_unpack(layer, 4, "gptq")
        # the same by hand: every stored zero is 7, i.e. zero 8; codes span all 16 values
        codes = (
            layer["qweight"].repeat_interleave(8, 0)
            >> (4 * (torch.arange(layer["qweight"].shape[0] * 8) % 8))[:, None]
        ) & 15
        scale = layer["scales"].float().repeat_interleave(GROUP_SIZE, 0)
        assert torch.equal(weights[name], ((codes - 8).float() * scale).t())
        assert set(codes.unique().tolist()) == set(range(16))

    model = engine.load_model(tmp_path, device="cpu", dtype=torch.float32)
    attn, mlp = model.layers[1].self_attn, model.layers[1].mlp
    qkv = torch.cat([weights[f"self_attn.{p}_proj"] for p in "qkv"]).t()  # (K, N): q | k | v, fused at load
    assert torch.equal(dense_weight(attn.qkv_proj.packed(), torch.float32), qkv)
    biases = [tensors.get(f"model.layers.1.self_attn.{p}_proj.bias") for p in "qkv"]
    if arch == "Qwen2ForCausalLM":  # Qwen2's q, k and v always have biases
        assert torch.equal(attn.qkv_proj.packed().bias.float(), torch.cat(biases).float())
    else:
        assert biases == [None] * 3 and attn.qkv_proj.packed().bias is None
    assert torch.equal(dense_weight(attn.o_proj.packed(), torch.float32), weights["self_attn.o_proj"].t())
    gate_up = torch.cat([weights["mlp.gate_proj"], weights["mlp.up_proj"]]).t()
    assert torch.equal(dense_weight(mlp.gate_up_proj.packed(), torch.float32), gate_up)
    assert torch.equal(dense_weight(mlp.down_proj.packed(), torch.float32), weights["mlp.down_proj"].t())
