"""A GPTQ checkpoint's logits equal transformers' on the dequantized float weights (fp32, rel err
<= 1e-4): the loader, the repacking, q/k/v and gate/up fusion and the quantized linear together."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import engine
from engine.layers.linear import ConcatLinear, QuantLinear
from tests.tiny_models import dequantize_gptq_checkpoint, make_tiny_checkpoint

transformers = pytest.importorskip("transformers")

SIZES = {"hidden_size": 128, "intermediate_size": 256}  # inputs of 128 and 256: group 128 is not "one group"
GROUP_SIZES = [32, 64, 128, -1]
# every (bits, desc_act, sym, checkpoint_format) combination, group sizes rotating through them so each
# appears with both bit widths and both orders
VARIANTS = [
    {
        "bits": bits,
        "desc_act": desc_act,
        "sym": sym,
        "checkpoint_format": fmt,
        "group_size": GROUP_SIZES[i % 4],
    }
    for i, (bits, desc_act, sym, fmt) in enumerate(
        itertools.product([4, 8], [True, False], [False, True], ["gptq", "gptq_v2"])
    )
]


def variant_id(quant: dict) -> str:
    order = "actorder" if quant["desc_act"] else "seq"
    zeros = "sym" if quant["sym"] else "asym"
    return f"{quant['bits']}bit-{order}-{zeros}-g{quant['group_size']}-{quant['checkpoint_format']}"


def compare_with_transformers(tmp_path, family: str, quant: dict, **kwargs) -> engine.load_model:
    folder = make_tiny_checkpoint(tmp_path / "gptq", family, quant=quant, seed=5, **SIZES, **kwargs)
    model = engine.load_model(folder, device="cpu")
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    reference_model = transformers.AutoModelForCausalLM.from_pretrained(
        dequantize_gptq_checkpoint(folder, tmp_path / "float"), dtype=torch.float32
    )
    with torch.no_grad():
        reference = reference_model(ids).logits
    logits = model(ids)
    assert ((logits - reference).norm() / reference.norm()).item() <= 1e-4
    return model


@pytest.mark.parametrize("quant", VARIANTS, ids=variant_id)
def test_gptq_logits_equal_transformers_on_dequantized_weights(tmp_path, quant):
    model = compare_with_transformers(tmp_path, "qwen2", quant)
    qkv = model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, QuantLinear) and qkv.out_features == 128 + 2 * 64  # q | k | v fused
    assert qkv.bias is not None  # qwen2's q/k/v biases travel with the fused weight
    assert isinstance(model.layers[0].mlp.gate_up_proj, QuantLinear)
    assert model.embed_tokens.weight.dtype == torch.float32  # embeddings and head stay float


def test_llama_and_mistral_gptq(tmp_path):
    compare_with_transformers(tmp_path / "llama", "llama", {"bits": 4, "group_size": 64, "desc_act": True})
    compare_with_transformers(
        tmp_path / "mistral", "mistral", {"bits": 8, "group_size": 32}, sliding_window=8
    )


def test_act_order_layers_with_different_orders_stay_unfused(tmp_path):
    quant = {"bits": 4, "group_size": 32, "desc_act": True, "shared_g_idx": False}
    model = compare_with_transformers(tmp_path, "qwen2", quant)
    assert isinstance(model.layers[0].self_attn.qkv_proj, ConcatLinear)
    assert isinstance(model.layers[0].mlp.gate_up_proj, ConcatLinear)


def test_quantize_config_json_is_read_when_config_json_has_none(tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "m", "llama", quant={"bits": 4, "group_size": 32, "sym": True})
    config = json.loads((folder / "config.json").read_text())
    quant = config.pop("quantization_config")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "quantize_config.json").write_text(json.dumps(quant))
    model = engine.load_model(folder, device="cpu")
    assert model.config.quant is not None and model.config.quant.sym
    assert isinstance(model.layers[0].self_attn.o_proj, QuantLinear)
