"""Host values to the device without waiting for the device.

A host -> CUDA copy from ordinary (pageable) memory waits for everything queued on the stream: with a
decode step queued ahead (engine/step_pipeline.py) every such copy made the host wait for the step
running on the GPU, and the step ahead gained little (H100: 385 against 410 tok/s with the steps
queued, bench/NOTES.md 52). From pinned memory the copy is queued like a kernel; PyTorch's pinned
allocator keeps the buffer until the copy has run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tensor_on(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.tensor(values, dtype=dtype, device=device), the copy queued on the current stream."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
