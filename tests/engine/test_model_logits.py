"""The engine's logits equal Hugging Face transformers' on the same tiny checkpoint (fp32, rel err <= 1e-4),
for every family and every feature that changes the math. Each feature case also checks that the
feature matters on this input, so a model that ignored it could not pass by accident."""

from __future__ import annotations

import pytest
import torch

import engine
from tests.tiny_models import make_tiny_checkpoint

transformers = pytest.importorskip("transformers")

SEQ_LEN = 40  # longer than the sliding windows below and than llama3's original context
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}

# case id -> (family, make_tiny_checkpoint kwargs, kwargs of the variant the feature must differ from)
CASES = {
    "llama-gqa-untied": ("llama", {}, None),
    "llama-tied": ("llama", {"tie": True}, None),
    "llama-mha-attention-bias": ("llama", {"num_key_value_heads": 4, "attention_bias": True}, None),
    "llama-head-dim-not-hidden-over-heads": ("llama", {"head_dim": 32}, None),
    "llama-rope-llama3": (
        "llama",
        {"rope_theta": 500000.0, "rope_scaling": LLAMA3},
        {"rope_theta": 500000.0},
    ),
    "llama-rope-linear": ("llama", {"rope_scaling": {"type": "linear", "factor": 4.0}}, {}),
    "mistral-sliding-window": ("mistral", {"sliding_window": 8}, {"sliding_window": None}),
    "mistral-no-window": ("mistral", {}, None),
    "qwen2-qkv-bias-tied": ("qwen2", {}, None),
    "qwen2-untied": ("qwen2", {"tie": False}, None),
    "qwen2-window-on-upper-layers": (
        "qwen2",
        {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
        {"use_sliding_window": False, "sliding_window": 6, "max_window_layers": 1},
    ),
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def token_ids(vocab_size: int, batch: int = 2, seq_len: int = SEQ_LEN) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(7))


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_transformers(tmp_path, case):
    family, kwargs, baseline_kwargs = CASES[case]
    folder = make_tiny_checkpoint(tmp_path / "model", family, **kwargs)
    model = engine.load_model(folder, device="cpu")
    ids = token_ids(model.config.vocab_size)

    logits = model(ids)
    reference = hf_logits(folder, ids)

    assert logits.shape == (2, SEQ_LEN, model.config.vocab_size) and logits.dtype == torch.float32
    assert rel_err(logits, reference) <= 1e-4
    if baseline_kwargs is not None:  # same weights without the feature: visibly different logits
        baseline = engine.load_model(
            make_tiny_checkpoint(tmp_path / "baseline", family, **baseline_kwargs), device="cpu"
        )
        assert rel_err(baseline(ids), logits) > 1e-2


def test_sliding_window_changes_only_positions_past_the_window(tmp_path):
    windowed = engine.load_model(
        make_tiny_checkpoint(tmp_path / "w", "mistral", sliding_window=8), device="cpu"
    )
    full = engine.load_model(
        make_tiny_checkpoint(tmp_path / "f", "mistral", sliding_window=None), device="cpu"
    )
    ids = token_ids(windowed.config.vocab_size, batch=1)
    a, b = windowed(ids)[0], full(ids)[0]
    torch.testing.assert_close(a[:8], b[:8], rtol=1e-5, atol=1e-5)  # first 8 tokens see everything anyway
    assert rel_err(a[8:], b[8:]) > 1e-2


def test_batch_rows_are_independent(tmp_path):
    model = engine.load_model(make_tiny_checkpoint(tmp_path, "qwen2"), device="cpu")
    ids = token_ids(model.config.vocab_size, batch=3, seq_len=17)
    together = model(ids)
    for row in range(3):
        torch.testing.assert_close(together[row], model(ids[row : row + 1])[0], rtol=1e-5, atol=1e-5)


def test_sharded_checkpoint_loads_like_the_single_file(tmp_path):
    single = engine.load_model(make_tiny_checkpoint(tmp_path / "one", "llama", seed=3), device="cpu")
    sharded_folder = make_tiny_checkpoint(tmp_path / "three", "llama", seed=3, num_shards=3)
    assert (sharded_folder / "model.safetensors.index.json").is_file()
    sharded = engine.load_model(sharded_folder, device="cpu")
    ids = token_ids(single.config.vocab_size, batch=1, seq_len=9)
    assert torch.equal(single(ids), sharded(ids))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint_and_model(tmp_path, dtype):
    folder = make_tiny_checkpoint(tmp_path, "qwen2", dtype=dtype)
    default = engine.load_model(folder, device="cpu")  # CPU default: float32 whatever the checkpoint stores
    assert default.dtype == torch.float32
    half = engine.load_model(folder, dtype=dtype, device="cpu")
    assert half.dtype == dtype and half.layers[0].mlp.down_proj.weight.dtype == dtype
    ids = token_ids(default.config.vocab_size, batch=1, seq_len=12)
    reference = hf_logits(folder, ids)  # fp32 on the same (half-rounded) weights
    assert rel_err(default(ids), reference) <= 1e-4
    assert rel_err(half(ids), reference) <= 5e-2
