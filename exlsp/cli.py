"""The `exlsp` command line: one subcommand per module in exlsp/commands/.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `exlsp --help` and `exlsp serve` start fast
(no torch import until the engine starts).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module under exlsp.commands. Order is the order of `exlsp --help`.
COMMANDS: dict[str, str] = {
    "serve": "serve",
    "complete": "complete",
    "chat": "chat",
    "setup": "setup",
    "models": "models",
    "import": "import_gguf",
    "pull": "pull",
    "quantize": "quantize",
    "eval": "evaluate",
    "bench": "bench",
    "doctor": "doctor",
}


def _load(module_name: str):
    return importlib.import_module(f"exlsp.commands.{module_name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exlsp",
        description="Offline coding assistant: a resident quantized code model served to editors over LSP.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = _load(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != f"exlsp.commands.{module_name}":
                raise
            continue  # command not built yet
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument(
            "--model",
            metavar="NAME|PATH",
            default=None,
            help="model store name or checkpoint folder (default: the configured or default model)",
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
