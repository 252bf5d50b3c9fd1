"""exlsp's inference engine: checkpoints, model families, paged KV cache, scheduler.

Public face (a contract other tools rely on):
    load_model(path, device=None, dtype=None, *, head_bits=16, embed_bits=16) -> torch.nn.Module
        calling it on a (batch, seq) LongTensor of token ids returns (batch, seq, vocab) logits,
        with no cache involved. head_bits / embed_bits < 16 quantize the output head / embedding
        at load (engine/quant/vocab.py).
    Engine(path, device=None, ...) -> the cached, scheduled generator (engine/engine.py).

Imports are lazy so that `import engine` stays cheap for the language server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.engine import Engine as Engine

__all__ = ["Engine", "load_model"]


def load_model(
    path: Any, device: Any = None, dtype: Any = None, *, head_bits: int = 16, embed_bits: int = 16
):
    from engine.loader import load_model as _load_model

    return _load_model(path, device=device, dtype=dtype, head_bits=head_bits, embed_bits=embed_bits)


def __getattr__(name: str):
    if name == "Engine":
        from engine.engine import Engine

        return Engine
    raise AttributeError(name)
