"""CPU benchmark: this engine versus `transformers` generate on the same random-weight model, one run.

    python bench/bench_engine_cpu.py            # print the figures
    python bench/bench_engine_cpu.py --write    # and append them to bench/RESULTS.md

Figures (greedy, float32, torch threads fixed, best of --repeats, the two sides alternating):
  prefill tok/s          prompt tokens / time to the first token, a fresh prompt (no prefix-cache hit)
  decode tok/s           one request: (n - 1) / (time for n output tokens - time for 1)
  decode tok/s batch N   N requests at once: N * (n - 1) / (time for n tokens each - time for 1 each)
  transformers forward   one bare forward over the prompt: the floor under its generate's prefill
  time to first token    cold, and for the same prompt plus two tokens right after it ran (the next
                         keystroke in an editor: the engine's prefix cache serves all but one block)
Both sides run the same checkpoint (a Qwen2-shaped model built here, hidden 256, 4 layers) with the
same prompts. --clock cpu counts the process's CPU time instead of wall time: with --threads 1 it
measures the work per token even when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.tiny_models when run as a script

import torch  # noqa: E402

MODEL_SHAPE = dict(
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or platform.machine()
    load = os.getloadavg()[0]  # other jobs on the machine skew every figure; say how busy it was
    return f"{name} CPU, {torch.get_num_threads()} torch threads, load avg {load:.1f}"


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def prompts(vocab: int, n: int, length: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n, length), generator=gen).tolist()


class EngineSide:
    def __init__(self, folder: Path, args, clock) -> None:
        from engine import Engine

        self.clock = clock
        self.engine = Engine(
            folder, device="cpu", prefill_chunk_tokens=args.prompt_tokens,
            max_batch_size=max(8, args.batch), cache_tokens=args.batch * 2048,
        )  # fmt: skip
        self.engine.generate(prompts(self.engine.config.vocab_size, 1, 32, 0)[0], max_new_tokens=4)  # warm up

    def prefill_s(self, ids: list[int]) -> float:
        t0 = self.clock()
        self.engine.generate(ids, max_new_tokens=1)
        return self.clock() - t0

    def keystroke_s(self, ids: list[int]) -> float:
        """Time to first token of `ids` plus two tokens, right after `ids` ran: the editor's next
        keystroke, served from the prefix cache."""
        self.engine.generate(ids, max_new_tokens=1)
        return self.prefill_s(ids + ids[:2])

    def decode_s(self, batch: list[list[int]], num_tokens: int) -> float:
        """Requests submitted together: time for num_tokens minus time for 1, as for transformers."""

        def run(n: int) -> float:
            t0 = self.clock()
            handles = [self.engine.submit(p, max_new_tokens=n, ignore_eos=True) for p in batch]
            for h in handles:
                h.result()
            return self.clock() - t0

        return run(num_tokens) - run(1)

    def close(self) -> None:
        self.engine.close()


class TransformersSide:
    def __init__(self, folder: Path, clock) -> None:
        from transformers import AutoModelForCausalLM

        self.clock = clock
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self._generate([[11] * 32], 4)  # warm up

    @torch.inference_mode()
    def _generate(self, ids: list[list[int]], n: int) -> float:
        t0 = self.clock()
        self.model.generate(
            torch.tensor(ids), attention_mask=torch.ones(len(ids), len(ids[0]), dtype=torch.long),
            max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
        )  # fmt: skip
        return self.clock() - t0

    def prefill_s(self, ids: list[int]) -> float:
        return self._generate([ids], 1)

    @torch.inference_mode()
    def forward_s(self, ids: list[int]) -> float:
        t0 = self.clock()
        self.model(torch.tensor([ids]))
        return self.clock() - t0

    def decode_s(self, batch: list[list[int]], num_tokens: int) -> float:
        """generate(num_tokens) minus generate(1): the time after the first token."""
        return self._generate(batch, num_tokens) - self._generate(batch, 1)


def measure(folder: Path, args) -> dict[str, float]:
    """Best of args.repeats for each figure; the two sides alternate so that a noisy neighbour on the
    machine hits both alike."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter  # cpu: all threads' CPU time
    ours, theirs = EngineSide(folder, args, clock), TransformersSide(folder, clock)
    vocab = ours.engine.config.vocab_size
    times: dict[str, list[float]] = {}
    for r in range(args.repeats):
        long = prompts(vocab, 1, args.prompt_tokens, 1000 + r)[0]  # fresh each time: no cache hit
        one = prompts(vocab, 1, 16, 2000 + r)
        many = prompts(vocab, args.batch, 16, 3000 + r)
        n = args.decode_tokens
        runs = (
            ("engine prefill", ours.prefill_s, (long,)),
            ("engine keystroke", ours.keystroke_s, (prompts(vocab, 1, args.prompt_tokens, 4000 + r)[0],)),
            ("transformers prefill", theirs.prefill_s, (long,)),
            ("transformers forward", theirs.forward_s, (long,)),
            ("engine decode 1", ours.decode_s, (one, n)),
            ("transformers decode 1", theirs.decode_s, (one, n)),
            ("engine decode batch", ours.decode_s, (many, n)),
            ("transformers decode batch", theirs.decode_s, (many, n)),
        )
        for name, fn, fn_args in runs:
            times.setdefault(name, []).append(fn(*fn_args))
    ours.close()
    best = {name: min(ts) for name, ts in times.items()}
    p, d = args.prompt_tokens, args.decode_tokens - 1
    return {
        "engine prefill": p / best["engine prefill"],
        "transformers prefill": p / best["transformers prefill"],
        "transformers forward": p / best["transformers forward"],
        "engine decode 1": d / best["engine decode 1"],
        "transformers decode 1": d / best["transformers decode 1"],
        "engine decode batch": args.batch * d / best["engine decode batch"],
        "engine keystroke ms": 1000 * best["engine keystroke"],
        "engine prefill ms": 1000 * best["engine prefill"],
        "transformers prefill ms": 1000 * best["transformers prefill"],
        "transformers decode batch": args.batch * d / best["transformers decode batch"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="cpu: count this process's CPU time instead of wall time (robust to busy neighbours; "
        "meaningful with --threads 1)",
    )  # fmt: skip
    parser.add_argument("--write", action="store_true", help="append the figures to bench/RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tests.tiny_models import make_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_checkpoint(Path(tmp) / "model", "qwen2", seed=0, **MODEL_SHAPE)
        f = measure(folder, args)

    shape = "qwen2 h256 L4 fp32" + (", CPU time" if args.clock == "cpu" else "")
    p, b = args.prompt_tokens, args.batch
    rows = [
        (f"engine CPU prefill tok/s ({shape}, {p}-token prompt, time to first token)", f["engine prefill"]),
        (f"transformers generate CPU prefill tok/s ({shape}, {p}-token prompt, time to first token)",
         f["transformers prefill"]),
        (f"transformers forward CPU tok/s ({shape}, {p}-token prompt, one bare forward)", f["transformers forward"]),
        (f"engine CPU greedy decode tok/s ({shape}, batch 1)", f["engine decode 1"]),
        (f"transformers generate CPU greedy decode tok/s ({shape}, batch 1)", f["transformers decode 1"]),
        (f"engine CPU greedy decode tok/s ({shape}, {b} requests at once)", f["engine decode batch"]),
        (f"transformers generate CPU greedy decode tok/s ({shape}, batch {b})", f["transformers decode batch"]),
        (f"engine CPU time to first token ms ({shape}, {p}-token prompt, cold)", f["engine prefill ms"]),
        (f"transformers generate CPU time to first token ms ({shape}, {p}-token prompt)", f["transformers prefill ms"]),
        (f"engine CPU time to first token ms ({shape}, same {p} tokens + 2: prefix-cache hit)",
         f["engine keystroke ms"]),
    ]  # fmt: skip
    where, when, rev = machine(), datetime.date.today().isoformat(), commit()
    lines = [f"| {name} | {value:.0f} | {where} | {when} | {rev} |" if value >= 100 else
             f"| {name} | {value:.1f} | {where} | {when} | {rev} |" for name, value in rows]  # fmt: skip
    print("\n".join(lines))
    if args.write:
        results = REPO / "bench" / "RESULTS.md"
        if not results.exists():
            results.write_text(
                "# Benchmark results\n\nEach row: one figure, the machine (card or CPU) it ran on, the date and "
                "the commit.\n\n| figure | value | machine | date | commit |\n|---|---|---|---|---|\n"
            )
        with results.open("a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
