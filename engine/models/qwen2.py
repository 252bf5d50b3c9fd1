"""Qwen2 and Qwen2.5(-Coder): the Llama decoder with q/k/v biases (always), usually tied embeddings in
the small sizes, and a sliding window only when `use_sliding_window` and only on layers from
`max_window_layers` on (ModelConfig.layer_sliding_windows spells it out per layer)."""

from __future__ import annotations

from engine.models.base import CausalLM


class Qwen2ForCausalLM(CausalLM):
    pass
