"""Quantization time on a GPU: `exlsp quantize` on a random-weight checkpoint of Qwen2.5-Coder-0.5B's
shape (hidden 896, 24 layers, MLP 4864, 14/2 heads; fp16). Time does not depend on the weight
values; the calibration text is the default (the Python standard library on the machine).

    python bench/bench_quantize_gpu.py            # GPTQ 4-bit g128 with the CUDA defaults, and RTN
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE_0_5B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
)


def quantize_s(src: Path, dst: Path, device: str, *extra: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "exlsp.cli", "quantize", str(src), str(dst), "--device", device, *extra],
        cwd=REPO, check=True,
    )  # fmt: skip
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=SHAPE_0_5B["num_hidden_layers"])
    parser.add_argument("--device", default="cuda", help="cuda (the figure), or cpu for a smoke test")
    args = parser.parse_args(argv)
    import torch

    from tests.tiny_models import make_tiny_checkpoint

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_quantize_gpu: no CUDA device", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        shape = {**SHAPE_0_5B, "num_hidden_layers": args.layers}
        src = make_tiny_checkpoint(Path(tmp) / "float", "qwen2", dtype=torch.float16, **shape)
        rows = {
            "gptq 4-bit g128 (defaults)": quantize_s(src, Path(tmp) / "gptq", args.device),
            "rtn 4-bit g128": quantize_s(src, Path(tmp) / "rtn", args.device, "--method", "rtn"),
        }
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"\ndevice: {where}  shape: Qwen2.5-Coder-0.5B, {args.layers} layers")
    for name, seconds in rows.items():
        print(f"  {name:34s} {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
