"""`exlsp import FILE.gguf`: convert a GGUF file into the model store, GPTQ-quantized unless --keep-float."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HELP = "convert a GGUF file (llama, qwen2) into the model store, quantized with GPTQ unless --keep-float"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from exlsp.commands.quantize import add_quant_arguments

    parser.add_argument("file", metavar="FILE.gguf", type=Path, help="the GGUF file to import")
    parser.add_argument("--name", help="store name (default: from the file name)")
    parser.add_argument("--keep-float", action="store_true", help="store the dequantized float model as is")
    parser.add_argument("--force", action="store_true", help="replace a model of the same name")
    add_quant_arguments(parser)


def name_from_file(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._").lower()
    return name or "imported"


def move_into(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        os.replace(item, dst / item.name)


def import_gguf(
    args: argparse.Namespace, gguf_path: Path, name: str, source: str, sha256: dict[str, str]
) -> Path:
    """GGUF -> float checkpoint in a scratch folder -> (quantized) -> the store, atomically."""
    import torch

    from engine.gguf_import import convert_gguf
    from exlsp.commands.quantize import quantize_from_args
    from exlsp.store import Manifest, Store, data_dir

    store = Store(data_dir(os.environ))
    store.check_free(name, args.force)  # before minutes of work
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=store.root) as scratch:
        float_dir = Path(scratch) / "float"
        float_dir.mkdir()
        print(f"converting {gguf_path.name} ...", file=sys.stderr, flush=True)
        facts = convert_gguf(gguf_path, float_dir, dtype=torch.float16)
        if args.keep_float:
            manifest = Manifest(name=name, source=source, format="float", source_sha256=sha256, details=facts)
            out_dir = float_dir
        else:
            out_dir = Path(scratch) / "quantized"
            facts.update(quantize_from_args(args, float_dir, out_dir, force=False))
            manifest = Manifest(name=name, source=source, format="gptq", bits=args.bits,
                                group_size=args.group_size, source_sha256=sha256, details=facts)  # fmt: skip
        with store.add(manifest, force=args.force) as staging:
            move_into(out_dir, staging)
        shutil.rmtree(scratch, ignore_errors=True)
    return store.path(name)


def run(args: argparse.Namespace) -> int:
    from exlsp.commands.models import report_errors
    from exlsp.store import check_name, sha256_file

    with report_errors("import"):
        if not args.file.is_file():
            raise FileNotFoundError(f"{args.file} does not exist")
        name = check_name(args.name or name_from_file(args.file))
        sha256 = {args.file.name: sha256_file(args.file)}
        path = import_gguf(args, args.file, name, f"gguf:{args.file.resolve()}", sha256)
        print(f"imported {args.file.name} as {name!r} ({path})")
        return 0
    return 1
