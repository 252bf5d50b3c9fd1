"""The tiny checkpoints every engine test builds on: what they contain and that transformers reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.tiny_models import (
    FIM_TOKENS,
    _pack_along_rows,
    _unpack_rows,
    dequantize_gptq_checkpoint,
    make_tiny_checkpoint,
    make_tokenizer_json,
)


def test_tokenizer_is_deterministic_and_has_the_special_tokens(tmp_path):
    first = make_tokenizer_json(tmp_path / "a").read_bytes()
    second = make_tokenizer_json(tmp_path / "b").read_bytes()
    assert first == second
    added = [t["content"] for t in json.loads(first)["added_tokens"]]
    assert added == ["<|endoftext|>", *FIM_TOKENS, "<|im_start|>", "<|im_end|>"]
    without_fim = json.loads(make_tokenizer_json(tmp_path / "c", fim=False).read_text())
    assert [t["content"] for t in without_fim["added_tokens"]] == [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    ]


def test_tokenizer_round_trips_code_and_bytes(tmp_path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(make_tokenizer_json(tmp_path)))
    text = "def f(x):\n    return x + 1  # ünïcode ✓\n"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned


def test_gptq_row_packing_round_trips():
    rng = np.random.default_rng(0)
    for bits in (4, 8):
        values = rng.integers(0, 1 << bits, size=(64, 5))
        packed = _pack_along_rows(values, bits)
        assert packed.shape == (64 * bits // 32, 5) and packed.dtype == np.int32
        assert (_unpack_rows(packed, bits) == values).all()
    # the first value of a word sits in its low bits
    assert _pack_along_rows(np.array([[1], [2], [0], [0], [0], [0], [0], [15]]), 4)[0, 0] == np.int32(
        -268435423
    )


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_transformers_loads_every_family(tmp_path, family):
    from transformers import AutoModelForCausalLM

    folder = make_tiny_checkpoint(tmp_path, family)
    config = json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == config["architectures"][0]
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, config["vocab_size"])
    assert model.config.tie_word_embeddings == (family == "qwen2")


def test_gptq_checkpoint_layout_and_dequantized_copy(tmp_path):
    quant = {"bits": 4, "group_size": 32, "desc_act": True, "sym": False, "checkpoint_format": "gptq"}
    folder = make_tiny_checkpoint(tmp_path / "q", "qwen2", quant=quant)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq"
    tensors = load_file(str(folder / "model.safetensors"))
    assert tensors["model.layers.0.self_attn.q_proj.qweight"].shape == (64 // 8, 64)
    assert tensors["model.layers.0.self_attn.q_proj.qzeros"].shape == (2, 64 // 8)
    assert tensors["model.layers.0.mlp.down_proj.scales"].shape == (128 // 32, 64)
    g_idx = tensors["model.layers.0.self_attn.q_proj.g_idx"]
    assert torch.equal(g_idx, tensors["model.layers.0.self_attn.k_proj.g_idx"])  # same input, same order
    assert torch.bincount(g_idx).tolist() == [32, 32] and not torch.equal(g_idx, torch.arange(64) // 32)
    dense = load_file(str(dequantize_gptq_checkpoint(folder, tmp_path / "d") / "model.safetensors"))
    assert dense["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
    assert "model.layers.0.self_attn.q_proj.qweight" not in dense
    assert dense["model.layers.0.self_attn.q_proj.bias"].dtype == torch.float32
