"""Keep freed host memory inside the process on glibc, for a resident engine on the CPU.

A prefill allocates the same few-megabyte activations every request. glibc returns freed memory to
the kernel eagerly (blocks above its mmap threshold are unmapped on free; the top of a heap is
trimmed), so the next request faults every page back in: 2,200-6,400 minor page faults per
512-token prefill of the benchmark's tiny model, which left the engine's prefill behind a
transformers forward that ran on warm memory (bench/RESULTS.md). Raising the thresholds keeps
those pages mapped for reuse. The cost is that up to TRIM_THRESHOLD of freed memory stays with
the process instead of going back to the system, which is the point for a daemon that serves the
same shapes all day.

The settings are process-wide, so the engine applies them once when it runs on the CPU; other
platforms and C libraries are left alone, and EXLSP_KEEP_FREED_MEMORY=0 turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h parameter numbers
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit: activations below this come from the heap
TRIM_THRESHOLD = 256 << 20
TOP_PAD = 64 << 20

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; True when they are in effect (Linux with glibc)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("EXLSP_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError unless this is glibc
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
