"""The CUDA backend of the ops seam: loads torch.ops.exlsp (engine/ops/build.py) and wraps each kernel
in a function with the reference's signature (engine/ops/reference.py).

Wrappers allocate the outputs (the kernels never do) and fall back to the reference for inputs a
kernel does not cover (float32 models, odd shapes, unsupported head sizes), so a CUDA call never
fails where the reference would succeed. `op_table()` is the contract with engine/ops/__init__.py.
This module owns the loading and the element-wise, norm, rotary, KV-write, argmax and embedding ops;
the quantized linears live in engine/ops/cuda_quant_linear.py, the attention op's routing in
engine/ops/cuda_attention.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from engine.ops import reference
from engine.ops.cuda_attention import paged_attention
from engine.ops.cuda_common import heads_contiguous, is_model_dtype
from engine.ops.cuda_quant_linear import (
    prepare_quant_weight,
    quant_linear,
    quant_linear_add_norm,
    quant_linear_silu_mul,
    quant_qkv_rotary_kv,
)

_state: dict[str, object] = {}


def load_error() -> str | None:
    """Why the kernels are unavailable (None when loaded or not yet tried)."""
    err = _state.get("error")
    return None if err is None else str(err)


def ensure_loaded() -> bool:
    """Build/load the library once per process; one warning when that fails."""
    if "loaded" not in _state:
        from engine.ops import build

        try:
            build.load()
            _state["loaded"] = hasattr(torch.ops.exlsp, "quant_gemv")
        except build.BuildError as exc:
            _state["loaded"] = False
            _state["error"] = exc
            warnings.warn(
                f"exlsp CUDA kernels unavailable, using the torch reference ops: {exc}", stacklevel=3
            )
    return bool(_state["loaded"])


def op_table() -> dict[str, Callable]:
    """Op name -> CUDA implementation, for the ops whose kernels are loaded ({} when none are)."""
    if not ensure_loaded():
        return {}
    return {
        "rms_norm": rms_norm,
        "apply_rotary": apply_rotary,
        "write_kv": write_kv,
        "paged_attention": paged_attention,
        "quant_linear": quant_linear,
        "silu_and_mul": silu_and_mul,
        "quant_linear_silu_mul": quant_linear_silu_mul,
        "quant_qkv_rotary_kv": quant_qkv_rotary_kv,
        "quant_linear_add_norm": quant_linear_add_norm,
        "prepare_quant_weight": prepare_quant_weight,
        "argmax": argmax,
        "quant_embedding": quant_embedding,
    }


def rms_norm(x, weight, eps, residual=None, out_perm=None):
    hidden = x.shape[-1]
    others = (weight,) if residual is None else (weight, residual)
    if not is_model_dtype(x, *others) or hidden % 8 or hidden > 8192:
        return reference.rms_norm(x, weight, eps, residual, out_perm)
    x = x.contiguous()
    out = torch.empty_like(x)
    if residual is None:
        torch.ops.exlsp.rms_norm(x, None, weight, eps, out, None, out_perm)
        return out, x
    new_residual = torch.empty_like(x)
    torch.ops.exlsp.rms_norm(x, residual.contiguous(), weight, eps, out, new_residual, out_perm)
    return out, new_residual


def apply_rotary(q, k, positions, cos_sin_cache):
    if not (is_model_dtype(q, k) and heads_contiguous(q) and heads_contiguous(k) and q.shape[2] % 2 == 0):
        return reference.apply_rotary(q, k, positions, cos_sin_cache)
    q_out, k_out = (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
    )
    torch.ops.exlsp.rotary(q, k, positions.long(), cos_sin_cache, q_out, k_out)
    return q_out, k_out


def write_kv(k, v, kv_cache_layer, slot_mapping):
    if not (is_model_dtype(k, v, kv_cache_layer) and heads_contiguous(k) and heads_contiguous(v)):
        return reference.write_kv(k, v, kv_cache_layer, slot_mapping)
    torch.ops.exlsp.write_kv(k, v, kv_cache_layer, slot_mapping.long().contiguous())


def silu_and_mul(x):
    if not is_model_dtype(x) or x.shape[-1] % 16:
        return reference.silu_and_mul(x)
    x = x.contiguous()
    out = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)
    torch.ops.exlsp.silu_and_mul(x, out)
    return out


def argmax(logits):
    """One kernel per call (csrc/vocab_rows.cu); torch's reduction took ~28 us over 128256 logits."""
    if logits.dtype != torch.float32 or logits.dim() != 2 or logits.stride(-1) != 1 or logits.shape[-1] == 0:
        return reference.argmax(logits)
    out = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    torch.ops.exlsp.argmax_rows(logits, out)
    return out


def quant_embedding(ids, codes, scales, offsets, bits):
    hidden = codes.shape[-1] * 8 // bits
    groups = scales.shape[-1]
    if (
        ids.dtype not in (torch.int32, torch.int64)
        or not is_model_dtype(scales)
        or hidden % groups
        or (hidden // groups) % 8
        or codes.data_ptr() % 16
        or (bits == 4 and offsets is None)
    ):
        return reference.quant_embedding(ids, codes, scales, offsets, bits)
    out = torch.empty((*ids.shape, hidden), dtype=scales.dtype, device=scales.device)
    torch.ops.exlsp.quant_embedding(
        ids.contiguous(), codes.contiguous(), scales.contiguous(), offsets, bits, out
    )
    return out
