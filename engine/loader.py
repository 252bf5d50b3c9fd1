"""load_model: a Hugging Face checkpoint folder -> a ready CausalLM on the chosen device and dtype.

Owns the choice of device and dtype, and the WeightSource the model files ask for tensors:
float tensors are checked against the shape the config implies and converted; linears become a
float Linear or a GPTQ QuantLinear, with q/k/v and gate/up fused into one matrix (concatenated
along the output features) whenever the parts can share it.

dtype when not given: on CUDA the checkpoint's half type (bfloat16 if it says so and the card has
it, else float16); on the CPU float32 (half-precision matmuls are slow or missing on CPUs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from engine.checkpoint import CheckpointReader
from engine.config import ModelConfig
from engine.errors import CheckpointError
from engine.layers.linear import ConcatLinear, Linear, QuantLinear, prepare_quant_linears
from engine.models import model_class
from engine.models.base import CausalLM
from engine.quant.gptq_format import concat_out_features, repack_gptq
from engine.quant.vocab import quantize_vocab_matrices

FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def choose_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def choose_dtype(dtype: str | torch.dtype | None, config: ModelConfig, device: torch.device) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in FLOAT_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported (supported: {', '.join(FLOAT_DTYPES)})")
        return FLOAT_DTYPES[dtype.removeprefix("torch.")]
    if dtype is not None:
        if dtype not in FLOAT_DTYPES.values():
            raise ValueError(f"dtype {dtype} is not supported (supported: {', '.join(FLOAT_DTYPES)})")
        return dtype
    if device.type != "cuda":
        return torch.float32
    if config.torch_dtype == "bfloat16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class WeightLoader:
    """The WeightSource (engine/models/base.py) over a checkpoint's tensors."""

    def __init__(
        self, reader: CheckpointReader, config: ModelConfig, dtype: torch.dtype, device: torch.device
    ):
        self.reader, self.config, self.dtype, self.device = reader, config, dtype, device

    def _raw(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if not self.reader.has(name):
            raise CheckpointError(
                f"tensor {name!r} (expected shape {shape}) is missing from the checkpoint in {self.reader.folder}"
            )
        got = self.reader.shape(name)
        if got != shape:
            raise CheckpointError(
                f"tensor {name!r} has shape {got}, expected {shape} from config.json "
                f"({self.config.model_type}, hidden_size={self.config.hidden_size})"
            )
        return self.reader.get(name)

    def tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = self._raw(name, shape)
        if not t.is_floating_point():
            raise CheckpointError(f"tensor {name!r} has dtype {t.dtype}, expected a float type")
        return t.to(device=self.device, dtype=self.dtype)

    def linear(
        self, prefixes: Sequence[str], in_features: int, out_features: Sequence[int], bias: bool
    ) -> nn.Module:
        if self.reader.has(prefixes[0] + ".qweight"):
            return self._quant_linear(prefixes, in_features, out_features, bias)
        weight = torch.cat(
            [
                self.tensor(p + ".weight", (n, in_features))
                for p, n in zip(prefixes, out_features, strict=True)
            ]
        )
        b = (
            torch.cat([self.tensor(p + ".bias", (n,)) for p, n in zip(prefixes, out_features, strict=True)])
            if bias
            else None
        )
        return Linear(weight, b)  # (sum N, K)

    def _quant_linear(
        self, prefixes: Sequence[str], in_features: int, out_features: Sequence[int], bias: bool
    ) -> nn.Module:
        quant = self.config.quant
        if quant is None:
            raise CheckpointError(
                f"{prefixes[0]}.qweight is a GPTQ tensor, but the checkpoint has no quantization_config in "
                "config.json and no quantize_config.json to say how it was packed"
            )
        parts = []
        for prefix, n in zip(prefixes, out_features, strict=True):
            tensors = {}
            for key in ("qweight", "qzeros", "scales", "g_idx", "bias"):
                name = f"{prefix}.{key}"
                if self.reader.has(name):
                    tensors[key] = self.reader.get(name)
                elif key in ("qweight", "qzeros", "scales"):
                    raise CheckpointError(
                        f"GPTQ tensor {name!r} is missing from the checkpoint in {self.reader.folder}"
                    )
            if bias and "bias" not in tensors:
                raise CheckpointError(
                    f"tensor {prefix + '.bias'!r} (expected shape ({n},)) is missing from the checkpoint"
                )
            parts.append(repack_gptq(prefix, tensors, quant, in_features, n, self.dtype).to(self.device))
        fused = concat_out_features(parts)
        if fused is not None:
            return QuantLinear(fused)
        return ConcatLinear([QuantLinear(p) for p in parts])  # act-order orders differ: cannot share a matrix


def default_vocab_bits(device: torch.device) -> tuple[int, int]:
    """(head bits, embedding bits) the Engine loads with unless told: on a GPU an 8-bit head (the
    quantized GEMV reads half the fp16 head's bytes every token) and a 4-bit embedding (a lookup
    touches one row; the matrix only costs memory), which is what fits an 8B model and a 16k-token
    cache in 7 GB. Held-out perplexity of the default model: 5.5809 float, 5.5797 with 8/4 (a 4-bit
    head cost 1.1%: not the default). On the CPU both stay float, where the float matmul is the
    fast one (engine/quant/vocab.py)."""
    return (8, 4) if device.type == "cuda" else (16, 16)


def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    head_bits: int = 16,
    embed_bits: int = 16,
) -> CausalLM:
    """Build the model a checkpoint folder describes, weights loaded, in eval mode.

    head_bits / embed_bits: quantize the output head (4, 8) and the embedding (8) at load; 16 keeps
    them as the checkpoint has them, which is what a caller comparing logits wants. The Engine takes
    default_vocab_bits(device) instead."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist or is not a folder")
    config = ModelConfig.from_folder(folder)
    device = choose_device(device)
    dtype = choose_dtype(dtype, config, device)
    with CheckpointReader(folder) as reader:
        model = model_class(config.model_type)(config, WeightLoader(reader, config, dtype, device))
    model = model.to(device).eval()  # buffers built at construction (the rotary table) follow the weights
    quantize_vocab_matrices(model, head_bits=head_bits, embed_bits=embed_bits)
    prepare_quant_linears(model)
    return model


def check_checkpoint_folder(path: str | Path) -> Path:
    """Fail early, with a message naming what is missing, unless `path` has the files a served model
    needs (config.json, tokenizer.json, safetensors weights)."""
    from engine.checkpoint import find_weight_files

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist or is not a folder")
    for name in ("config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"{name} not found in {folder}: a checkpoint folder needs the Hugging Face layout "
                "(config.json, tokenizer.json and *.safetensors)"
            )
    find_weight_files(folder)
    return folder
