"""Model families: model_type (config.json) -> class. One small file per family, shared layers."""

from __future__ import annotations

from engine.config import SUPPORTED_MODEL_TYPES
from engine.errors import UnsupportedModelError
from engine.models.base import CausalLM
from engine.models.llama import LlamaForCausalLM
from engine.models.mistral import MistralForCausalLM
from engine.models.qwen2 import Qwen2ForCausalLM

MODEL_CLASSES: dict[str, type[CausalLM]] = {
    "llama": LlamaForCausalLM,
    "mistral": MistralForCausalLM,
    "qwen2": Qwen2ForCausalLM,
}
assert tuple(MODEL_CLASSES) == SUPPORTED_MODEL_TYPES


def model_class(model_type: str) -> type[CausalLM]:
    try:
        return MODEL_CLASSES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(MODEL_CLASSES)})"
        ) from None
