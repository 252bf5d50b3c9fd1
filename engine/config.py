"""A checkpoint's config.json, parsed once into frozen dataclasses (no torch).

Owns the mapping from the Hugging Face config vocabulary of the supported families (llama, mistral,
qwen2) to the few numbers the model code needs, with the per-family defaults spelled out here instead
of scattered through the layers:
  - head_dim defaults to hidden_size // num_attention_heads;
  - rope scaling: legacy `rope_theta` + `rope_scaling` or transformers 5's `rope_parameters`;
  - sliding window per layer: Mistral applies `sliding_window` to every layer; Qwen2 only when
    `use_sliding_window`, and then to layers >= `max_window_layers` (as transformers does);
    an explicit `layer_types` list wins;
  - biases: Qwen2 always has q/k/v biases; Llama's `attention_bias` adds q/k/v/o biases.
GPTQ settings come from `quantization_config` in config.json or from quantize_config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError, UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
GPTQ_FORMATS = ("gptq", "gptq_v2")


@dataclass(frozen=True)
class RopeScaling:
    rope_type: str  # "linear" or "llama3"
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int | None = None  # llama3 only


@dataclass(frozen=True)
class QuantConfig:
    """GPTQ settings as the checkpoint states them (validated against the tensors at load)."""

    bits: int  # 4 or 8
    group_size: int  # input features per group; -1 means one group over all of them
    desc_act: bool  # act-order: g_idx is a permutation of the sequential grouping
    sym: bool
    checkpoint_format: str  # "gptq" (stores zero - 1) or "gptq_v2" (stores the zero)
    method: str = "gptq"


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    layer_sliding_windows: tuple[int | None, ...]  # (num_layers,) window in tokens, None = full attention
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    torch_dtype: str | None  # the checkpoint's declared float dtype ("bfloat16", ...) or None
    quant: QuantConfig | None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def sliding_window(self) -> int | None:
        """The largest window any layer uses (None when some layer attends to everything)."""
        windows = set(self.layer_sliding_windows)
        return None if None in windows else max(windows)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], quantize_config: dict[str, Any] | None = None) -> ModelConfig:
        return _parse(raw, quantize_config)

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelConfig:
        folder = Path(folder)
        raw = _read_json(folder / "config.json", what="config.json")
        quantize_config = None
        if "quantization_config" not in raw and (folder / "quantize_config.json").exists():
            quantize_config = _read_json(folder / "quantize_config.json", what="quantize_config.json")
        return _parse(raw, quantize_config)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(
            f"{what} not found in {path.parent}: a checkpoint folder needs the Hugging Face layout "
            "(config.json, tokenizer.json and *.safetensors)"
        )
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name} in {path.parent} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path.name} in {path.parent} must hold a JSON object")
    return value


def _require(raw: dict[str, Any], key: str, kind: type = int) -> Any:
    if key not in raw or raw[key] is None:
        raise CheckpointError(f"config.json lacks {key!r}, which every {raw.get('model_type')} config has")
    value = raw[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise CheckpointError(f"config.json: {key!r} must be a positive integer, got {value!r}")
    return value


def _parse_rope(raw: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    params = raw.get("rope_parameters")  # transformers >= 5 writes this instead of the two below
    if isinstance(params, dict) and "rope_type" in params:
        theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling = params
    else:
        theta = float(raw.get("rope_theta", 10000.0))
        scaling = raw.get("rope_scaling")
    if not scaling:
        return theta, None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"config.json: rope scaling type {rope_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return theta, None
    if "factor" not in scaling:
        raise CheckpointError(f"config.json: rope scaling {rope_type!r} needs a 'factor'")
    return theta, RopeScaling(
        rope_type=rope_type,
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=scaling.get("original_max_position_embeddings"),
    )


def _parse_sliding_windows(raw: dict[str, Any], model_type: str, num_layers: int) -> tuple[int | None, ...]:
    window = raw.get("sliding_window")
    if model_type == "qwen2" and not raw.get("use_sliding_window", False):
        window = None
    if window is None:
        return (None,) * num_layers
    layer_types = raw.get("layer_types")
    if layer_types is not None:
        if len(layer_types) != num_layers:
            raise CheckpointError(
                f"config.json: layer_types has {len(layer_types)} entries for {num_layers} layers"
            )
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    if model_type == "qwen2":
        first = int(raw.get("max_window_layers", num_layers))
        return tuple(window if i >= first else None for i in range(num_layers))
    return (int(window),) * num_layers


def parse_quant_config(raw: dict[str, Any]) -> QuantConfig:
    method = raw.get("quant_method", "gptq")
    if method != "gptq":
        raise UnsupportedModelError(
            f"quantization method {method!r} is not supported (supported: gptq); "
            "re-quantize with `exlsp quantize` or use a float checkpoint"
        )
    if raw.get("is_marlin_format"):
        raise UnsupportedModelError(
            "GPTQ checkpoint in Marlin's repacked format is not supported: use the plain GPTQ checkpoint"
        )
    bits = raw.get("bits")
    if bits not in (4, 8):
        raise UnsupportedModelError(f"GPTQ bits={bits!r} is not supported (supported: 4, 8)")
    group_size = raw.get("group_size", 128)
    if not isinstance(group_size, int) or (group_size <= 0 and group_size != -1):
        raise CheckpointError(f"GPTQ group_size must be a positive integer or -1, got {group_size!r}")
    # GPTQModel writes checkpoint_format; AutoGPTQ's older files have none and mean "gptq".
    checkpoint_format = raw.get("checkpoint_format", raw.get("format", "gptq"))
    if checkpoint_format not in GPTQ_FORMATS:
        raise UnsupportedModelError(
            f"GPTQ checkpoint_format {checkpoint_format!r} is not supported (supported: {', '.join(GPTQ_FORMATS)})"
        )
    return QuantConfig(
        bits=bits,
        group_size=group_size,
        desc_act=bool(raw.get("desc_act", False)),
        sym=bool(raw.get("sym", True)),
        checkpoint_format=checkpoint_format,
        method=method,
    )


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _parse(raw: dict[str, Any], quantize_config: dict[str, Any] | None) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"config.json: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    hidden_act = raw.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise UnsupportedModelError(
            f"config.json: hidden_act {hidden_act!r} is not supported (supported: silu)"
        )
    hidden_size = _require(raw, "hidden_size")
    num_heads = _require(raw, "num_attention_heads")
    num_kv_heads = raw.get("num_key_value_heads") or num_heads
    if num_heads % num_kv_heads:
        raise CheckpointError(
            f"config.json: num_attention_heads ({num_heads}) is not a multiple of "
            f"num_key_value_heads ({num_kv_heads})"
        )
    head_dim = raw.get("head_dim") or hidden_size // num_heads
    num_layers = _require(raw, "num_hidden_layers")
    rope_theta, rope_scaling = _parse_rope(raw)
    attention_bias = bool(raw.get("attention_bias", False))
    quant_raw = raw.get("quantization_config") or quantize_config
    return ModelConfig(
        model_type=model_type,
        vocab_size=_require(raw, "vocab_size"),
        hidden_size=hidden_size,
        intermediate_size=_require(raw, "intermediate_size"),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        layer_sliding_windows=_parse_sliding_windows(raw, model_type, num_layers),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type == "llama" and attention_bias,
        mlp_bias=model_type == "llama" and bool(raw.get("mlp_bias", False)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_token_ids(raw.get("eos_token_id")),
        torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        quant=parse_quant_config(quant_raw) if quant_raw else None,
    )
