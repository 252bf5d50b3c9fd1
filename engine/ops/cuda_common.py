"""What the CUDA op wrappers share: the dtypes the kernels take, a layout check, and the per-device
counters (engine/ops/cuda_quant_linear.py for the GEMVs, engine/ops/cuda.py for the element-wise ops,
engine/ops/cuda_attention.py for attention). No kernel is called here.
"""

from __future__ import annotations

import torch

MODEL_DTYPES = (torch.float16, torch.bfloat16)
COUNTERS = 65536
ATTENTION_COUNTERS_OFFSET = 32768  # the upper half of the counters; the GEMV splits use the lower

_counters: dict[torch.device, torch.Tensor] = {}
_num_sms: dict[torch.device, int] = {}


def is_model_dtype(*tensors: torch.Tensor) -> bool:
    dtype = tensors[0].dtype
    return dtype in MODEL_DTYPES and all(t.dtype == dtype and t.is_cuda for t in tensors)


def heads_contiguous(t: torch.Tensor) -> bool:
    return t.dim() == 3 and t.stride(2) == 1 and t.stride(1) == t.shape[2]


def split_counters(device: torch.device) -> torch.Tensor:
    """The zeroed counters of `device`, made on first use: per tile for the split GEMV (the lower
    half) and per sequence and KV head for the decode attention's merge (the upper half); the
    kernels leave them zero. Created at load, never inside a CUDA graph capture; kernels on one
    stream run one after the other."""
    if device not in _counters:
        _counters[device] = torch.zeros(COUNTERS, dtype=torch.int32, device=device)
        _num_sms[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _counters[device]


def counters_of(device: torch.device) -> torch.Tensor | None:
    """The counters of `device` if they were made (at load), else None: never allocate them here,
    where a CUDA graph may be capturing."""
    return _counters.get(device)


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a device whose counters were made."""
    return _num_sms[device]
