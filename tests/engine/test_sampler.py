"""Sampler: greedy, temperature, top-k/top-p/min-p, repetition penalty, seeds, per-row parameters."""

from __future__ import annotations

import pytest
import torch

from engine.request import SamplingParams
from engine.sampler import apply_repetition_penalty, sample

P = SamplingParams


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_is_argmax_per_row():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert sample(logits, [P(), P()]).tolist() == [1, 0]


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch():
    logits = torch.randn(3, 50, generator=seeded(0))
    params = [P(temperature=1.0, seed=1), P(), P(temperature=0.8, seed=2)]
    a = sample(logits, params, [seeded(1), None, seeded(2)])
    b = sample(logits, params, [seeded(1), None, seeded(2)])
    assert a.tolist() == b.tolist()
    alone = sample(logits[2:3], params[2:3], [seeded(2)])
    assert alone.item() == a[2].item()
    assert a[1].item() == logits[1].argmax().item()


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]]))
    gen = seeded(123)
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[sample(logits, [P(temperature=1.0)], [gen]).item()] += 1
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.03)
    assert counts[3] == 0


def test_temperature_sharpens():
    logits = torch.log(torch.tensor([[0.6, 0.4]]))
    gen = seeded(5)
    hits = sum(sample(logits, [P(temperature=0.1)], [gen]).item() == 0 for _ in range(300))
    assert hits >= 295  # p(0) = 0.6^10 / (0.6^10 + 0.4^10) = 0.983


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        (P(temperature=5.0, top_k=1), {0}),
        (P(temperature=5.0, top_k=2), {0, 1}),
        (P(temperature=1.0, top_p=0.35), {0}),  # 0.4 >= 0.35
        (P(temperature=1.0, top_p=0.5), {0, 1}),  # 0.4 < 0.5: the second token is needed
        (P(temperature=1.0, top_p=0.75), {0, 1, 2}),  # 0.4 + 0.3 = 0.7 < 0.75
        (P(temperature=1.0, min_p=0.5), {0, 1}),  # 0.2 < 0.5 * 0.4
        (P(temperature=1.0, min_p=0.8), {0}),
    ],
)
def test_filters_keep_exactly_the_expected_tokens(params, allowed):
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    gen = seeded(9)
    seen = {sample(logits, [params], [gen]).item() for _ in range(300)}
    assert seen == allowed


def test_per_row_parameters_in_one_batch():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]] * 3))
    params = [P(temperature=1.0, top_k=1), P(), P(temperature=1.0, top_k=3)]
    gens = [seeded(1), None, seeded(2)]
    seen = [set(), set(), set()]
    for _ in range(300):
        for row, tok in enumerate(sample(logits, params, gens).tolist()):
            seen[row].add(tok)
    assert seen == [{0}, {0}, {0, 1, 2}]


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, 20, generator=seeded(3))
    prev = [[1, 5, 5, 7], [2, 3]]
    ours = apply_repetition_penalty(logits, [P(repetition_penalty=1.3), P(repetition_penalty=0.7)], prev)
    ref0 = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prev[0]]), logits[0:1].clone())
    ref1 = RepetitionPenaltyLogitsProcessor(0.7)(torch.tensor([prev[1]]), logits[1:2].clone())
    torch.testing.assert_close(ours, torch.cat([ref0, ref1]), rtol=0, atol=0)


def test_repetition_penalty_changes_the_greedy_choice():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    assert sample(logits, [P(repetition_penalty=1.1)], prev_token_ids=[[0]]).item() == 1
    assert sample(logits, [P()], prev_token_ids=[[0]]).item() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sampling_stays_on_the_gpu_and_matches_the_cpu_for_greedy():
    logits = torch.randn(4, 1000, generator=seeded(0))
    params = [
        P(),
        P(temperature=0.7, top_k=50, seed=1),
        P(repetition_penalty=1.2),
        P(temperature=1.0, min_p=0.1),
    ]
    gens = [None, torch.Generator(device="cuda").manual_seed(1), None, None]
    prev = [[1, 2], [3], [int(logits[2].argmax())], [4]]
    out = sample(logits.cuda(), params, gens, prev)
    assert out.device.type == "cuda" and out.dtype == torch.int64
    cpu = sample(logits, params, [None, seeded(1), None, None], prev)
    assert out[[0, 2]].tolist() == cpu[[0, 2]].tolist()  # the greedy rows agree exactly
