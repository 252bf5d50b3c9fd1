"""--head-bits / --embed-bits: how the output head and the token embedding are held in memory, for every
command that loads a model to serve it (engine/quant/vocab.py; defaults: engine/loader.py)."""

from __future__ import annotations

import argparse


def add_vocab_bits_arguments(parser: argparse.ArgumentParser) -> None:
    """--head-bits / --embed-bits, shared by every command that loads a model to serve it."""
    parser.add_argument(
        "--head-bits", type=int, choices=(4, 8, 16), default=None,
        help="quantize the output head at load to 4 or 8 bits, or keep it float with 16 "
        "(default: 8 on a GPU, 16 on the CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--embed-bits", type=int, choices=(4, 8, 16), default=None,
        help="token embedding in 4 or 8 bits, or float with 16 (default: 4 on a GPU, 16 on the CPU)",
    )  # fmt: skip
