"""The CUDA side of the quantized linear ops: the batch-1..48 GEMVs on tensor or CUDA cores with their
fused epilogues, and the prefill's dequantize + cuBLAS GEMM. Wrappers allocate the outputs and fall
back to engine/ops/reference.py for inputs no kernel covers; engine/ops/cuda.py loads the kernels and
lists these ops in its op_table.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from engine.ops import reference
from engine.ops.cuda_common import MODEL_DTYPES, counters_of, is_model_dtype, num_sms, split_counters
from engine.quant.layout import STRIP_COLUMNS, PackedWeight, from_column_strips, to_column_strips

GEMV_MAX_ROWS = 16  # CUDA-core GEMV (one weight pass per 8 rows) up to here, then dequantize + GEMM
TC_GEMV_MAX_ROWS = 48  # tensor-core GEMV (one weight pass per 16 rows) up to here


MAX_GEMV_SPLITS = 8
# Cost model, in chunks of 32 k per warp: each wave of blocks costs its chunks per warp (at least
# GEMV_MIN_ROUND: a warp with fewer still waits a memory round trip) plus GEMV_BLOCK_COST (prologue,
# reduction, epilogue); a split adds GEMV_SPLIT_COST (partial sums through L2, the last block's
# pass). Fitted on an H100 sweep (bench/bench_gemv_sweep.py, bench/NOTES.md 27): with the lean K
# loop a split pays only for a long K (14336 x 4096: 3 splits, +8%) or a grid far below one wave
# (4096 x 1024: 4 splits, +5%); at K = 4096 and 128-192 tiles one slice won by 10-17%.
GEMV_MIN_ROUND = 4
GEMV_BLOCK_COST = 8
GEMV_SPLIT_COST = 10


@functools.cache  # pure, and asked on every eager GEMV call: a few shapes per model
def gemv_splits(in_features: int, out_features: int, rows: int, num_sms: int) -> int:
    """K slices per 32 output columns for the tensor-core GEMV. Cost: waves of blocks x the cost of one
    block (a ragged last wave costs a whole one), plus a fixed cost for splitting at all."""
    tiles, chunks = out_features // 32, in_features // 32
    slots = num_sms * (3 if rows <= 8 else 2)  # 8-warp blocks resident per SM (80 / 128 registers)
    best, best_cost = 1, math.inf
    for splits in range(1, MAX_GEMV_SPLITS + 1):
        per_warp = math.ceil(math.ceil(chunks / splits) / 8)
        if splits > 1 and per_warp < 2:
            break
        cost = math.ceil(tiles * splits / slots) * (max(per_warp, GEMV_MIN_ROUND) + GEMV_BLOCK_COST)
        cost += GEMV_SPLIT_COST if splits > 1 else 0
        if cost < best_cost:
            best, best_cost = splits, cost
    return best


@dataclass
class PreparedWeight(PackedWeight):
    """A PackedWeight as the kernels read it, with what they need to know about its values, found once
    at load (the check reads the zeros back: a device sync that must not happen per call). Where the
    tensor-core GEMV serves it (`strips`), qweight is in column strips (engine/quant/layout.py)."""

    integer_zeros: bool = False  # the tensor-core GEMV needs (q - zero) exact in fp16/bf16
    perm32: torch.Tensor | None = None  # perm as int32, for the gather kernel
    strips: bool = False  # qweight is (N / 16, K / 8, 16): the tensor-core GEMV's layout

    def qweight_shape(self) -> tuple[int, ...]:
        if not self.strips:
            return super().qweight_shape()
        return (self.out_features // STRIP_COLUMNS, self.in_features * self.bits // 32, STRIP_COLUMNS)

    def canonical(self) -> PackedWeight:
        """The same weight with qweight in the canonical layout (a copy), for a path that reads it."""
        qweight = from_column_strips(self.qweight) if self.strips else self.qweight
        return PackedWeight(
            self.bits, self.group_size, self.in_features, self.out_features,
            qweight, self.scales, self.zeros, self.perm, self.bias,
        )  # fmt: skip


def _tc_shape_ok(w: PackedWeight, integer_zeros: bool) -> bool:
    """Whether the tensor-core GEMV can read this weight (csrc quant_gemv_tc_supports)."""
    k, n = w.in_features, w.out_features
    return (
        integer_zeros
        and w.bits == 4
        and k % 128 == 0  # whole batches of 4 chunks of 32
        and n % 32 == 0
        and w.group_size % 32 == 0
        and k % w.group_size == 0
    )


def prepare_quant_weight(w: PackedWeight) -> PackedWeight:
    """Contiguous tensors (the kernels read 16-byte vectors), the integer-zeros flag, and for a weight
    the tensor-core GEMV serves, qweight in column strips. The strips are a new tensor: the caller
    (QuantLinear.packed) drops the canonical one, so the device keeps one copy of the weight."""

    def c(t):
        return None if t is None else t.contiguous()

    integer_zeros = bool(torch.equal(w.zeros, w.zeros.round())) and bool((w.zeros.abs() <= 256).all())
    split_counters(w.qweight.device)
    perm32 = None if w.perm is None else w.perm.to(torch.int32).contiguous()
    strips = _tc_shape_ok(w, integer_zeros) and w.qweight.is_cuda
    qweight = to_column_strips(w.qweight) if strips else c(w.qweight)
    return PreparedWeight(
        w.bits, w.group_size, w.in_features, w.out_features,
        qweight, c(w.scales), c(w.zeros), c(w.perm), c(w.bias), integer_zeros, perm32, strips,
    )  # fmt: skip


def _gemv_ok(x: torch.Tensor, w: PackedWeight) -> bool:
    return (
        x.dtype in MODEL_DTYPES
        and w.scales.dtype == x.dtype
        and w.zeros.dtype == x.dtype
        and (w.bias is None or w.bias.dtype == x.dtype)
        and w.out_features % 4 == 0
        and w.in_features % 8 == 0
        and w.group_size % (32 // w.bits) == 0
        and w.qweight.is_cuda
    )


def _tc_ok(w: PackedWeight) -> bool:
    return getattr(w, "strips", False)  # prepared for the tensor-core GEMV (_tc_shape_ok)


def _tc_split_args(x: torch.Tensor, w: PackedWeight) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """(partials, counters, splits) of a tensor-core GEMV call: K slices per gemv_splits, with their
    fp32 scratch; one slice (no scratch) where the counters were not made at load."""
    num_rows = x.shape[0]
    counters = counters_of(x.device)
    if counters is None or w.out_features // 32 > counters.numel():
        return None, None, 1
    splits = gemv_splits(w.in_features, w.out_features, num_rows, num_sms(x.device))
    if splits == 1:
        return None, None, 1
    partials = torch.empty((splits, min(num_rows, 16), w.out_features), dtype=torch.float32, device=x.device)
    return partials, counters, splits


# What a tensor-core GEMV asks L2 to fetch of the weight read after it, once its own loads are done
# (csrc/l2_prefetch.cuh): DRAM idles in kernel tails, the attention and the norms. H100, Llama-3-8B
# shape, decode at 2k: off 384, 4 MB 399, 6 MB 399, 8 MB 398, 12 MB 389 tok/s; the whole o weight
# (9 MB) from q|k|v, across the attention: no better at 2k, worse at 8k (bench/NOTES.md 41, 42).
# More is evicted before its reader comes.
L2_PREFETCH_BYTES = 4 << 20


def set_l2_prefetch_bytes(limit: int) -> None:
    """Bytes of the next weight a GEMV prefetches (0: none), for side-by-side benchmarks."""
    global L2_PREFETCH_BYTES
    L2_PREFETCH_BYTES = limit


def _prefetch_args(x: torch.Tensor, read_next: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], int]:
    """(l2_prefetch, l2_prefetch_bytes) of a tensor-core GEMV call: the next weight's tensors the
    kernel can address (contiguous, on x's device), up to the op's 4."""
    if not L2_PREFETCH_BYTES:
        return [], 0
    tensors = [t for t in read_next if t.device == x.device and t.is_contiguous()][:4]
    return tensors, L2_PREFETCH_BYTES


GATHER_MAX_ROWS = TC_GEMV_MAX_ROWS  # the gather kernel up to here (a GEMV's rows), index_select above


def permuted_input(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """x[:, perm] for an act-order weight (x itself otherwise), contiguous. For a GEMV's few rows by
    the gather kernel, which keeps the step's chain of early-starting (PDL) kernels: torch's
    index_select there cost ~8 us per linear in a decode step (bench/NOTES.md 46)."""
    if w.perm is None:
        return x.contiguous()
    perm32 = getattr(w, "perm32", None)
    if perm32 is None or x.shape[0] > GATHER_MAX_ROWS or x.shape[-1] % 8 or not is_model_dtype(x):
        return x.index_select(-1, w.perm).contiguous()
    x = x.contiguous()
    out = torch.empty_like(x)
    torch.ops.exlsp.gather_columns(x, perm32, out)
    return out


def _fused_gemv_input(x: torch.Tensor, w: PackedWeight) -> torch.Tensor | None:
    """x ready for a tensor-core GEMV with a fused epilogue (act-order applied), or None where that
    kernel does not serve the call (too many rows for a GEMV, a weight it cannot read)."""
    if not (_gemv_ok(x, w) and x.shape[0] <= TC_GEMV_MAX_ROWS and _tc_ok(w)):
        return None
    return permuted_input(x, w)


ROW_NORM_MAX_K = 8192  # csrc/kernels.h kRowNormMaxK: the tile sums are staged in shared memory


def _row_norm_args(x: torch.Tensor, row_norm: reference.RowNorm | None) -> dict[str, object]:
    """The tensor-core GEMV's row_sumsq / row_eps arguments for a RowNorm (none without one)."""
    if row_norm is None:
        return {}
    return {"row_sumsq": row_norm.sumsq_tiles, "row_eps": row_norm.eps}


def _row_norm_ok(x: torch.Tensor, row_norm: reference.RowNorm | None) -> bool:
    return row_norm is None or (
        x.shape[-1] <= ROW_NORM_MAX_K
        and row_norm.sumsq_tiles.dtype == torch.float32
        and row_norm.sumsq_tiles.is_contiguous()
        and row_norm.sumsq_tiles.shape == (x.shape[0], x.shape[-1] // 32)
    )


def quant_linear_silu_mul(x, w: PackedWeight, read_next=(), row_norm=None):
    x = _fused_gemv_input(x, w)
    if x is None or not _row_norm_ok(x, row_norm):
        return None
    out = torch.empty((x.shape[0], w.out_features // 2), dtype=x.dtype, device=x.device)
    torch.ops.exlsp.quant_gemv_tc_silu_mul(
        x, w.qweight, w.scales, w.zeros, w.bias, w.group_size, out, *_tc_split_args(x, w),
        *_prefetch_args(x, read_next), **_row_norm_args(x, row_norm),
    )  # fmt: skip
    return out


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
    x = _fused_gemv_input(x, w)
    if (
        x is None
        or not _row_norm_ok(x, row_norm)
        or head_dim % 32
        or not is_model_dtype(x, kv_cache_layer)
        or cos_sin_cache.dtype not in (torch.float32, x.dtype)
    ):
        return None
    q = torch.empty((x.shape[0], num_heads, head_dim), dtype=x.dtype, device=x.device)
    torch.ops.exlsp.quant_gemv_tc_rotary_kv(
        x, w.qweight, w.scales, w.zeros, w.bias, w.group_size, positions.long(), cos_sin_cache,
        kv_cache_layer, slot_mapping.long().contiguous(), q, *_tc_split_args(x, w),
        *_prefetch_args(x, read_next), **_row_norm_args(x, row_norm),
    )  # fmt: skip
    return q


def quant_linear_add_norm(x, w: PackedWeight, residual, norm_weight, norm_index=None, read_next=()):
    x = _fused_gemv_input(x, w)
    n = w.out_features
    if (
        x is None
        or not is_model_dtype(x, residual, norm_weight)
        or residual.shape != (x.shape[0], n)
        or norm_weight.numel() != n
        or (norm_index is not None and (norm_index.dtype != torch.int32 or norm_index.numel() != n))
    ):
        return None
    out = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
    new_residual = torch.empty_like(out)
    sumsq_tiles = torch.empty((x.shape[0], n // 32), dtype=torch.float32, device=x.device)
    torch.ops.exlsp.quant_gemv_tc_add_norm(
        x, w.qweight, w.scales, w.zeros, w.bias, w.group_size, residual.contiguous(), norm_weight.contiguous(),
        norm_index, out, new_residual, sumsq_tiles, *_tc_split_args(x, w), *_prefetch_args(x, read_next),
    )  # fmt: skip
    return out, sumsq_tiles, new_residual


def quant_linear(x, w: PackedWeight, read_next=(), row_norm=None):
    if not _gemv_ok(x, w):
        return reference.quant_linear(x, w.canonical() if _tc_ok(w) else w, read_next, row_norm)
    num_rows = x.shape[0]
    if row_norm is not None and not (
        num_rows <= TC_GEMV_MAX_ROWS and _tc_ok(w) and _row_norm_ok(x, row_norm)
    ):
        x, row_norm = reference.apply_row_norm(x, row_norm), None  # no kernel takes the row scale here
    x = permuted_input(x, w)  # act-order: permute the activation, never the weight
    if num_rows <= TC_GEMV_MAX_ROWS and _tc_ok(w):
        out = torch.empty((num_rows, w.out_features), dtype=x.dtype, device=x.device)
        torch.ops.exlsp.quant_gemv_tc(
            x, w.qweight, w.scales, w.zeros, w.bias, None, w.group_size, out, *_tc_split_args(x, w),
            *_prefetch_args(x, read_next), **_row_norm_args(x, row_norm),
        )  # fmt: skip
        return out
    if num_rows <= GEMV_MAX_ROWS:
        out = torch.empty((num_rows, w.out_features), dtype=x.dtype, device=x.device)
        torch.ops.exlsp.quant_gemv(x, w.qweight, w.scales, w.zeros, w.bias, None, w.bits, w.group_size, out)
        return out
    cols = dequant_slice_columns(w.in_features, w.out_features)
    if cols == w.out_features:
        out = x @ dequantize(w)  # (K, N) scratch, freed after the product
    else:
        out = torch.empty((num_rows, w.out_features), dtype=x.dtype, device=x.device)
        for n0 in range(0, w.out_features, cols):
            n1 = min(n0 + cols, w.out_features)
            torch.matmul(x, dequantize(w, n0, n1), out=out[:, n0:n1])
    if w.bias is not None:
        out += w.bias
    return out


DEQUANT_SCRATCH_ELEMENTS = 1 << 24  # 32 MB of fp16: the prefill GEMM's dequantized weight, at most


def dequant_slice_columns(in_features: int, out_features: int) -> int:
    """Output features dequantized per GEMM of a prefill: all of them when the scratch fits, else
    multiples of 256 (whole tiles for cuBLAS) up to the scratch. The largest linear of an 8B model
    (gate|up, 4096 x 28672) would otherwise need 235 MB of scratch at every prefill chunk; 32 MB
    slices of it still give cuBLAS 4096 columns (512 tiles of 128 x 128 at 2048 rows)."""
    if in_features * out_features <= DEQUANT_SCRATCH_ELEMENTS:
        return out_features
    return max(256, DEQUANT_SCRATCH_ELEMENTS // in_features // 256 * 256)


def dequantize(w: PackedWeight, n0: int = 0, n1: int | None = None) -> torch.Tensor:
    """Output features [n0, n1) of the weight as a dense (K, n1 - n0) tensor in the model dtype."""
    n1 = w.out_features if n1 is None else n1
    weight = torch.empty((w.in_features, n1 - n0), dtype=w.scales.dtype, device=w.qweight.device)
    if _tc_ok(w):  # whole strips: n0 and n1 are multiples of 256 or the ends (N % 32 == 0)
        qweight = w.qweight[n0 // STRIP_COLUMNS : n1 // STRIP_COLUMNS]
    else:
        qweight = w.qweight[:, n0:n1]
    torch.ops.exlsp.dequantize(qweight, w.scales[:, n0:n1], w.zeros[:, n0:n1], w.bits, w.group_size, weight)
    return weight
