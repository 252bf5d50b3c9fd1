"""GGUF import (engine/gguf_import.py, engine/gguf_tokenizer.py) on small GGUF files the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from safetensors.torch import load_file
from tokenizers import Tokenizer

from engine.gguf_import import GgufImportError, convert_gguf, hf_tensor_name, unpermute_rows
from engine.gguf_tokenizer import UnsupportedTokenizer
from tests.engine.gguf_files import HEADS, TYPES, llama_cpp_permute, write_gguf

CODE = 'def add(a, b):\n    """Sum."""\n    return a + b\n\nfor i in range(10):\n    print(i)\n'


def hf_name(gguf_name: str) -> str:
    return hf_tensor_name(gguf_name, "llama")


def convert(tmp_path: Path, arch: str = "llama", **kw) -> tuple[Path, dict[str, np.ndarray], Path]:
    gguf_path = tmp_path / f"{arch}.gguf"
    expected = write_gguf(gguf_path, arch, **kw)
    folder = tmp_path / "out"
    folder.mkdir()
    convert_gguf(gguf_path, folder, dtype=torch.float32)
    return folder, expected, gguf_path


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_every_tensor_imports_as_its_dequantized_values_in_the_hugging_face_layout(tmp_path, arch) -> None:
    folder, expected, _ = convert(tmp_path, arch)
    tensors = load_file(str(folder / "model.safetensors"))
    assert len(tensors) == len(expected)
    for gguf_name, values in expected.items():
        got = tensors[hf_name(gguf_name)]
        assert got.dtype == torch.float32
        assert torch.equal(got, torch.from_numpy(values)), gguf_name  # llama's Q/K rows restored too
    # Names: one of each kind, spelled out.
    assert tensors["model.layers.1.mlp.down_proj.weight"].shape == (256, 512)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (128, 256)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(tensors)
    if arch == "qwen2":
        assert tensors["model.layers.0.self_attn.q_proj.bias"].shape == (256,)


def test_quantized_types_round_trip_close_to_the_original_floats(tmp_path) -> None:
    # The types gguf can quantize came from N(0, 0.05) weights: their import stays near them.
    folder, expected, _ = convert(tmp_path, "qwen2", seed=1)
    rng_check = write_gguf(tmp_path / "again.gguf", "qwen2", seed=1)  # deterministic in the seed
    for name in expected:
        assert np.array_equal(expected[name], rng_check[name])
    tensors = load_file(str(folder / "model.safetensors"))
    for gguf_name, qtype in TYPES.items():
        if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0, T.BF16, T.F16):
            w = tensors[hf_name(gguf_name)]
            assert float(w.std()) == pytest.approx(0.05, rel=0.1), gguf_name


def test_llama_q_and_k_rows_are_unpermuted_and_qwen2_rows_are_not(tmp_path) -> None:
    w = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)  # 2 heads of dim 4
    permuted = torch.from_numpy(llama_cpp_permute(w.numpy(), 2))
    assert permuted[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]  # pairs (0, 2), (1, 3) per head
    assert torch.equal(unpermute_rows(permuted, 2), w)
    bias = torch.arange(8.0)
    assert torch.equal(unpermute_rows(torch.from_numpy(llama_cpp_permute(bias.numpy(), 2)), 2), bias)
    # End to end: the same stored bytes import differently for the two architectures.
    llama, expected, _ = convert(tmp_path, "llama")
    q = load_file(str(llama / "model.safetensors"))["model.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(q, torch.from_numpy(expected["blk.1.attn_q.weight"]))
    stored = torch.from_numpy(llama_cpp_permute(expected["blk.1.attn_q.weight"], HEADS))
    assert not torch.equal(q, stored)  # the file really held permuted rows
    k = load_file(str(llama / "model.safetensors"))["model.layers.1.self_attn.k_proj.weight"]
    assert torch.equal(k, torch.from_numpy(expected["blk.1.attn_k.weight"]))  # KV_HEADS heads


def test_config_comes_from_the_metadata(tmp_path) -> None:
    folder, _, _ = convert(tmp_path, "qwen2", tie=True)
    config = json.loads((folder / "config.json").read_text())
    assert config == {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": 1024,
        "rms_norm_eps": pytest.approx(1e-5),
        "rope_theta": 50000.0,
        "rope_scaling": None,
        "hidden_act": "silu",
        "tie_word_embeddings": True,  # no output.weight in the file
        "bos_token_id": 0,
        "eos_token_id": [0, 8],  # <|endoftext|>, then <|im_end|> found among the special tokens
        "torch_dtype": "float32",
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 2,
    }
    assert "lm_head.weight" not in load_file(str(folder / "model.safetensors"))
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [0, 8]


def test_the_imported_checkpoint_loads_and_runs_in_the_engine(tmp_path) -> None:
    from engine.loader import load_model

    folder, _, _ = convert(tmp_path, "llama")
    logits = load_model(folder, device="cpu", dtype=torch.float32)(torch.tensor([[1, 2, 3, 50]]))
    assert logits.shape == (1, 4, json.loads((folder / "config.json").read_text())["vocab_size"])
    assert torch.isfinite(logits).all()


def test_tokenizer_is_rebuilt_with_special_fim_tokens_and_chat_template(tmp_path) -> None:
    folder, _, _ = convert(tmp_path, "qwen2")
    original = Tokenizer.from_file(str(tmp_path / "qwen2-tokenizer.json"))
    rebuilt = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in (CODE, "x = [1, 2, 3]  # déjà vu\n\tif x:\n", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>"):
        assert rebuilt.encode(text).ids == original.encode(text).ids
        assert rebuilt.decode(rebuilt.encode(text).ids, skip_special_tokens=False) == text
    fim = rebuilt.encode("<|fim_prefix|><|fim_suffix|><|fim_middle|><|fim_pad|><|repo_name|><|file_sep|>").ids
    assert len(fim) == 6
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"].startswith("{% for message in messages %}")
    assert config["eos_token"] == "<|endoftext|>" and config["bos_token"] == "<|endoftext|>"
    assert {v["content"] for v in config["added_tokens_decoder"].values()} >= {"<|fim_prefix|>", "<|im_end|>"}

    from engine.tokenizer import Tokenizer as EngineTokenizer

    engine_tokenizer = EngineTokenizer.from_folder(folder)
    assert engine_tokenizer.fim is not None


def test_a_model_without_fim_tokens_imports_and_reports_no_fim(tmp_path) -> None:
    from engine.tokenizer import Tokenizer as EngineTokenizer

    folder, _, _ = convert(tmp_path, "llama", fim=False)
    assert EngineTokenizer.from_folder(folder).fim is None
    assert (folder / "model.safetensors").is_file()


def test_an_unsupported_architecture_is_named(tmp_path) -> None:
    path = tmp_path / "g.gguf"
    write_gguf(path, "gemma2")
    with pytest.raises(
        GgufImportError, match="GGUF architecture 'gemma2' is not supported \\(supported: llama, qwen2\\)"
    ):
        convert_gguf(path, tmp_path)


def test_an_unsupported_tensor_type_is_named_with_the_architecture(tmp_path) -> None:
    path = tmp_path / "iq.gguf"
    write_gguf(path, "qwen2", types={**TYPES, "blk.0.attn_output.weight": T.IQ4_NL})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        GgufImportError,
        match="tensor blk.0.attn_output.weight has type IQ4_NL, which is not supported \\(architecture qwen2;",
    ):
        convert_gguf(path, out)
    assert list(out.iterdir()) == []  # refused before writing anything


def test_an_unknown_tensor_name_is_refused(tmp_path) -> None:
    path = tmp_path / "r.gguf"
    write_gguf(path, "llama", types={**TYPES, "rope_freqs.weight": T.F32})
    with pytest.raises(
        GgufImportError, match="tensor rope_freqs.weight of architecture 'llama' has no known equivalent"
    ):
        convert_gguf(path, tmp_path)


def test_a_sentencepiece_tokenizer_is_refused_by_name(tmp_path) -> None:
    path = tmp_path / "spm.gguf"
    write_gguf(path, "llama", tokenizer_model="llama")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        UnsupportedTokenizer, match="GGUF tokenizer model 'llama' \\(SentencePiece\\) is not supported"
    ):
        convert_gguf(path, out)


def test_a_truncated_file_is_refused(tmp_path) -> None:
    path = tmp_path / "t.gguf"
    write_gguf(path, "llama")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GgufImportError, match="is not a readable GGUF file"):
        convert_gguf(path, tmp_path)
    path.write_bytes(b"not a gguf at all")
    with pytest.raises(GgufImportError, match="is not a readable GGUF file"):
        convert_gguf(path, tmp_path)
