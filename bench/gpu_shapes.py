"""Real model shapes for GPU benchmarks (config.json fields), and a random-weight WeightSource that
builds a GPTQ-layout model directly on the GPU: speed does not depend on weight values, so no file
is read and nothing is downloaded."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.layers.linear import Linear, QuantLinear
from engine.quant.layout import PackedWeight

LLAMA3_8B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
QWEN25_CODER_7B = {
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
QWEN25_CODER_1_5B = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
MODELS = {
    "llama3-8b": LLAMA3_8B,
    "qwen2.5-coder-7b": QWEN25_CODER_7B,
    "qwen2.5-coder-1.5b": QWEN25_CODER_1_5B,
}


def random_packed(
    in_features: int,
    out_features: int,
    *,
    bits: int,
    group_size: int,
    dtype: torch.dtype,
    bias: bool,
    gen,
    act_order: bool = False,
) -> PackedWeight:
    """Uniform random codes (every bit pattern), scales ~0.004, mid-range zeros: weights of std ~0.02,
    as in real checkpoints. (With scales ~0.01, std ~0.05, the residual stream of the Llama-3-8B shape
    overflowed fp16 on most rows of a keystroke's step: bench/NOTES.md 40.) act_order: a random
    permutation of the input features, as exlsp's GPTQ (act-order by default) leaves on every linear."""
    k, n, dev = in_features, out_features, "cuda"
    qweight = torch.randint(
        -(2**31), 2**31 - 1, (k * bits // 32, n), dtype=torch.int32, device=dev, generator=gen
    )
    scales = (torch.rand((k // group_size, n), device=dev, generator=gen) * 0.004 + 0.002).to(dtype)
    zeros = torch.full((k // group_size, n), 2 ** (bits - 1), dtype=dtype, device=dev)
    b = (torch.randn((n,), device=dev, generator=gen) * 0.01).to(dtype) if bias else None
    perm = torch.randperm(k, device=dev, generator=gen) if act_order else None
    return PackedWeight(bits, group_size, k, n, qweight, scales, zeros, perm, b)


class RandomWeights:
    """WeightSource (engine/models/base.py) of random tensors on the GPU; linears are GPTQ-packed,
    fused as the loader fuses them (q|k|v, gate|up); the output head and the embedding are float, as in
    a GPTQ checkpoint (build_model quantizes them as the engine does at load)."""

    def __init__(self, dtype: torch.dtype, *, bits: int = 4, group_size: int = 128, act_order: bool = False):
        self.dtype, self.bits, self.group_size, self.act_order = dtype, bits, group_size, act_order
        self.gen = torch.Generator(device="cuda").manual_seed(0)

    def tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.randn(shape, device="cuda", generator=self.gen)
        if name.endswith("norm.weight"):
            return (1.0 + 0.05 * t).to(self.dtype)
        return (0.02 * t).to(self.dtype)

    def linear(
        self, prefixes: Sequence[str], in_features: int, out_features: Sequence[int], bias: bool
    ) -> nn.Module:
        n = sum(out_features)
        if list(prefixes) == ["lm_head"]:
            return Linear(self.tensor("lm_head.weight", (n, in_features)))
        w = random_packed(
            in_features,
            n,
            bits=self.bits,
            group_size=self.group_size,
            dtype=self.dtype,
            bias=bias,
            gen=self.gen,
            act_order=self.act_order,
        )
        return QuantLinear(w)


def build_model(
    name: str,
    *,
    dtype: torch.dtype = torch.float16,
    bits: int = 4,
    head_bits: int = 16,
    embed_bits: int = 16,
    act_order: bool = False,
):
    """The model `name` with random weights on the GPU; head_bits / embed_bits as the engine's load
    (engine/loader.py default_vocab_bits gives the engine's GPU default); act_order: every linear with
    an act-order permutation, as exlsp's own checkpoints have."""
    from engine.config import ModelConfig
    from engine.layers.linear import prepare_quant_linears
    from engine.models import model_class
    from engine.quant.vocab import quantize_vocab_matrices

    config = ModelConfig.from_dict(MODELS[name])
    weights = RandomWeights(dtype, bits=bits, act_order=act_order)
    model = model_class(config.model_type)(config, weights).to("cuda").eval()
    quantize_vocab_matrices(model, head_bits=head_bits, embed_bits=embed_bits)
    prepare_quant_linears(model)  # as engine/loader.py: the GPU's weight layout made before the cache
    return model


def kernels_ready(tool: str) -> bool:
    """A CUDA device and the exlsp kernels built; else say why on stderr (the GPU benchmarks' preamble)."""
    import sys

    if not torch.cuda.is_available():
        print(f"{tool}: no CUDA device; GPU benchmarks need one", file=sys.stderr)
        return False
    from engine.ops import cuda

    if not cuda.ensure_loaded():
        print(f"{tool}: kernels unavailable: {cuda.load_error()}", file=sys.stderr)
        return False
    return True
