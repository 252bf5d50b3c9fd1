"""`exlsp serve`: the language server editors start (stdio by default, --tcp HOST:PORT)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from exlsp.commands.vocab_bits import add_vocab_bits_arguments

HELP = "run the language server for editors (stdio; --tcp HOST:PORT for a socket)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP socket instead of stdio")
    # Clients such as vscode-languageclient append --stdio to the command they start.
    parser.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (the default)")
    parser.add_argument("--device", help="engine device (cuda, cuda:1, cpu); overrides the settings")
    parser.add_argument("--log-level", default="WARNING", help="log level on stderr (default WARNING)")
    add_vocab_bits_arguments(parser)


def config_dir_from_env() -> Path:
    """The one place EXLSP_CONFIG_DIR is read: tests and sandboxes point it away from $HOME."""
    from exlsp.settings import default_config_dir

    override = os.environ.get("EXLSP_CONFIG_DIR")
    return Path(override) if override else default_config_dir()


def answers_dir_from_env() -> Path:
    override = os.environ.get("EXLSP_CACHE_DIR")
    if override:
        return Path(override) / "answers"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("exlsp")) / "answers"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(), format="exlsp %(levelname)s %(message)s"
    )
    # pygls logs every message it sends at INFO; keep stderr readable.
    logging.getLogger("pygls").setLevel(max(logging.WARNING, logging.getLogger().level))

    from exlsp.server import build_server, default_engine_factory

    factory = default_engine_factory(
        args.model, args.device, head_bits=args.head_bits, embed_bits=args.embed_bits
    )
    server = build_server(factory, config_dir=config_dir_from_env(), answers_dir=answers_dir_from_env())
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            print(f"exlsp serve: --tcp wants HOST:PORT, got {args.tcp!r}", file=sys.stderr)
            return 2
        server.start_tcp(host, int(port))
    else:
        server.start_io()
    return 0
