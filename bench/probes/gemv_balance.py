"""Probe: is the batch-1 GEMV held back by tiles that do not divide evenly over the SMs?

    python bench/probes/gemv_balance.py [--k 4096] [--rounds 3]

4096 x 14336 has 448 column tiles of 32: on 132 SMs, 52 take 4 blocks and 80 take 3, so if an SM's
loads in flight bound its share of the bandwidth (bench/NOTES.md 66b), the call's last quarter runs
on 52 SMs. Widths whose tiles fill every SM alike (3 or 4 per SM on this card) against the widths
between them: GB/s (bench_gpu.gemv_gbs: CUDA graph, 4 rotating weights, PDL off) and the share of
the measured copy bandwidth, the shapes alternated over rounds (bench/NOTES.md 78).

Beside each GEMV, what the harness itself allows at that size (bench/NOTES.md 79: the GEMV streams at
the copy's rate once running, and a fixed ~3 us per call holds it at 74%): a device copy moving the
same bytes (read + write) in the same kind of graph, and the GEMV back to back with PDL, as the decode
step launches it. Last, the graph's cost per kernel for a one-element kernel: the launch gap alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.bench_gpu import gemv_gbs  # noqa: E402
from bench.gpu_shapes import kernels_ready  # noqa: E402
from bench.gpu_timing import copy_bandwidth_gbs, launch_gap_us, same_bytes_copy_gbs  # noqa: E402


def widths(sms: int) -> list[int]:
    """N for 3 and 4 tiles per SM, 4096 x 14336's 448 tiles, and the halfway points."""
    even3, even4 = 3 * sms * 32, 4 * sms * 32
    return sorted({even3, (even3 + 14336) // 64 * 32, 14336, (14336 + even4) // 64 * 32, even4})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not kernels_ready("gemv_balance"):
        return 1
    torch.set_grad_enabled(False)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    copy = copy_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}  {sms} SMs  copy {copy:.0f} GB/s")
    ns = widths(sms)
    figures = ("gemv", "gemv_pdl", "copy_same_bytes")
    runs: dict[int, dict[str, list[float]]] = {n: {f: [] for f in figures} for n in ns}
    for r in range(args.rounds):
        for n in ns if r % 2 == 0 else reversed(ns):
            plain = gemv_gbs(args.k, n, 1, torch.float16)
            runs[n]["gemv"].append(plain["gbs"])
            runs[n]["gemv_pdl"].append(gemv_gbs(args.k, n, 1, torch.float16, pdl=True)["gbs"])
            nbytes = plain["gbs"] * plain["us"] * 1e3  # the bytes gemv_gbs counted
            runs[n]["copy_same_bytes"].append(same_bytes_copy_gbs(round(nbytes)))
    print(
        f"{'shape':>10s} {'tiles':>13s} {'GEMV GB/s':>15s} {'GEMV, PDL':>15s} {'copy, same bytes':>17s} {'GEMV/that':>10s}"
    )
    for n in ns:
        gemv, pdl, same = (statistics.median(runs[n][f]) for f in figures)
        tiles = n // 32
        print(
            f"{args.k}x{n} {tiles:4d} ({tiles / sms:.2f}/SM) {gemv:6.0f} ({gemv / copy:5.1%}) {pdl:6.0f} ({pdl / copy:5.1%})"
            f"  {same:6.0f} ({same / copy:5.1%}) {gemv / same:9.1%}"
        )
    print(f"a graph's one-element kernel: {launch_gap_us():.2f} us each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
