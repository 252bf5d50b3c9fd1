"""engine/models/act_order.py on the CPU: an act-order GPTQ model loads with q|k|v's and gate|up's
permutations in the norms before them, o's in the attention and down's in gate|up's output columns,
and computes what the same model with every permutation left on its linear computes."""

from __future__ import annotations

import pytest
import torch

import engine
from engine.layers.linear import QuantLinear
from tests.tiny_models import make_tiny_checkpoint


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: q|k|v with a bias
def test_folded_model_equals_the_model_with_permuted_inputs(tmp_path, monkeypatch, family):
    folder = make_tiny_checkpoint(tmp_path, family, quant={"bits": 4, "group_size": 32, "desc_act": True})
    folded = engine.load_model(folder, device="cpu")
    monkeypatch.setattr("engine.models.base.fold_act_order", lambda layers: None)
    unfolded = engine.load_model(folder, device="cpu")
    for layer, original in zip(folded.layers, unfolded.layers, strict=True):
        attn, mlp = layer.self_attn, layer.mlp
        assert isinstance(attn.qkv_proj, QuantLinear) and attn.qkv_proj.perm is None
        assert mlp.gate_up_proj.perm is None and mlp.down_proj.perm is None
        assert torch.equal(layer.input_layernorm.out_perm.long(), original.self_attn.qkv_proj.perm)
        assert torch.equal(layer.post_attention_layernorm.out_perm.long(), original.mlp.gate_up_proj.perm)
        assert attn.o_proj.perm is None
        assert torch.equal(attn.out_perm.long(), original.self_attn.o_proj.perm)
        assert torch.equal(attn.out_perm[attn.out_index.long()].long(), torch.arange(attn.out_perm.numel()))
        assert not torch.equal(mlp.gate_up_proj.qweight, original.mlp.gate_up_proj.qweight)
    ids = torch.randint(0, folded.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(folded(ids), unfolded(ids), rtol=1e-5, atol=1e-5)


def test_a_model_without_permutations_is_left_as_it_is(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "llama", quant={"bits": 4, "group_size": 32, "desc_act": False})
    model = engine.load_model(folder, device="cpu")
    for layer in model.layers:
        assert layer.input_layernorm.out_perm is None and layer.post_attention_layernorm.out_perm is None
        assert layer.self_attn.out_perm is None
