"""The ops seam: every op the model calls, dispatched to a CUDA kernel or the pure-torch reference.

Public ops (signatures and layouts documented in engine/ops/reference.py):
    rms_norm(x, weight, eps, residual=None, out_perm=None) -> (out, new_residual)
    apply_rotary(q (T, Hq, D), k (T, Hkv, D), positions (T,), cos_sin_cache (max_pos, D)) -> (q, k)
    write_kv(k (T, Hkv, D), v (T, Hkv, D), kv_cache_layer (2, num_blocks, bs, Hkv, D), slot_mapping (T,))
    paged_attention(q (T, Hq, D), kv_cache_layer, attn, scale, sliding_window, out_order=None) -> (T, Hq, D)
    quant_linear(x (M, K), w: PackedWeight, read_next=(), row_norm=None) -> (M, N)
    silu_and_mul(x (M, 2I)) -> (M, I)
    quant_linear_silu_mul(x (M, K), w, read_next=(), row_norm=None) -> (M, I) or None
                        (fused: gate|up GEMV + SiLU * up)
    quant_qkv_rotary_kv(x, w, positions, cos_sin_cache, kv_cache_layer, slot_mapping, num_heads,
                        head_dim, read_next=(), row_norm=None) -> q (T, Hq, D) or None
                        (fused: q|k|v GEMV + rotary + K/V write)
    quant_linear_add_norm(x (M, K), w, residual (M, N), norm_weight (N,), norm_index=None, read_next=())
                        -> (h * norm_weight, sumsq_tiles (M, N / 32), h) or None
                        (fused: o / down GEMV + the RMSNorm's add, weight and sums of squares)
    prepare_quant_weight(w: PackedWeight) -> PackedWeight   (once at load, after moving to the device)
    argmax(logits (N, V) float32) -> (N,) int64   (torch.argmax's choice: the first maximum, NaN highest)
    quant_embedding(ids (...,), codes, scales, offsets, bits) -> (..., H)   (rows of a QuantEmbedding)
    backend_report() -> {op name: "cuda" | "reference"}
    norms_in_gemvs(x) -> bool   (whether the GEMVs may take the RMSNorms' work for tensors like x)

row_norm (reference.RowNorm, the GEMV ops): x holds rows of h * weight from quant_linear_add_norm, whose
RMSNorm row scale rsqrt(mean(h^2) + eps) the op applies (a kernel: to each row of its product).

read_next (the GEMV ops): the tensors the model reads after this weight, which a kernel may ask L2 to
fetch once its own loads are issued; a hint only, no result depends on it (engine/layers/linear.py).

Fused ops return None where no kernel serves the call (the reference always does); the caller then
composes the unfused ops, so the two paths compute the same thing. set_fused_ops(False) turns them
off (side-by-side benchmarks).

Contract with engine/ops/cuda.py (owned by the kernel work; may be absent):
    cuda.op_table() -> dict[str, Callable]: op name -> a function with the reference's signature, for
    the ops whose kernel is built and registered (torch.ops.exlsp.*). It may build or load the extension
    on its first call and returns {} (after one warning) when that fails. Called at most once, lazily,
    the first time an op sees a CUDA tensor or backend_report() is asked, so importing this package
    never compiles anything. A CUDA function is used only when the op's first tensor is on CUDA.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from engine.ops import reference

OP_NAMES = (
    "rms_norm",
    "apply_rotary",
    "write_kv",
    "paged_attention",
    "quant_linear",
    "silu_and_mul",
    "quant_linear_silu_mul",
    "quant_qkv_rotary_kv",
    "quant_linear_add_norm",
    "prepare_quant_weight",
    "argmax",
    "quant_embedding",
)
FUSED_OPS = ("quant_linear_silu_mul", "quant_qkv_rotary_kv", "quant_linear_add_norm")

_fused_enabled = True

_cuda_table: dict[str, Callable] | None = None


def _load_cuda_table() -> dict[str, Callable]:
    global _cuda_table
    if _cuda_table is None:
        _cuda_table = {}
        if torch.cuda.is_available():
            try:
                from engine.ops import cuda
            except ImportError:
                pass  # kernels not part of this tree: the reference path is the only path
            else:
                try:
                    _cuda_table = {name: fn for name, fn in cuda.op_table().items() if name in OP_NAMES}
                except Exception as exc:  # a broken build must never take the engine down
                    warnings.warn(f"CUDA ops unavailable, using the torch reference: {exc}", stacklevel=3)
    return _cuda_table


def _impl(name: str, tensor: torch.Tensor) -> Callable:
    if tensor.is_cuda:
        fn = _load_cuda_table().get(name)
        if fn is not None:
            return fn
    return getattr(reference, name)


def backend_report() -> dict[str, str]:
    """Which implementation each op uses for CUDA tensors on this machine (for `exlsp doctor`)."""
    table = _load_cuda_table()
    return {name: ("cuda" if name in table else "reference") for name in OP_NAMES}


def rms_norm(x, weight, eps, residual=None, out_perm=None):
    return _impl("rms_norm", x)(x, weight, eps, residual, out_perm)


def apply_rotary(q, k, positions, cos_sin_cache):
    return _impl("apply_rotary", q)(q, k, positions, cos_sin_cache)


def write_kv(k, v, kv_cache_layer, slot_mapping):
    return _impl("write_kv", k)(k, v, kv_cache_layer, slot_mapping)


def paged_attention(q, kv_cache_layer, attn, scale, sliding_window, out_order=None):
    return _impl("paged_attention", q)(q, kv_cache_layer, attn, scale, sliding_window, out_order)


def quant_linear(x, w, read_next=(), row_norm=None):
    return _impl("quant_linear", x)(x, w, read_next, row_norm)


def silu_and_mul(x):
    return _impl("silu_and_mul", x)(x)


def set_fused_ops(enabled: bool) -> None:
    """Whether the fused ops run (default) or return None so callers compose the unfused ones."""
    global _fused_enabled
    _fused_enabled = enabled


def quant_linear_silu_mul(x, w, read_next=(), row_norm=None):
    if not _fused_enabled:
        return None
    return _impl("quant_linear_silu_mul", x)(x, w, read_next, row_norm)


def quant_qkv_rotary_kv(
    x,
    w,
    positions,
    cos_sin_cache,
    kv_cache_layer,
    slot_mapping,
    num_heads,
    head_dim,
    read_next=(),
    row_norm=None,
):
    if not _fused_enabled:
        return None
    return _impl("quant_qkv_rotary_kv", x)(
        x, w, positions, cos_sin_cache, kv_cache_layer, slot_mapping, num_heads, head_dim, read_next, row_norm
    )


_norms_in_gemvs_enabled = True


def set_norms_in_gemvs(enabled: bool) -> None:
    """Whether the model may leave its RMSNorms to the GEMVs beside them (default) or runs them as
    kernels of their own (side-by-side benchmarks); read when a forward starts."""
    global _norms_in_gemvs_enabled
    _norms_in_gemvs_enabled = enabled


def norms_in_gemvs(x: torch.Tensor) -> bool:
    """Whether a kernel may do the RMSNorms' work in the GEMVs beside them for tensors like x
    (quant_linear_add_norm served on x's device): the model then hands each layer the next norm
    (engine/models/base.py). Elsewhere the layers run module by module, as written."""
    return (
        _fused_enabled
        and _norms_in_gemvs_enabled
        and x.is_cuda
        and "quant_linear_add_norm" in _load_cuda_table()
    )


def quant_linear_add_norm(x, w, residual, norm_weight, norm_index=None, read_next=()):
    if not _fused_enabled:
        return None
    return _impl("quant_linear_add_norm", x)(x, w, residual, norm_weight, norm_index, read_next)


def prepare_quant_weight(w):
    return _impl("prepare_quant_weight", w.qweight)(w)


def argmax(logits):
    return _impl("argmax", logits)(logits)


def quant_embedding(ids, codes, scales, offsets, bits):
    return _impl("quant_embedding", ids)(ids, codes, scales, offsets, bits)
