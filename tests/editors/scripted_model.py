"""A tiny checkpoint whose greedy output is scripted: after a given last prompt token, it writes a
given text, then <|endoftext|>. The editor tests use it with the real `exlsp serve` so that they know
the exact ghost text and chat answer the real pipeline (prompt, engine, post-processing) produces.

How: every decoder layer's output projections (attention o_proj, MLP down_proj) are zero, so the
last hidden state at a position is the (normalized) embedding of that position's token alone.
Tokens in a script get orthonormal embeddings; the untied lm_head maps each one onto its successor
with a large logit and everything else onto 0, so greedy decoding walks the chain
start -> text tokens -> <|endoftext|>. A token may therefore appear only once across all scripts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from tests.tiny_models import make_tiny_checkpoint, make_tokenizer_json  # noqa: F401 - re-exported

ENDOFTEXT = "<|endoftext|>"
FIM_MIDDLE = "<|fim_middle|>"
LOGIT = 50.0  # the successor's logit; every other token gets 0


def chat_prompt_last_token(folder: Path) -> str:
    """The last token of a chat prompt (ChatML ends it with '<|im_start|>assistant\\n')."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tokenizer.encode(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    ).ids
    return tokenizer.id_to_token(ids[-1])


def make_scripted_checkpoint(path: str | Path, scripts: dict[str, str], seed: int = 0) -> Path:
    """scripts: last prompt token (a token string such as FIM_MIDDLE) -> the text generated after it."""
    folder = make_tiny_checkpoint(path, family="qwen2", tie=False, seed=seed)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = tokenizer.token_to_id(ENDOFTEXT)

    successor: dict[int, int] = {}
    for start, text in scripts.items():
        start_id = tokenizer.token_to_id(start)
        assert start_id is not None, f"{start!r} is not one token of the tiny tokenizer"
        chain = [start_id, *tokenizer.encode(text, add_special_tokens=False).ids, eos]
        assert tokenizer.decode(chain[1:-1]) == text, f"{text!r} does not round-trip through the tokenizer"
        for token, following in zip(chain, chain[1:], strict=False):
            assert token not in successor, (
                f"token {tokenizer.id_to_token(token)!r} is used twice in the scripts"
            )
            successor[token] = following

    weights = load_file(str(folder / "model.safetensors"))
    embed = weights["model.embed_tokens.weight"]  # (V, H)
    vocab_size, hidden_size = embed.shape
    tokens = sorted(set(successor) | set(successor.values()))
    assert len(tokens) <= hidden_size, f"{len(tokens)} scripted tokens need hidden_size >= that"

    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(hidden_size, len(tokens), generator=gen))  # (H, n) orthonormal
    direction = {token: basis[:, i] for i, token in enumerate(tokens)}
    lm_head = torch.zeros(vocab_size, hidden_size)
    for token, following in successor.items():
        embed[token] = direction[token]
        lm_head[following] += LOGIT / hidden_size**0.5 * direction[token]  # RMSNorm scales by sqrt(H)
    weights["lm_head.weight"] = lm_head
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = torch.zeros_like(weights[name])
        elif name.endswith("norm.weight"):
            weights[name] = torch.ones_like(weights[name])
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    return folder
