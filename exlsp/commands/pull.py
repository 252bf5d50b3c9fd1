"""`exlsp pull REPO_ID`: download a Hugging Face repository (safetensors only) into the model store,
GPTQ-quantizing it when it is float. Needs the optional `huggingface_hub` (pip install exlsp[hub])."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HELP = "download a Hugging Face repository into the store (safetensors only), quantized if float"
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from exlsp.commands.quantize import add_quant_arguments

    parser.add_argument("repo_id", metavar="REPO_ID", help="e.g. Qwen/Qwen2.5-Coder-1.5B-Instruct")
    parser.add_argument("--revision", help="branch, tag or commit (default: main)")
    parser.add_argument("--name", help="store name (default: the repository name, lower case)")
    parser.add_argument("--cache-dir", type=Path, help="Hugging Face hub cache (default: the hub's own)")
    parser.add_argument("--keep-float", action="store_true", help="store a float model without quantizing")
    parser.add_argument("--force", action="store_true", help="replace a model of the same name")
    add_quant_arguments(parser)


def download(repo_id: str, revision: str | None, cache_dir: Path | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise FileNotFoundError("`exlsp pull` needs huggingface_hub: pip install 'exlsp[hub]'") from exc
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=ALLOW_PATTERNS
        )
    except (LocalEntryNotFoundError, HfHubHTTPError) as exc:
        raise FileNotFoundError(
            f"could not get {repo_id} from the Hugging Face hub or its local cache: {exc}"
        ) from exc
    return Path(folder)


def run(args: argparse.Namespace) -> int:
    from exlsp.commands.import_gguf import move_into
    from exlsp.commands.models import report_errors
    from exlsp.commands.quantize import quantize_from_args
    from exlsp.store import Manifest, Store, check_name, data_dir, sha256_file

    with report_errors("pull"):
        name = check_name(args.name or args.repo_id.rsplit("/", 1)[-1].lower())
        store = Store(data_dir(os.environ))
        store.check_free(name, args.force)
        folder = download(args.repo_id, args.revision, args.cache_dir)
        weights = sorted(folder.glob("*.safetensors"))
        if not weights or not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{args.repo_id} has no config.json and *.safetensors weights: only safetensors checkpoints "
                "are pulled (pickle .bin/.pt files are refused)"
            )
        config = json.loads((folder / "config.json").read_text())
        quant = config.get("quantization_config") or {}
        source = f"hf:{args.repo_id}@{folder.name}"
        sha256 = {p.name: sha256_file(p) for p in weights}
        store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=store.root) as scratch:
            out = Path(scratch) / "model"
            if quant:
                if quant.get("quant_method") != "gptq":
                    raise ValueError(
                        f"{args.repo_id} is quantized with {quant.get('quant_method')!r}; only GPTQ is supported"
                    )
                shutil.copytree(folder, out)  # follows the hub cache's symlinks
                manifest = Manifest(name=name, source=source, format="gptq", bits=quant.get("bits"),
                                    group_size=quant.get("group_size"), source_sha256=sha256)  # fmt: skip
            elif args.keep_float:
                shutil.copytree(folder, out)
                manifest = Manifest(name=name, source=source, format="float", source_sha256=sha256)
            else:
                print(f"quantizing {args.repo_id} ...", file=sys.stderr, flush=True)
                details = quantize_from_args(args, folder, out, force=False)
                manifest = Manifest(name=name, source=source, format="gptq", bits=args.bits,
                                    group_size=args.group_size, source_sha256=sha256, details=details)  # fmt: skip
            with store.add(manifest, force=args.force) as staging:
                move_into(out, staging)
        print(f"pulled {args.repo_id} as {name!r} ({store.path(name)})")
        return 0
    return 1
