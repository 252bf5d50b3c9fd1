"""Mistral: the Llama decoder with a sliding attention window on every layer (config `sliding_window`,
None in later Mistral releases). The window reaches the paged attention op through each Attention."""

from __future__ import annotations

from engine.models.base import CausalLM


class MistralForCausalLM(CausalLM):
    pass
