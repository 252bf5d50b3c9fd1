"""Keystroke replay: type a real source file into `exlsp serve` the way an editor does, and measure.

A trace is a list of (character, gap before it in ms) made from a file of this repository with
human-like gaps (seeded, so a run is replayable; `--trace-out` saves it as JSON, `--trace` replays
one). For every keystroke the client sends didChange, cancels its previous inline completion
request ($/cancelRequest, as VS Code does) and asks again. At the end it reads `exlsp/status`.

Reported: p50/p95 latency of the requests that were answered (not cancelled), the share of prompt
tokens served from the engine's prefix cache, prompt tokens computed per generation, type-through
cache hits, and how many requests were debounced or cancelled.

    python bench/bench_keystrokes.py                       # tiny random model, CPU
    python bench/bench_keystrokes.py --model qwen2.5-coder-0.5b --chars 600
    python bench/bench_keystrokes.py --record              # also append the figures to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DEFAULT_SOURCE = "exlsp/postprocess.py"  # the trace source: a real file of this repository


def make_trace(text: str, seed: int) -> list[tuple[str, float]]:
    """Gaps of a steady typist: ~90 ms between letters, longer after words and lines, and an
    occasional pause to think (which lets the debounce settle and a completion finish)."""
    rng = random.Random(seed)
    trace = []
    previous = ""
    for ch in text:
        gap = rng.lognormvariate(4.4, 0.35)  # median ~80 ms
        if previous in " ([.,":
            gap += rng.uniform(20, 120)
        if previous == "\n":
            gap += rng.uniform(150, 500)
        if rng.random() < 0.03:
            gap += rng.uniform(400, 1200)
        trace.append((ch, round(gap, 1)))
        previous = ch
    return trace


async def replay(
    model: str, trace: list[tuple[str, float]], settings: dict, home: Path, opened: str = ""
) -> dict:
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    from exlsp.status import percentile
    from tests.lsp.harness import _converter  # keeps custom results (exlsp/status) as dicts

    client = LanguageClient("exlsp-bench", "1", converter_factory=_converter)
    for method in (types.WINDOW_LOG_MESSAGE, types.WINDOW_SHOW_MESSAGE):
        client.feature(method)(lambda params: None)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "EXLSP_CONFIG_DIR": str(home / "config"),
        "EXLSP_CACHE_DIR": str(home / "cache"),
    }
    await client.start_io(sys.executable, "-m", "exlsp.cli", "serve", "--model", model, env=env)
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(
                text_document=types.TextDocumentClientCapabilities(
                    inline_completion=types.InlineCompletionClientCapabilities()
                )
            ),
            initialization_options=settings,
        )
    )
    client.initialized(types.InitializedParams())

    async def status() -> dict:
        return await client.protocol.send_request_async("exlsp/status", {})

    while (s := await status())["state"] in ("idle", "loading"):
        await asyncio.sleep(0.1)
    if s["state"] != "ready":
        raise SystemExit(f"the model failed to load: {s['error']}")

    uri = (home / "typed.py").as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=opened)
        )
    )
    start = await status()
    latencies_ms: list[float] = []
    shown = 0
    pending: asyncio.Task | None = None
    pending_id: str | None = None
    line, character = opened.count("\n"), len(opened.rsplit("\n", 1)[-1])

    async def ask(msg_id: str, line: int, character: int) -> None:
        nonlocal shown
        sent = time.perf_counter()
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        try:
            result = await client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id
            )
        except Exception:
            return  # cancelled: superseded by the next keystroke
        latencies_ms.append((time.perf_counter() - sent) * 1000)
        shown += bool(result and result.items)

    for index, (ch, gap_ms) in enumerate(trace):
        await asyncio.sleep(gap_ms / 1000)
        at = types.Position(line=line, character=character)
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=index + 2),
                content_changes=[
                    types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=ch)
                ],
            )
        )
        if ch == "\n":
            line, character = line + 1, 0
        else:
            character += 2 if ord(ch) > 0xFFFF else 1
        if pending is not None and not pending.done():
            client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=pending_id))
        pending_id = f"k{index}"
        pending = asyncio.ensure_future(ask(pending_id, line, character))
    if pending is not None:
        await pending
    end = await status()
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()

    c0, c1 = start["completions"], end["completions"]
    e0, e1 = start["engine"], end["engine"]
    # The engine's own counters include requests cancelled mid-prefill, which the server's don't.
    prompt = e1["prefix_cache_query_tokens"] - e0["prefix_cache_query_tokens"]
    cached = e1["prefix_cache_hit_tokens"] - e0["prefix_cache_hit_tokens"]
    generations = c1["generations"] - c0["generations"]
    return {
        "keystrokes": len(trace),
        "answered": len(latencies_ms),
        "shown": shown,
        "latency_p50_ms": percentile(latencies_ms, 50),
        "latency_p95_ms": percentile(latencies_ms, 95),
        "generations": generations,
        "prefix_cache_share": cached / prompt if prompt else None,
        "prompt_tokens_computed_per_generation": (prompt - cached) / generations if generations else None,
        "prompt_tokens_per_generation": prompt / generations if generations else None,
        "type_through_hits": c1["typeThroughHits"] - c0["typeThroughHits"],
        "debounced": c1["debounced"] - c0["debounced"],
        "cancelled": c1["cancelled"] - c0["cancelled"],
        "device": end["device"],
        "model": end["model"],
    }


def tiny_model(folder: Path) -> Path:
    from tests.lsp.harness import make_code_model

    return make_code_model(folder)


SECTION = "## Keystroke replay (bench/bench_keystrokes.py)"
SECTION_INTRO = (
    "Typing a file of this repository into `exlsp serve` character by character with human-like gaps;\n"
    "every keystroke cancels the previous inline-completion request and asks again, as editors do.\n"
    "Latency covers the requests that were answered; cancelled ones are counted, not timed. The prompt\n"
    "figures come from the engine's prefix-cache counters and average over every generation, including\n"
    "those cancelled before their prefill ran (they add nothing). On 2 CPU cores the 0.5B model needs ~2 s\n"
    "per suggestion, so while typing nearly every request is cancelled by the next keystroke and only\n"
    "pauses get an answer; the GPU is where that model is meant to run.\n\n"
    "| figure | value | model and trace | machine | date | commit |\n|---|---|---|---|---|---|\n"
)


def record(result: dict, label: str, machine: str) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    rows = [
        ("p50 inline-completion latency ms", f"{result['latency_p50_ms']:.0f}"),
        ("p95 inline-completion latency ms", f"{result['latency_p95_ms']:.0f}"),
        ("share of prompt tokens from the prefix cache", f"{result['prefix_cache_share']:.2f}"),
        ("prompt tokens computed per generation", f"{result['prompt_tokens_computed_per_generation']:.1f}"),
        ("prompt tokens per generation", f"{result['prompt_tokens_per_generation']:.0f}"),
        ("type-through cache hits", str(result["type_through_hits"])),
        (
            "generations / answered / keystrokes",
            f"{result['generations']} / {result['answered']} / {result['keystrokes']}",
        ),
    ]
    path = REPO_ROOT / "bench" / "RESULTS.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{SECTION_INTRO}"
    day = date.today().isoformat()
    text += "".join(
        f"| {name} | {value} | {label} | {machine} | {day} | {commit.stdout.strip()} |\n"
        for name, value in rows
    )
    path.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="model store name or checkpoint folder (default: a tiny random model)"
    )
    parser.add_argument("--source", default=DEFAULT_SOURCE, help=f"file to type (default {DEFAULT_SOURCE})")
    parser.add_argument("--chars", type=int, default=400, help="characters of it to type (default 400)")
    parser.add_argument(
        "--start-line",
        type=int,
        default=0,
        help="open the document with this many lines already there (default 0)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the typing gaps (default 0)")
    parser.add_argument("--trace", help="replay this JSON trace instead of making one")
    parser.add_argument("--trace-out", help="save the trace as JSON")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per completion (default 16)")
    parser.add_argument("--debounce-ms", type=float, default=30, help="server debounce (default 30)")
    parser.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = parser.parse_args()

    source = (REPO_ROOT / args.source).read_text()
    opened = "".join(source.splitlines(keepends=True)[: args.start_line])
    if args.trace:
        trace = [tuple(item) for item in json.loads(Path(args.trace).read_text())]
    else:
        trace = make_trace(source[len(opened) : len(opened) + args.chars], args.seed)
    if args.trace_out:
        Path(args.trace_out).write_text(json.dumps(trace))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model = args.model or str(tiny_model(home / "tiny"))
        settings = {"maxTokens": args.max_tokens, "debounceMs": args.debounce_ms, "timeBudgetMs": 2000}
        result = asyncio.run(replay(model, trace, settings, home, opened))
    name = "tiny random qwen2" if not args.model else Path(args.model).name
    label = f"{name}, {len(trace)} chars of {args.source} typed after line {args.start_line}"
    machine = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}"
    if result["device"] and result["device"] != "cpu":
        machine = f"{result['device']}"
    print(json.dumps({**result, "label": label, "machine": machine}, indent=2))
    if args.record:
        record(result, label, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
