"""Model quality on held-out code: perplexity, and fill-in-the-middle exact match as the server does it.

Held-out files: exlsp/eval_files.txt names them relative to the installed Python standard library
(the quantizer's default calibration set excludes them). Both measures are deterministic:
  perplexity   exp(mean NLL) over the first `ppl_windows_per_file` windows of `ppl_window_tokens`
               tokens of each file (every token after a window's first is predicted);
  FIM EM       `fim_samples` holes, each one line (or a short block of 2-3 lines) picked with a seeded
               RNG among lines with real code; the prompt comes from exlsp/prompt.py's PromptBuilder
               (the model's own FIM template, as the server builds it), generation is greedy, the
               answer goes through exlsp/postprocess.py, and it counts when it equals the hidden text
               with whitespace runs collapsed;
  FIM similarity  the mean difflib ratio of the same two strings (informative where exact matches
               are rare, as with small models).
Sample selection and scoring are pure (no torch); `evaluate_model` runs the engine.
"""

from __future__ import annotations

import math
import random
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

EVAL_LIST = Path(__file__).with_name("eval_files.txt")


def eval_file_paths(stdlib: Path | None = None) -> list[Path]:
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    names = [line.strip() for line in EVAL_LIST.read_text().splitlines()]
    return [root / name for name in names if name and not name.startswith("#")]


@dataclass(frozen=True)
class EvalConfig:
    ppl_window_tokens: int = 512
    # 8 windows per file: 27,842 predicted tokens over the 10 eval files. The first window alone
    # (5110 tokens) could not tell apart quantizers 1% apart: the paired standard error of a mean
    # per-token NLL difference there is ~0.6%, against ~0.25% with 8 (bench/RESULTS.md).
    ppl_windows_per_file: int = 8
    fim_samples: int = 40
    fim_block_fraction: float = 0.3  # share of holes that are 2-3 line blocks instead of one line
    fim_prefix_tokens: int = 256
    fim_suffix_tokens: int = 64
    max_new_tokens: int = 48
    seed: int = 0


@dataclass(frozen=True)
class FimSample:
    path: str
    prefix: str  # everything before the hole, ending with the hole's indentation
    middle: str  # the hidden text (no trailing newline)
    suffix: str  # everything after the hole, starting with its newline
    num_lines: int


@dataclass(frozen=True)
class EvalResult:
    model: str
    perplexity: float
    ppl_tokens: int
    fim_exact_match: float  # percent
    fim_similarity: float  # percent: mean difflib ratio of shown vs hidden text (whitespace collapsed)
    fim_samples: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def _is_code_line(line: str) -> bool:
    stripped = line.strip()
    return (
        len(stripped) >= 8
        and not stripped.startswith(("#", '"""', "'''"))
        and stripped not in ("else:", "try:")
    )


def pick_fim_samples(files: Sequence[tuple[str, str]], config: EvalConfig) -> list[FimSample]:
    """Holes from (path, text) pairs, deterministic in config.seed, spread evenly over the files."""
    rng = random.Random(config.seed)
    per_file: list[list[FimSample]] = []
    for path, text in files:
        lines = text.split("\n")
        candidates = []
        for i, line in enumerate(lines):
            if i < 3 or not _is_code_line(line):
                continue
            num_lines = 1
            if rng.random() < config.fim_block_fraction:
                num_lines = rng.choice((2, 3))
                block = lines[i : i + num_lines]
                indent = len(line) - len(line.lstrip())
                # A block stays inside one indentation level or deeper, and has code on every line.
                if len(block) < num_lines or not all(
                    b.strip() and len(b) - len(b.lstrip()) >= indent for b in block
                ):
                    num_lines = 1
            indent_text = line[: len(line) - len(line.lstrip())]
            prefix = "\n".join(lines[:i]) + "\n" + indent_text
            middle = "\n".join(lines[i : i + num_lines])[len(indent_text) :]
            suffix = "\n" + "\n".join(lines[i + num_lines :])
            candidates.append(FimSample(path, prefix, middle, suffix, num_lines))
        rng.shuffle(candidates)
        per_file.append(candidates)
    samples: list[FimSample] = []
    while len(samples) < config.fim_samples and any(per_file):
        for candidates in per_file:
            if candidates and len(samples) < config.fim_samples:
                samples.append(candidates.pop())
    return samples


def fim_cursor(sample: FimSample):
    from exlsp.postprocess import Cursor

    before = sample.prefix.rsplit("\n", 1)[-1]
    following = tuple(sample.suffix.split("\n")[1:6])
    return Cursor(line_before=before, line_after="", following=following)


def score_fim(sample: FimSample, raw_output: str) -> tuple[bool, float]:
    """The server's post-processing, then (exact match up to whitespace runs, similarity in [0, 1]).

    The similarity (difflib's ratio) separates "nearly right" from "unrelated" where exact matches
    are rare, as with small models."""
    import difflib

    from exlsp.postprocess import postprocess

    shown = normalize_whitespace(postprocess(raw_output, fim_cursor(sample)) or "")
    hidden = normalize_whitespace(sample.middle)
    return shown == hidden, difflib.SequenceMatcher(None, shown, hidden).ratio()


def perplexity_windows(token_lists: Sequence[list[int]], config: EvalConfig) -> list[list[int]]:
    """Windows of exactly ppl_window_tokens tokens (files shorter than one window give their whole text)."""
    n = config.ppl_window_tokens
    windows = []
    for ids in token_lists:
        chunks = [ids[i : i + n] for i in range(0, len(ids), n)][: config.ppl_windows_per_file]
        windows.extend(c for c in chunks if len(c) >= 2)
    return windows


# ---- running a model -------------------------------------------------------------------------------


def densify_quantized_linears(model) -> int:
    """On the CPU the reference quantized linear dequantizes its weight on every call, which is the
    same product as a float matmul with the dequantized weight: swap those in once, for speed only.
    Returns how many linears were swapped."""
    from engine.layers.linear import Linear, QuantLinear
    from engine.quant.layout import dense_weight

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantLinear):
                packed = child.packed()
                weight = dense_weight(packed, packed.scales.dtype).t().contiguous()  # (N, K)
                setattr(parent, name, Linear(weight, packed.bias))
                swapped += 1
    return swapped


def model_perplexity(model, windows: Sequence[list[int]], batch_size: int = 4) -> tuple[float, int]:
    """exp(mean NLL) of every next token in `windows`, and how many tokens were predicted."""
    import torch

    total_nll, total_tokens = 0.0, 0
    by_length: dict[int, list[list[int]]] = {}
    for w in windows:
        by_length.setdefault(len(w), []).append(w)
    with torch.no_grad():
        for _length, group in sorted(by_length.items()):
            for start in range(0, len(group), batch_size):
                ids = torch.tensor(group[start : start + batch_size], dtype=torch.long)  # (B, S)
                logits = model(ids).float()  # (B, S, V)
                logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
                targets = ids[:, 1:].to(logprobs.device)
                nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, S - 1)
                total_nll += float(nll.sum())
                total_tokens += nll.numel()
    return math.exp(total_nll / max(total_tokens, 1)), total_tokens


def evaluate_model(
    model_path: Path,
    config: EvalConfig = EvalConfig(),
    *,
    device=None,
    files: Sequence[Path] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    head_bits: int | None = None,
    embed_bits: int | None = None,
) -> EvalResult:
    """Perplexity and FIM exact match of the checkpoint in `model_path` on the held-out files, as the
    Engine serves it (head_bits / embed_bits: see engine/quant/vocab.py; None = the device default)."""
    from engine import Engine
    from exlsp.prompt import Budgets, FimInput, PromptBuilder

    started = time.monotonic()
    paths = list(files) if files is not None else eval_file_paths()
    texts = [(p.name, p.read_text(encoding="utf-8")) for p in paths]
    engine = Engine(
        model_path, device=device, max_batch_size=1, enable_prefix_cache=True,
        head_bits=head_bits, embed_bits=embed_bits,
    )  # fmt: skip
    try:
        if engine.device.type == "cpu":
            densify_quantized_linears(engine.model)
        encode = lambda text: engine.tokenizer.encode(text, add_special_tokens=False)
        windows = perplexity_windows([encode(t) for _, t in texts], config)
        ppl, num_tokens = model_perplexity(engine.model, windows)
        if on_progress is not None:
            on_progress("perplexity", 1, 1)

        builder = PromptBuilder(
            engine.tokenizer, Budgets(config.fim_prefix_tokens, config.fim_suffix_tokens, 0)
        )
        samples = pick_fim_samples(texts, config)
        hits, similarity = 0, 0.0
        if builder.template is not None:
            for index, sample in enumerate(samples):
                prompt = builder.build(FimInput(sample.prefix, sample.suffix, 0, sample.path, "python"))
                result = engine.generate(
                    list(prompt.token_ids),
                    max_new_tokens=config.max_new_tokens,
                    stop_token_ids=tuple(prompt.stop_token_ids),
                )
                exact, ratio = score_fim(sample, result.text)
                hits += exact
                similarity += ratio
                if on_progress is not None:
                    on_progress("fim", index + 1, len(samples))
        scored = bool(samples) and builder.template is not None
        em = 100.0 * hits / len(samples) if scored else float("nan")
        sim = 100.0 * similarity / len(samples) if scored else float("nan")
    finally:
        engine.close()
    return EvalResult(
        model=str(model_path),
        perplexity=ppl,
        ppl_tokens=num_tokens,
        fim_exact_match=em,
        fim_similarity=sim,
        fim_samples=len(samples) if builder.template is not None else 0,
        seconds=time.monotonic() - started,
    )
