"""Compile csrc/ into the torch.ops.exlsp library just in time, once per source/torch/GPU combination.

The source list is csrc/sources.txt (the one list any package build reads too). The build lands in
the user cache directory (platformdirs), keyed by a hash of the sources, the torch and CUDA versions
and the target architectures, so a second process, or the next start, only loads the shared object.
Nothing here runs at import: `load()` is called by engine/ops/cuda.py the first time a CUDA op is needed.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch


def find_csrc(ops_dir: Path = Path(__file__).resolve().parent) -> Path:
    """The kernels' sources: a source checkout's csrc/ (beside engine/), else the copy an installed
    wheel carries as engine/ops/csrc (setup.py)."""
    checkout = ops_dir.parents[1] / "csrc"
    return checkout if (checkout / "sources.txt").is_file() else ops_dir / "csrc"


CSRC_DIR = find_csrc()
MIN_CAPABILITY = (8, 0)  # bf16 arithmetic and the async copies the kernels assume
LIBRARY_NAME = "exlsp_ops"
# Extra preprocessor names for probe builds, space-separated (EXLSP_TRACE: csrc/trace.cuh's marks);
# they enter the build key, so such a build never replaces the ordinary one.
DEFINES_ENV = "EXLSP_NVCC_DEFINES"


class BuildError(RuntimeError):
    """The kernels cannot be built or loaded here; the message says why (shown once by the caller)."""


def source_paths(csrc_dir: Path = CSRC_DIR) -> list[Path]:
    """The sources listed in csrc/sources.txt (comments and blank lines skipped), in order."""
    listing = csrc_dir / "sources.txt"
    if not listing.is_file():
        raise BuildError(f"kernel sources not found ({listing} is missing): reinstall exlsp")
    names = [line.split("#", 1)[0].strip() for line in listing.read_text().splitlines()]
    return [csrc_dir / name for name in names if name]


def arch_flags(capability: tuple[int, int]) -> list[str]:
    """nvcc -gencode flags: machine code for this GPU, plus PTX of it so a newer GPU can still JIT it."""
    major, minor = capability
    arch = f"{major}{minor}"
    return [
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        f"-gencode=arch=compute_{arch},code=compute_{arch}",
    ]


def extra_defines() -> list[str]:
    return [f"-D{name}" for name in os.environ.get(DEFINES_ENV, "").split()]


def build_key(sources: list[Path], capability: tuple[int, int]) -> str:
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for header in sorted(CSRC_DIR.glob("*.h")) + sorted(CSRC_DIR.glob("*.cuh")):
        digest.update(header.name.encode())
        digest.update(header.read_bytes())
    digest.update(f"{torch.__version__}|{torch.version.cuda}|{capability}".encode())
    if extra_defines():
        digest.update(" ".join(extra_defines()).encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # a bare GPU box without platformdirs: the conventional place
        return Path.home() / ".cache" / "exlsp" / "kernels"
    return Path(user_cache_dir("exlsp")) / "kernels"


def check_device() -> tuple[int, int]:
    if not torch.cuda.is_available():
        raise BuildError("no CUDA device")
    if torch.version.cuda is None:
        raise BuildError("this torch build has no CUDA support")
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name()
        raise BuildError(f"{name} (compute capability {capability[0]}.{capability[1]}) is older than sm_80")
    return capability


def load(verbose: bool = False) -> Path:
    """Build (or reuse) and load the library so that torch.ops.exlsp.* exist; returns the build folder."""
    capability = check_device()
    sources = source_paths()
    build_dir = cache_dir() / build_key(sources, capability)
    build_dir.mkdir(parents=True, exist_ok=True)
    already_built = any(build_dir.glob(f"{LIBRARY_NAME}*.so"))
    if not already_built:
        print(
            f"exlsp: compiling CUDA kernels for sm_{capability[0]}{capability[1]} (first use only, about a minute)...",
            file=sys.stderr,
            flush=True,
        )
    from torch.utils import cpp_extension

    try:
        cpp_extension.load(
            name=LIBRARY_NAME,
            sources=[str(p) for p in sources],
            extra_cflags=["-O3", *extra_defines()],
            extra_cuda_cflags=["-O3", "--use_fast_math", *arch_flags(capability), *extra_defines()],
            extra_include_paths=[str(CSRC_DIR)],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as exc:  # compiler missing, compile error, ABI mismatch: all one answer
        raise BuildError(f"building the CUDA kernels failed: {exc}") from exc
    if not already_built:
        print(f"exlsp: CUDA kernels built in {build_dir}", file=sys.stderr, flush=True)
    return build_dir
