"""Llama 2 and 3, CodeLlama, DeepSeek-Coder v1: the shared decoder exactly as it is.

Llama-specific data lives in ModelConfig: `attention_bias` (q/k/v/o biases), `mlp_bias`, and rope
scaling ("linear" for CodeLlama-style stretching, "llama3" for Llama 3.1+).
"""

from __future__ import annotations

from engine.models.base import CausalLM


class LlamaForCausalLM(CausalLM):
    pass
