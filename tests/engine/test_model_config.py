"""config.json -> ModelConfig: the per-family rules written down once."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import ModelConfig, QuantConfig, RopeScaling
from engine.errors import CheckpointError

BASE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
}


def parse(**raw) -> ModelConfig:
    return ModelConfig.from_dict({**BASE, **raw})


def test_defaults_of_a_plain_llama():
    c = parse(model_type="llama", eos_token_id=[2, 7], bos_token_id=1)
    assert (c.head_dim, c.q_size, c.kv_size) == (16, 64, 32)
    assert (c.rope_theta, c.rope_scaling, c.quant) == (10000.0, None, None)
    assert c.layer_sliding_windows == (None,) * 4 and c.sliding_window is None
    assert (c.qkv_bias, c.o_bias, c.mlp_bias, c.tie_word_embeddings) == (False, False, False, False)
    assert (c.bos_token_id, c.eos_token_ids) == (1, (2, 7))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.vocab_size = 5


def test_biases_per_family():
    assert parse(model_type="qwen2").qkv_bias and not parse(model_type="qwen2").o_bias
    llama = parse(model_type="llama", attention_bias=True, mlp_bias=True)
    assert (llama.qkv_bias, llama.o_bias, llama.mlp_bias) == (True, True, True)


def test_sliding_windows_per_family():
    assert parse(model_type="mistral", sliding_window=8).layer_sliding_windows == (8, 8, 8, 8)
    assert parse(model_type="mistral", sliding_window=None).sliding_window is None
    # Qwen2 ignores the window unless use_sliding_window, then applies it from max_window_layers on
    assert (
        parse(model_type="qwen2", sliding_window=8, max_window_layers=2).layer_sliding_windows == (None,) * 4
    )
    windowed = parse(model_type="qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=2)
    assert windowed.layer_sliding_windows == (None, None, 8, 8)
    explicit = parse(
        model_type="qwen2",
        use_sliding_window=True,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"] * 2,
    )
    assert explicit.layer_sliding_windows == (8, None, 8, None)


def test_rope_scaling_legacy_and_transformers5_forms_agree():
    llama3 = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    legacy = parse(model_type="llama", rope_theta=500000.0, rope_scaling={"rope_type": "llama3", **llama3})
    v5 = parse(model_type="llama", rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **llama3})
    assert legacy.rope_scaling == v5.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert legacy.rope_theta == v5.rope_theta == 500000.0
    linear = parse(model_type="llama", rope_scaling={"type": "linear", "factor": 2.0})  # older key name
    assert linear.rope_scaling == RopeScaling("linear", 2.0)
    assert (
        parse(model_type="llama", rope_parameters={"rope_type": "default", "rope_theta": 1e6}).rope_scaling
        is None
    )


def test_quant_config_defaults_of_older_autogptq_files():
    c = parse(model_type="llama", quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128})
    assert c.quant == QuantConfig(bits=4, group_size=128, desc_act=False, sym=True, checkpoint_format="gptq")


def test_inconsistent_head_counts_and_missing_sizes():
    with pytest.raises(
        CheckpointError, match=r"num_attention_heads \(4\) is not a multiple of num_key_value_heads \(3\)"
    ):
        parse(model_type="llama", num_key_value_heads=3)
    raw = {**BASE, "model_type": "llama"}
    del raw["vocab_size"]
    with pytest.raises(CheckpointError, match="config.json lacks 'vocab_size'"):
        ModelConfig.from_dict(raw)
    with pytest.raises(CheckpointError, match="hidden_act 'gelu' is not supported"):
        parse(model_type="llama", hidden_act="gelu")
