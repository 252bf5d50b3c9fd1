"""`exlsp complete FILE:LINE:COL`: print the completion the server would show there.

Same pipeline as the server (exlsp/handlers/completion.py): windowed FIM prompt, engine, the
post-processing rules. LINE and COL are 1-based, COL counts characters, as compilers print them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

HELP = "print the inline completion for FILE:LINE:COL (1-based), through the server's pipeline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "location", metavar="FILE:LINE:COL", help="where the cursor is (1-based line and column)"
    )
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="new tokens to generate (default: settings)"
    )
    parser.add_argument("--raw", action="store_true", help="also print the model's raw output to stderr")


def parse_location(text: str) -> tuple[Path, int, int]:
    match = re.fullmatch(r"(.+):(\d+):(\d+)", text)
    if not match:
        raise ValueError(f"expected FILE:LINE:COL, got {text!r}")
    line, col = int(match.group(2)), int(match.group(3))
    if line < 1 or col < 1:
        raise ValueError("LINE and COL are 1-based")
    return Path(match.group(1)), line, col


def run(args: argparse.Namespace) -> int:
    from exlsp.documents import Document
    from exlsp.handlers.completion import cursor_context, fim_input, sampling_params
    from exlsp.handlers.lifecycle import budgets
    from exlsp.postprocess import postprocess
    from exlsp.prompt import PromptBuilder
    from exlsp.server import open_engine_verbose
    from exlsp.settings import Settings

    try:
        path, line, col = parse_location(args.location)
        text = path.read_text(encoding="utf-8")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        print(f"exlsp complete: {exc}", file=sys.stderr)
        return 2
    settings = Settings()
    doc = Document(uri=path.resolve().as_uri(), language_id=_language_of(path), version=0, text=text)
    # COL counts characters; offset_at counts UTF-16 units, so go through the line directly.
    line_index = min(line - 1, doc.num_lines - 1)
    offset = doc.line_starts[line_index] + min(col - 1, len(doc.line_text(line_index)))

    engine = open_engine_verbose("complete", args.model, args.device)
    if engine is None:
        return 1
    try:
        builder = PromptBuilder(engine.tokenizer)
        fitted = budgets(settings, engine.config.max_position_embeddings)
        prompt = builder.build(fim_input(doc, offset, settings, path=path.name), fitted)
        cursor = cursor_context(doc.text, offset)
        if args.max_tokens:
            settings = dataclasses.replace(settings, max_tokens=args.max_tokens)
        params = dataclasses.replace(sampling_params(settings, prompt, cursor), time_budget_ms=None)
        result = engine.generate(list(prompt.token_ids), params)
    finally:
        engine.close()
    if args.raw:
        print(f"exlsp: raw output {result.text!r} ({result.finish_reason})", file=sys.stderr)
    suggestion = postprocess(result.text, cursor)
    if suggestion is None:
        print("exlsp: no suggestion here", file=sys.stderr)
        return 0
    print(suggestion)
    return 0


_LANGUAGES = {
    ".py": "python",
    ".rs": "rust",
    ".ts": "typescript",
    ".js": "javascript",
    ".go": "go",
    ".lua": "lua",
}


def _language_of(path: Path) -> str:
    return _LANGUAGES.get(path.suffix, path.suffix.lstrip("."))
