"""`exlsp models`: list the model store. Also home of `report_errors`, shared by the model commands
(setup, import, pull, quantize, eval) to turn user mistakes into one-line messages."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from collections.abc import Iterator

HELP = "list the models in the store (* marks the default)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the manifests as JSON")


@contextlib.contextmanager
def report_errors(command: str) -> Iterator[None]:
    """Expected failures (bad input, integrity, full disk) print `exlsp CMD: error: ...` and are
    swallowed, so the caller's next statement (its failure return) runs; bugs still raise.

    SIGTERM becomes KeyboardInterrupt meanwhile, so a killed import or quantization still removes
    its scratch and staging folders (gigabytes) on the way out, as Ctrl-C does."""
    import signal
    import threading

    from exlsp.default_model import DownloadError, IntegrityError
    from exlsp.store import StoreError

    expected: tuple[type[BaseException], ...] = (StoreError, IntegrityError, DownloadError, FileNotFoundError,
                                                 FileExistsError, ValueError)  # fmt: skip

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
    try:
        yield
    except expected as exc:
        print(f"exlsp {command}: error: {exc}", file=sys.stderr)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"exlsp {command}: error: out of disk space ({exc.strerror or exc}); nothing was added",
              file=sys.stderr)  # fmt: skip
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    from exlsp.store import DEFAULT_MODEL_NAME, Store, data_dir

    store = Store(data_dir(os.environ))
    manifests = store.list()
    if args.json:
        print(json.dumps([json.loads(m.to_json()) for m in manifests], indent=2))
        return 0
    if not manifests:
        print(
            f"no models in {store.models_dir}: run `exlsp setup` (default model) or `exlsp import FILE.gguf`"
        )
        return 0
    rows = [("", "NAME", "FORMAT", "BITS", "GROUP", "CREATED", "SOURCE")]
    for m in manifests:
        rows.append((
            "*" if m.name == DEFAULT_MODEL_NAME else "", m.name, m.format,
            "-" if m.bits is None else str(m.bits), "-" if m.group_size is None else str(m.group_size),
            m.created, m.source,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"\nstore: {store.models_dir}")
    return 0
