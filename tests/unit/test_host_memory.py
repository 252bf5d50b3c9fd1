"""engine/host_memory.py: a CPU engine keeps its freed activations mapped, so a repeated prefill
stops faulting pages back in (thousands of minor faults per 512-token prefill otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.host_memory import keep_freed_memory

REPO = Path(__file__).resolve().parents[2]
PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys, tempfile
    # PR_SET_THP_DISABLE (best effort): count 4 KiB pages. With transparent huge pages one fault
    # maps 2 MiB, and how many a run gets depends on what the machine has free (402 instead of
    # ~4160 seen once).
    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from engine import Engine
    from tests.tiny_models import make_tiny_checkpoint
    # twice bench/bench_engine_cpu.py's model in width: that one's activations now fit in what the
    # allocator keeps by default (3 faults per prefill since the attention frees its intermediates
    # before o_proj runs), so it no longer shows the faults this setting prevents
    shape = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(make_tiny_checkpoint(Path(tmp) / "m", "qwen2", seed=0, **shape), device="cpu",
                        prefill_chunk_tokens=512, cache_tokens=4096)
        gen = torch.Generator().manual_seed(0)
        prompts = torch.randint(10, engine.config.vocab_size, (8, 512), generator=gen).tolist()
        for p in prompts[:2]:
            engine.generate(p, max_new_tokens=1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for p in prompts[2:]:
            engine.generate(p, max_new_tokens=1)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 6)
        engine.close()
    """
)


def faults_per_prefill(keep: bool) -> int:
    env = {**os.environ, "EXLSP_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not keep_freed_memory(), reason="needs Linux with glibc")
def test_a_cpu_engine_stops_faulting_its_activations_back_in():
    default, kept = faults_per_prefill(keep=False), faults_per_prefill(keep=True)
    # glibc's defaults hand the activations back after each prefill: ~7500 faults per prefill here
    # (a tenth of that seen once inside the whole suite, before huge pages were turned off for the probe)
    assert default > 100, default
    assert kept < default / 5, (kept, default)


def test_applying_twice_is_harmless():
    assert keep_freed_memory() == keep_freed_memory()
