"""Next-token sampling for a batch of rows, each with its own parameters and random stream.

sample(logits (N, V) float32, params [N], generators [N], prev_token_ids [N]) -> (N,) int64

Per row, in this order (the order of Hugging Face's logits processors):
  repetition penalty over the row's previous tokens (prompt and output): a seen token's logit l
      becomes l / penalty when l > 0, else l * penalty;
  temperature == 0: greedy argmax, and nothing below applies;
  logits / temperature; top-k; top-p (keep the smallest prefix of the sorted distribution whose
      mass reaches top_p, at least one token); min-p (drop tokens below min_p * the top probability);
  a draw from the remaining distribution. The draw is argmax(p / e) with e ~ Exp(1) drawn from the
  row's own torch.Generator: equivalent to sampling from p, and a seeded request gives the same
  tokens whatever else shares its batch.
Everything stays on the logits' device, and the per-row parameters go there from pinned memory
(engine/host_to_device.py): nothing here waits for the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine import ops
from engine.host_to_device import tensor_on
from engine.request import SamplingParams


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None] | None = None,
    prev_token_ids: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    num_rows, vocab = logits.shape
    assert len(params) == num_rows, (len(params), num_rows)
    device = logits.device
    logits = logits.float()
    if any(p.repetition_penalty != 1.0 for p in params):
        assert prev_token_ids is not None and len(prev_token_ids) == num_rows
        logits = apply_repetition_penalty(logits, params, prev_token_ids)

    greedy = ops.argmax(logits)  # (N,): one kernel on a GPU
    random_rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not random_rows:
        return greedy
    rows = tensor_on(random_rows, torch.int64, device)
    chosen = [params[i] for i in random_rows]
    temperature = tensor_on([p.temperature for p in chosen], torch.float32, device).unsqueeze(1)
    scaled = logits[rows] / temperature  # (R, V)
    probs = _filtered_probs(scaled, chosen)  # (R, V), zero outside the kept tokens
    noise = torch.empty_like(probs)
    unseeded = []
    for r, i in enumerate(random_rows):
        gen = generators[i] if generators is not None else None
        if gen is None:
            unseeded.append(r)
        else:
            noise[r].exponential_(generator=gen)
    if unseeded:
        idx = tensor_on(unseeded, torch.int64, device)
        noise[idx] = torch.empty((len(unseeded), vocab), device=device).exponential_()
    drawn = (probs / noise).argmax(dim=-1)  # (R,)
    return greedy.index_copy(0, rows, drawn)


def apply_repetition_penalty(
    logits: torch.Tensor, params: Sequence[SamplingParams], prev_token_ids: Sequence[Sequence[int]]
) -> torch.Tensor:
    """(N, V) -> (N, V) with every previously seen token of a row penalized once."""
    row_idx: list[int] = []
    tok_idx: list[int] = []
    penalty: list[float] = []
    for i, (p, prev) in enumerate(zip(params, prev_token_ids, strict=True)):
        if p.repetition_penalty == 1.0:
            continue
        seen = sorted(set(prev))
        row_idx += [i] * len(seen)
        tok_idx += seen
        penalty += [p.repetition_penalty] * len(seen)
    if not row_idx:
        return logits
    device = logits.device
    rows = tensor_on(row_idx, torch.int64, device)
    toks = tensor_on(tok_idx, torch.int64, device)
    pen = tensor_on(penalty, logits.dtype, device)
    values = logits[rows, toks]  # (P,)
    logits = logits.clone()
    logits[rows, toks] = torch.where(values > 0, values / pen, values * pen)
    return logits


def _filtered_probs(scaled: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Softmax of `scaled` (R, V) restricted to each row's top-k / top-p / min-p set."""
    device = scaled.device
    if all(p.top_k == 0 and p.top_p >= 1.0 and p.min_p == 0.0 for p in params):
        return torch.softmax(scaled, dim=-1)
    vocab = scaled.shape[1]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (R, V)
    rank = torch.arange(vocab, device=device).unsqueeze(0)  # (1, V)
    top_k = tensor_on([p.top_k if p.top_k > 0 else vocab for p in params], torch.int64, device).unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(rank >= top_k, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)  # (R, V), descending
    top_p = tensor_on([p.top_p for p in params], probs.dtype, device).unsqueeze(1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly better tokens
    remove = mass_before >= top_p
    min_p = tensor_on([p.min_p for p in params], probs.dtype, device).unsqueeze(1)
    remove |= probs < min_p * probs[:, :1]
    remove[:, 0] = False  # the most likely token always stays
    probs = probs.masked_fill(remove, 0.0)
    return torch.zeros_like(probs).scatter_(1, order, probs)
