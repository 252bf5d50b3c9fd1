"""Probe: decode tok/s and a keystroke's latency for two (or more) source trees, alternated on one
machine: a kernel change against the commit before it, when no runtime knob can switch it.

    git archive HEAD | tar -x -C .base        # the baseline tree, beside the working one
    python bench/probes/tree_ab.py --trees . .base [--rounds 2] [--ctx 32 2048 8192]
    python bench/probes/tree_ab.py --trees . .@EXLSP_X=1,EXLSP_Y=2   # one tree, two settings

A tree given as PATH@VAR=VALUE,... runs its child with those environment variables set (a probe's
switch read at startup); one path may appear with several settings, and is built once.

Each round runs every tree in a child process of its own, started in that tree: the tree's engine,
bench helpers and csrc/ (so its own kernel build, keyed by its sources: the first round builds, in
parallel for all trees). A child times the served decode step (bench/engine_step.py ServedStep,
graph steps queued, as bench_gpu.py's decode figure) at each context and a keystroke (16 new tokens
after an 8k prefix, the graph path, as decode_variants.py), and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CHILD_FLAG = "--child"


def child(contexts: list[int]) -> int:
    sys.path.insert(0, os.getcwd())  # this tree's engine and bench, before anything else's
    import torch

    from bench.bench_gpu import time_decode
    from bench.engine_step import ServedStep, served_model
    from bench.gpu_shapes import kernels_ready
    from bench.probes.decode_variants import keystroke_ms

    if not kernels_ready("tree_ab"):
        return 1
    torch.set_grad_enabled(False)
    model, kv_cache = served_model("llama3-8b", generator=torch.Generator(device="cuda").manual_seed(0))
    step = ServedStep(model, kv_cache)
    result = {f"tok_s_{ctx}": 1e3 / time_decode(step, ctx)[0] for ctx in contexts}
    result["keystroke_ms"] = keystroke_ms(step, model.config.vocab_size)
    print(json.dumps(result), flush=True)
    return 0


@dataclass(frozen=True)
class TreeRun:
    """A source tree and the environment variables its child runs with (PATH@VAR=VALUE,...)."""

    path: Path
    env: tuple[tuple[str, str], ...] = ()
    label: str = ""

    @classmethod
    def parse(cls, spec: str) -> TreeRun:
        path, _, settings = spec.partition("@")
        pairs = []
        for item in filter(None, settings.split(",")):
            name, eq, value = item.partition("=")
            if not eq or not name:
                raise SystemExit(f"tree_ab: {spec!r}: settings are VAR=VALUE separated by commas")
            pairs.append((name, value))
        resolved = Path(path or ".").resolve()
        return cls(
            resolved, tuple(pairs), (resolved.name or str(resolved)) + (f"@{settings}" if settings else "")
        )

    def environ(self) -> dict[str, str]:
        pythonpath = os.pathsep.join([str(self.path), os.environ.get("PYTHONPATH", "")])
        return dict(os.environ, PYTHONPATH=pythonpath, **dict(self.env))


def run_tree(tree: TreeRun, contexts: list[int]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, "--ctx", *map(str, contexts)]
    done = subprocess.run(cmd, cwd=tree.path, env=tree.environ(), capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"tree_ab: {tree.label} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trees", nargs="+", default=[".", ".base"], help="PATH or PATH@VAR=VALUE,...")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ctx", type=int, nargs="+", default=[32, 2048, 8192])
    parser.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.ctx)
    trees = [TreeRun.parse(spec) for spec in args.trees]
    if len({t.label for t in trees}) != len(trees):
        raise SystemExit("tree_ab: a tree and its settings are given twice")
    # the first builds in parallel: one child per source tree that only loads the kernels
    builds = [
        subprocess.Popen(
            [sys.executable, "-c", "import torch; from engine.ops import build; build.load()"],
            cwd=tree.path,
            env=tree.environ(),
        )
        for tree in {t.path: t for t in trees}.values()
    ]
    t0 = time.time()
    if any(b.wait() != 0 for b in builds):
        raise SystemExit("tree_ab: a kernel build failed")
    print(f"builds: {time.time() - t0:.0f} s", flush=True)
    results: dict[TreeRun, list[dict]] = {t: [] for t in trees}
    for r in range(args.rounds):
        for tree in trees if r % 2 == 0 else reversed(trees):
            results[tree].append(run_tree(tree, args.ctx))
            print(f"round {r + 1} {tree.label}: {results[tree][-1]}", flush=True)
    keys = list(results[trees[0]][0])
    width = max(12, *(len(t.label) for t in trees))
    print(f"\n{'tree':{width}s} " + " ".join(f"{k:>14s}" for k in keys))
    for tree in trees:
        cells = [statistics.median(res[k] for res in results[tree]) for k in keys]
        print(f"{tree.label:{width}s} " + " ".join(f"{c:14.2f}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
