"""Every way a checkpoint folder can be wrong gets a CheckpointError whose message names the problem
(the file or tensor, what was found, what was expected) and, where there is one, what to do."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import engine
from engine.errors import CheckpointError, UnsupportedModelError
from engine.loader import check_checkpoint_folder
from tests.tiny_models import make_tiny_checkpoint


@pytest.fixture
def folder(tmp_path):
    return make_tiny_checkpoint(tmp_path / "model", "llama")


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def edit_tensors(folder, edit):
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def load_error(folder) -> str:
    with pytest.raises(CheckpointError) as exc:
        engine.load_model(folder, device="cpu")
    return str(exc.value)


def test_errors_are_value_errors():
    assert issubclass(CheckpointError, ValueError) and issubclass(UnsupportedModelError, CheckpointError)


def test_missing_folder(tmp_path):
    assert "does not exist" in load_error(tmp_path / "nowhere")


def test_missing_config_json(folder):
    (folder / "config.json").unlink()
    assert "config.json not found in" in load_error(folder)


def test_config_json_that_is_not_json(folder):
    (folder / "config.json").write_text("{ not json")
    assert "config.json in" in load_error(folder) and "is not valid JSON" in load_error(folder)


def test_missing_tokenizer_json(folder):
    assert check_checkpoint_folder(folder) == folder
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json not found in"):
        check_checkpoint_folder(folder)


def test_unknown_model_type_names_it_and_the_supported_ones(folder):
    edit_config(folder, model_type="gpt_neox")
    message = load_error(folder)
    assert "model_type 'gpt_neox' is not supported (supported: llama, mistral, qwen2)" in message


def test_unsupported_rope_scaling_is_named(folder):
    edit_config(folder, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    assert "rope scaling type 'yarn' is not supported (supported: default, linear, llama3)" in load_error(
        folder
    )


def test_pickle_checkpoint_is_refused_with_the_reason_and_the_fix(folder):
    (folder / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    message = load_error(folder)
    assert "pytorch_model.bin" in message
    assert "arbitrary code" in message
    assert "save_pretrained(dst, safe_serialization=True)" in message


def test_no_weights_at_all(folder):
    (folder / "model.safetensors").unlink()
    assert "no *.safetensors weights in" in load_error(folder)


def test_missing_tensor_is_named_with_its_expected_shape(folder):
    edit_tensors(folder, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    message = load_error(folder)
    assert "tensor 'model.layers.1.mlp.down_proj.weight' (expected shape (64, 128)) is missing" in message


def test_mis_shaped_tensor_is_named_with_both_shapes(folder):
    def shrink(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)

    edit_tensors(folder, shrink)
    message = load_error(folder)
    assert "tensor 'model.layers.0.self_attn.k_proj.weight' has shape (16, 64), expected (32, 64)" in message


def test_truncated_safetensors_file(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = load_error(folder)
    assert "model.safetensors in" in message and "truncated or corrupt" in message
    assert "download or convert it again" in message


def test_corrupt_safetensors_header(folder):
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    assert "model.safetensors in" in load_error(folder) and "truncated or corrupt" in load_error(folder)


def test_shard_missing_from_the_index(tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "m", "llama", num_shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    assert "lists shard model-00002-of-00002.safetensors, which is missing" in load_error(folder)


def test_index_naming_a_tensor_its_shard_lacks(tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "m", "llama", num_shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "tensor 'model.extra.weight' is in model-00001-of-00002.safetensors" in load_error(folder)


def test_gptq_bits_contradicting_the_tensors(tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "m", "qwen2", quant={"bits": 4, "group_size": 32})
    config = json.loads((folder / "config.json").read_text())
    edit_config(folder, quantization_config={**config["quantization_config"], "bits": 8})
    message = load_error(folder)
    assert "model.layers.0.self_attn.q_proj.qweight has shape (8, 64), expected (16, 64)" in message
    assert "fit 4-bit packing" in message


def test_gptq_tensors_without_quantization_config(tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "m", "qwen2", quant={})
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))
    assert "q_proj.qweight is a GPTQ tensor, but the checkpoint has no quantization_config" in load_error(
        folder
    )


def test_unsupported_quantization(folder):
    edit_config(folder, quantization_config={"quant_method": "awq", "bits": 4})
    assert "quantization method 'awq' is not supported (supported: gptq)" in load_error(folder)
    edit_config(folder, quantization_config={"quant_method": "gptq", "bits": 3, "group_size": 128})
    assert "GPTQ bits=3 is not supported (supported: 4, 8)" in load_error(folder)
    edit_config(
        folder, quantization_config={"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}
    )
    assert "GPTQ checkpoint_format 'marlin' is not supported (supported: gptq, gptq_v2)" in load_error(folder)


def test_token_ids_outside_the_vocabulary_and_too_long_inputs(folder):
    model = engine.load_model(folder, device="cpu")
    vocab_size = model.config.vocab_size
    with pytest.raises(
        ValueError, match=rf"token id {vocab_size} is outside the vocabulary \[0, {vocab_size}\)"
    ):
        model(torch.tensor([[1, vocab_size]]))
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary"):
        model(torch.tensor([[-1]]))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, seq\), got shape \(3,\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="sequence of 513 tokens is longer than the model's context"):
        model(torch.zeros(1, 513, dtype=torch.long))


def test_bad_dtype_argument(folder):
    with pytest.raises(ValueError, match="dtype 'float8' is not supported"):
        engine.load_model(folder, dtype="float8", device="cpu")
