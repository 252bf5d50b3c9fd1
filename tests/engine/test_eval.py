"""Evaluation (exlsp/evaluate.py): sample selection, scoring with the server's post-processing,
perplexity arithmetic, and `exlsp eval` on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from exlsp.cli import main
from exlsp.evaluate import (
    EvalConfig,
    FimSample,
    eval_file_paths,
    model_perplexity,
    normalize_whitespace,
    perplexity_windows,
    pick_fim_samples,
    score_fim,
)
from tests.tiny_models import make_tiny_checkpoint

SOURCE = '''import os


def area(width, height):
    """Area of a rectangle."""
    result = width * height
    return result


class Counter:
    def __init__(self):
        self.count = 0

    def bump(self, amount=1):
        self.count += amount
        return self.count
'''


def test_eval_files_are_named_stdlib_files_that_exist_and_calibration_never_sees_them() -> None:
    from engine.quant.calibration import default_calibration_roots, find_source_files

    paths = eval_file_paths()
    assert [p.name for p in paths[:3]] == ["textwrap.py", "shlex.py", "graphlib.py"]
    assert all(p.is_file() for p in paths)
    calibration = set(find_source_files([paths[0].parent / "json"], exclude=paths))
    assert paths[0].parent / "json" / "decoder.py" not in calibration
    assert (paths[0].parent / "json" / "scanner.py").resolve() in calibration
    assert default_calibration_roots() == [paths[0].parent]


def test_fim_holes_are_code_lines_split_at_their_indentation_and_deterministic() -> None:
    config = EvalConfig(fim_samples=5, fim_block_fraction=0.0, seed=3)
    samples = pick_fim_samples([("a.py", SOURCE)], config)
    assert samples == pick_fim_samples([("a.py", SOURCE)], config)
    assert len(samples) == 5
    for s in samples:
        assert s.prefix + s.middle + s.suffix == SOURCE  # nothing lost, nothing added
        assert s.num_lines == 1 and "\n" not in s.middle
        assert len(s.middle) >= 8 and not s.middle.startswith(("#", '"""'))
        assert s.prefix.endswith(
            "\n" + " " * (len(s.prefix) - len(s.prefix.rstrip(" ")))
        )  # ends at the indent
    assert {s.middle for s in samples} <= {
        "def area(width, height):", "result = width * height", "return result", "class Counter:",
        "def __init__(self):", "self.count = 0", "def bump(self, amount=1):", "self.count += amount",
        "return self.count",
    }  # fmt: skip


def test_fim_blocks_span_two_or_three_lines_at_one_indentation_or_deeper() -> None:
    samples = pick_fim_samples([("a.py", SOURCE)], EvalConfig(fim_samples=50, fim_block_fraction=1.0))
    blocks = [s for s in samples if s.num_lines > 1]
    assert blocks
    for s in blocks:
        assert s.middle.count("\n") == s.num_lines - 1
        assert s.prefix + s.middle + s.suffix == SOURCE


def test_samples_are_spread_over_files() -> None:
    files = [("a.py", SOURCE), ("b.py", SOURCE.replace("area", "volume"))]
    samples = pick_fim_samples(files, EvalConfig(fim_samples=4, fim_block_fraction=0.0))
    assert [s.path for s in samples] == ["a.py", "b.py", "a.py", "b.py"]


def test_scoring_applies_the_servers_post_processing_then_compares_modulo_whitespace() -> None:
    sample = FimSample("a.py", "def f(x):\n    ", "return x  +  1", "\n\nprint(f(2))\n", 1)
    assert score_fim(sample, "return x + 1") == (True, 1.0)
    assert score_fim(sample, "return x + 1\n\nprint(f(2))\n") == (True, 1.0)  # repeats the suffix: cut
    assert score_fim(sample, "return x + 1\ndef g():\n    pass") == (True, 1.0)  # leaves the block: cut
    assert score_fim(sample, "return x + 2") == (False, pytest.approx(22 / 24))  # 11 of 12 chars agree
    assert score_fim(sample, "") == (False, 0.0)
    assert normalize_whitespace("  a\t b \n c ") == "a b c"


def test_perplexity_windows_cut_files_into_fixed_windows() -> None:
    config = EvalConfig(ppl_window_tokens=4, ppl_windows_per_file=2)
    assert perplexity_windows([list(range(10)), [7], [1, 2, 3]], config) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [1, 2, 3],
    ]


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 50)

    ppl, tokens = model_perplexity(Uniform(), [[1, 2, 3, 4], [5, 6, 7, 8], [1, 2]], batch_size=1)
    assert tokens == 3 + 3 + 1
    assert ppl == pytest.approx(50.0)


def test_perplexity_matches_a_direct_computation(tmp_path) -> None:
    from engine.loader import load_model

    model = load_model(make_tiny_checkpoint(tmp_path / "m", "qwen2"), device="cpu", dtype=torch.float32)
    windows = [[5, 9, 13, 2, 77, 31], [4, 4, 8, 100, 3, 1]]
    ppl, tokens = model_perplexity(model, windows)
    ids = torch.tensor(windows)
    logp = torch.log_softmax(model(ids)[:, :-1], -1).gather(-1, ids[:, 1:, None])
    assert tokens == 10 and ppl == pytest.approx(math.exp(-float(logp.mean())), rel=1e-5)


@pytest.mark.parametrize("fim", [True, False])
def test_exlsp_eval_prints_a_table_and_json(tmp_path, capsys, fim) -> None:
    src = make_tiny_checkpoint(tmp_path / "m", "qwen2", fim=fim)
    assert (
        main(["eval", str(src), "--fim-samples", "2", "--device", "cpu", "--ppl-windows", "1", "--json"]) == 0
    )
    (result,) = json.loads(capsys.readouterr().out)
    assert result["model"] == str(src)
    assert result["ppl_tokens"] == 10 * 511  # one full window from each held-out file
    assert math.isfinite(result["perplexity"]) and result["perplexity"] > 1.0  # random weights: large
    if fim:
        assert result["fim_samples"] == 2 and result["fim_exact_match"] in (0.0, 50.0, 100.0)
        assert 0.0 <= result["fim_similarity"] <= 100.0
    else:
        assert result["fim_samples"] == 0 and math.isnan(result["fim_exact_match"])
        assert math.isnan(result["fim_similarity"])
    assert main(["eval", str(src), "--fim-samples", "1", "--device", "cpu", "--ppl-windows", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "MODEL",
        "PPL",
        "TOKENS",
        "FIM",
        "EM",
        "%",
        "FIM",
        "SIM",
        "%",
        "HOLES",
        "SECONDS",
    ]
    assert ("n/a (no FIM tokens)" in table[1]) == (not fim)


def test_perplexity_reads_eight_windows_per_file_unless_told() -> None:
    """The first 512 tokens of each file (5110 tokens) could not tell quantizers 1% apart; the default
    reads up to 8 windows of each file, on the command line too."""
    from exlsp.cli import build_parser

    assert EvalConfig().ppl_windows_per_file == 8
    assert build_parser().parse_args(["eval"]).ppl_windows == 8
    long_file, short_file = list(range(600 * 10)), list(range(700))
    windows = perplexity_windows([long_file, short_file], EvalConfig())
    assert [len(w) for w in windows] == [512] * 8 + [512, 188]
