"""`exlsp eval [MODEL ...]`: perplexity and fill-in-the-middle exact match on held-out source files."""

from __future__ import annotations

import argparse
import json
import math
import sys

from exlsp.commands.vocab_bits import add_vocab_bits_arguments
from exlsp.evaluate import EvalConfig

HELP = "perplexity and fill-in-the-middle exact match on held-out files (table, or --json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="*", metavar="MODEL", help="store names or folders (default: --model)"
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--fim-samples", type=int, default=40, help="FIM holes (default 40)")
    parser.add_argument(
        "--ppl-windows", type=int, default=EvalConfig.ppl_windows_per_file,
        help=f"512-token windows per file (default {EvalConfig.ppl_windows_per_file})",
    )  # fmt: skip
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    add_vocab_bits_arguments(parser)


def format_table(results: list[dict]) -> str:
    rows = [("MODEL", "PPL", "TOKENS", "FIM EM %", "FIM SIM %", "HOLES", "SECONDS")]
    for r in results:
        none = math.isnan(r["fim_exact_match"])
        em = "n/a (no FIM tokens)" if none else f"{r['fim_exact_match']:.1f}"
        sim = "n/a" if none else f"{r['fim_similarity']:.1f}"
        rows.append((r["model"], f"{r['perplexity']:.3f}", str(r["ppl_tokens"]), em, sim, str(r["fim_samples"]),
                     f"{r['seconds']:.0f}"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def run(args: argparse.Namespace) -> int:
    from exlsp.commands.models import report_errors
    from exlsp.evaluate import EvalConfig, evaluate_model
    from exlsp.store import resolve_model

    config = EvalConfig(fim_samples=args.fim_samples, ppl_windows_per_file=args.ppl_windows)
    with report_errors("eval"):
        names = args.models or [args.model]
        results = []
        for name in names:
            path = resolve_model(name)
            print(f"evaluating {path} ...", file=sys.stderr, flush=True)
            result = evaluate_model(
                path, config, device=args.device, head_bits=args.head_bits, embed_bits=args.embed_bits
            ).to_dict()
            result["model"] = name or path.name
            results.append(result)
        print(json.dumps(results, indent=2) if args.json else format_table(results))
        return 0
    return 1
