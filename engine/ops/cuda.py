"""The CUDA backend of the ops seam: loads torch.ops.exlsp (engine/ops/build.py) and wraps each kernel
in a function with the reference's signature (engine/ops/reference.py).

Wrappers allocate the outputs (the kernels never do) and fall back to the reference for inputs a
kernel does not cover (float32 models, odd shapes, unsupported head sizes), so a CUDA call never
fails where the reference would succeed. `op_table()` is the contract with engine/ops/__init__.py.

Prefill attention is a first version: each sequence's K/V are gathered from the paged cache and
handed to torch's scaled_dot_product_attention (flash / memory-efficient kernels), causal aligned to
the bottom right (new tokens see every cached token and themselves).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.attention_metadata import AttentionMetadata
from engine.ops import reference
from engine.quant.layout import PackedWeight

MODEL_DTYPES = (torch.float16, torch.bfloat16)
GEMV_MAX_ROWS = 16  # CUDA-core GEMV (one weight pass per 8 rows) up to here, then dequantize + GEMM
TC_GEMV_MAX_ROWS = 48  # tensor-core GEMV (one weight pass per 16 rows) up to here
MIN_PARTITION = 128  # decode attention: tokens per partition, small so one sequence fills the GPU...
MAX_PARTITIONS = 256  # ...until a sequence would need more partitions than this
# A short prefill's new tokens as one-token sequences (engine/cuda_graph.py token_level_metadata):
# up to this many consecutive ones that share their blocks are computed by one block from one read
# of each K/V chunk (the multi-query kernel); 1 selects the per-sequence kernel for them too.
QUERIES_PER_BLOCK = 16
MULTI_QUERY_MIN_PARTITION = 256  # tokens per partition of the multi-query kernel (one block each)

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
        "prepare_quant_weight": prepare_quant_weight,
    }


def _is_model_dtype(*tensors: torch.Tensor) -> bool:
    dtype = tensors[0].dtype
    return dtype in MODEL_DTYPES and all(t.dtype == dtype and t.is_cuda for t in tensors)


def _heads_contiguous(t: torch.Tensor) -> bool:
    return t.dim() == 3 and t.stride(2) == 1 and t.stride(1) == t.shape[2]


def rms_norm(x, weight, eps, residual=None):
    hidden = x.shape[-1]
    others = (weight,) if residual is None else (weight, residual)
    if not _is_model_dtype(x, *others) or hidden % 8 or hidden > 8192:
        return reference.rms_norm(x, weight, eps, residual)
    x = x.contiguous()
    out = torch.empty_like(x)
    if residual is None:
        torch.ops.exlsp.rms_norm(x, None, weight, eps, out, None)
        return out, x
    new_residual = torch.empty_like(x)
    torch.ops.exlsp.rms_norm(x, residual.contiguous(), weight, eps, out, new_residual)
    return out, new_residual


def apply_rotary(q, k, positions, cos_sin_cache):
    if not (_is_model_dtype(q, k) and _heads_contiguous(q) and _heads_contiguous(k) and q.shape[2] % 2 == 0):
        return reference.apply_rotary(q, k, positions, cos_sin_cache)
    q_out, k_out = (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
    )
    torch.ops.exlsp.rotary(q, k, positions.long(), cos_sin_cache, q_out, k_out)
    return q_out, k_out


def write_kv(k, v, kv_cache_layer, slot_mapping):
    if not (_is_model_dtype(k, v, kv_cache_layer) and _heads_contiguous(k) and _heads_contiguous(v)):
        return reference.write_kv(k, v, kv_cache_layer, slot_mapping)
    torch.ops.exlsp.write_kv(k, v, kv_cache_layer, slot_mapping.long().contiguous())


def partition_size_for(max_seq_len: int, min_partition: int = MIN_PARTITION) -> int:
    """Smallest of 128, 256, ... tokens per partition that keeps at most MAX_PARTITIONS partitions:
    small partitions spread a single short sequence over many SMs; the cap bounds the merge."""
    size = min_partition
    while size < 512 and -(-max_seq_len // size) > MAX_PARTITIONS:
        size *= 2
    return size


def decode_attention(
    q, kv_cache_layer, block_tables, seq_lens, max_seq_len: int, scale: float, sliding_window,
    queries_per_block: int = 1, partition_size: int | None = None,
):  # fmt: skip
    """Flash-decoding kernel: q (S, Hq, D), one new token per sequence, its K/V already in the cache.
    queries_per_block > 1: the multi-query kernel (consecutive sequences sharing blocks together)."""
    num_seqs, num_heads, head_dim = q.shape
    min_partition = MIN_PARTITION if queries_per_block == 1 else MULTI_QUERY_MIN_PARTITION
    part = partition_size or partition_size_for(max(1, max_seq_len), min_partition)
    num_partitions = -(-max(1, max_seq_len) // part)
    out = torch.empty_like(q)
    tmp_out = torch.empty(
        (num_seqs, num_heads, num_partitions, head_dim), dtype=torch.float32, device=q.device
    )
    tmp_max = torch.empty((num_seqs, num_heads, num_partitions), dtype=torch.float32, device=q.device)
    tmp_sum = torch.empty_like(tmp_max)
    torch.ops.exlsp.paged_attention_decode(
        q, kv_cache_layer, block_tables, seq_lens, float(scale), int(sliding_window or 0), part,
        queries_per_block, out, tmp_out, tmp_max, tmp_sum,
        _merge_counters(q.device, num_seqs * kv_cache_layer.shape[3]) if queries_per_block == 1 else None,
    )  # fmt: skip
    return out


ATTENTION_COUNTERS_OFFSET = 32768  # the upper half of split_counters; the GEMV splits use the lower


def _merge_counters(device: torch.device, count: int) -> torch.Tensor | None:
    """Zeroed counters with which the decode kernel merges its partitions in its last block per
    sequence and KV head (one kernel less per layer); None (a separate merge kernel) where the
    device's counters were not created at load, since they must not be allocated under a graph
    capture, or there are too many rows."""
    counters = _split_counters.get(device)
    if counters is None or count > counters.numel() - ATTENTION_COUNTERS_OFFSET:
        return None
    return counters[ATTENTION_COUNTERS_OFFSET : ATTENTION_COUNTERS_OFFSET + count]


def decode_kernel_covers(head_dim: int, group: int) -> bool:
    """Head sizes and query heads per KV head the decode kernel is compiled for."""
    return head_dim in (64, 128) and 1 <= group <= 8


def _decode_supported(q: torch.Tensor, kv_cache_layer: torch.Tensor) -> bool:
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = kv_cache_layer.shape[3]
    return (
        num_heads % num_kv_heads == 0
        and decode_kernel_covers(head_dim, num_heads // num_kv_heads)
        and q.stride(2) == 1
        and q.stride(1) == head_dim
    )


def paged_attention(q, kv_cache_layer, attn: AttentionMetadata, scale, sliding_window):
    if not _is_model_dtype(q, kv_cache_layer):
        return reference.paged_attention(q, kv_cache_layer, attn, scale, sliding_window)
    if attn.is_decode and q.shape[0] == attn.num_seqs and _decode_supported(q, kv_cache_layer):
        return decode_attention(
            q,
            kv_cache_layer,
            attn.block_tables.int(),
            attn.seq_lens.int(),
            attn.max_seq_len,
            scale,
            sliding_window,
            queries_per_block=QUERIES_PER_BLOCK if attn.prompt_tokens_as_sequences else 1,
        )
    return prefill_attention(q, kv_cache_layer, attn, scale, sliding_window)


_last_host_lists: tuple[AttentionMetadata, list[int], list[int]] | None = None


def _host_lists(attn: AttentionMetadata) -> tuple[list[int], list[int]]:
    """query_start_loc and seq_lens on the host, read once per forward pass: every layer gets the
    same metadata object, and a device->host copy per layer would stall the CPU at every layer."""
    global _last_host_lists
    if _last_host_lists is None or _last_host_lists[0] is not attn:
        _last_host_lists = (attn, attn.query_start_loc.tolist(), attn.seq_lens.tolist())
    return _last_host_lists[1], _last_host_lists[2]


_flash_direct = True  # False once the direct flash call failed here: use the generic SDPA path


def _causal_flash(qh, kh, vh, scale: float) -> torch.Tensor:
    """Flash attention called directly: its causal mask is aligned to the bottom right (the new
    tokens come last) and it takes fewer query than key heads (GQA), so no bias object, no head
    expansion and none of the SDPA dispatcher's Python checks per layer."""
    global _flash_direct
    if _flash_direct:
        try:
            return torch.ops.aten._scaled_dot_product_flash_attention(
                qh, kh, vh, 0.0, True, False, scale=scale
            )[0]
        except RuntimeError:
            _flash_direct = False
    from torch.nn.attention.bias import causal_lower_right

    tq, tk = qh.shape[2], kh.shape[2]
    mask = None if tq == tk else causal_lower_right(tq, tk)
    return F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
    )


def prefill_attention(q, kv_cache_layer, attn: AttentionMetadata, scale, sliding_window):
    """Gather each sequence's K/V and run torch's fused attention (a first version, see the header)."""
    out = torch.empty_like(q)
    query_start_loc, seq_lens = _host_lists(attn)
    block_size = kv_cache_layer.shape[2]
    for i, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[i], query_start_loc[i + 1]
        num_new = end - start
        if num_new == 0:
            continue
        blocks = attn.block_tables[i, : -(-seq_len // block_size)]
        kv = kv_cache_layer.index_select(1, blocks).flatten(1, 2)[:, :seq_len]  # (2, L, Hkv, D)
        qh = q[start:end].transpose(0, 1).unsqueeze(0)  # (1, Hq, Tq, D)
        kh = kv[0].transpose(0, 1).unsqueeze(0)  # (1, Hkv, L, D)
        vh = kv[1].transpose(0, 1).unsqueeze(0)
        if sliding_window is not None and sliding_window < seq_len:
            mask = reference.causal_mask(num_new, seq_len, sliding_window, q.device)
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=True)
        else:
            o = _causal_flash(qh, kh, vh, scale)  # (1, Hq, Tq, D)
        out[start:end] = o[0].transpose(0, 1)
    return out


_split_counters: dict[torch.device, torch.Tensor] = {}
_num_sms: dict[torch.device, int] = {}
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


def split_counters(device: torch.device) -> torch.Tensor:
    """The zeroed per-tile counters the split GEMV uses (it leaves them zero). Created at load, never
    inside a CUDA graph capture, one per device; GEMVs on one stream run one after the other."""
    if device not in _split_counters:
        _split_counters[device] = torch.zeros(65536, dtype=torch.int32, device=device)
        _num_sms[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _split_counters[device]


@dataclass
class PreparedWeight(PackedWeight):
    """The canonical PackedWeight plus what the kernels need to know about its values, found once at
    load (the check reads the zeros back: a device sync that must not happen per call)."""

    integer_zeros: bool = False  # the tensor-core GEMV needs (q - zero) exact in fp16/bf16


def prepare_quant_weight(w: PackedWeight) -> PackedWeight:
    """Contiguous tensors (the kernels read 16-byte vectors) and the integer-zeros flag; the layout
    stays canonical, so no second copy of the weight exists."""

    def c(t):
        return None if t is None else t.contiguous()

    integer_zeros = bool(torch.equal(w.zeros, w.zeros.round())) and bool((w.zeros.abs() <= 256).all())
    split_counters(w.qweight.device)
    return PreparedWeight(
        w.bits, w.group_size, w.in_features, w.out_features,
        c(w.qweight), c(w.scales), c(w.zeros), c(w.perm), c(w.bias), integer_zeros,
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
    k, n = w.in_features, w.out_features
    return (
        getattr(w, "integer_zeros", False)
        and w.bits == 4
        and k % 128 == 0  # whole batches of 4 chunks of 32
        and n % 32 == 0
        and w.group_size % 32 == 0
        and k % w.group_size == 0
    )


def _tc_split_args(x: torch.Tensor, w: PackedWeight) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """(partials, counters, splits) of a tensor-core GEMV call: K slices per gemv_splits, with their
    fp32 scratch; one slice (no scratch) where the counters were not made at load."""
    num_rows = x.shape[0]
    counters = _split_counters.get(x.device)
    if counters is None or w.out_features // 32 > counters.numel():
        return None, None, 1
    splits = gemv_splits(w.in_features, w.out_features, num_rows, _num_sms[x.device])
    if splits == 1:
        return None, None, 1
    partials = torch.empty((splits, min(num_rows, 16), w.out_features), dtype=torch.float32, device=x.device)
    return partials, counters, splits


# What a tensor-core GEMV asks L2 to fetch of the weight read after it, once its own loads are done
# (csrc/l2_prefetch.cuh): DRAM idles in kernel tails, the attention and the norms. H100, Llama-3-8B
# shape, decode at 2k: off 384, 4 MB 399, 8 MB 398, 12 MB 389 tok/s (bench/NOTES.md 41): more is
# evicted before its reader comes.
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


def _fused_gemv_input(x: torch.Tensor, w: PackedWeight) -> torch.Tensor | None:
    """x ready for a tensor-core GEMV with a fused epilogue (act-order applied), or None where that
    kernel does not serve the call (too many rows for a GEMV, a weight it cannot read)."""
    if not (_gemv_ok(x, w) and x.shape[0] <= TC_GEMV_MAX_ROWS and _tc_ok(w)):
        return None
    if w.perm is not None:
        x = x.index_select(-1, w.perm)
    return x.contiguous()


def quant_linear_silu_mul(x, w: PackedWeight, read_next=()):
    x = _fused_gemv_input(x, w)
    if x is None:
        return None
    out = torch.empty((x.shape[0], w.out_features // 2), dtype=x.dtype, device=x.device)
    torch.ops.exlsp.quant_gemv_tc_silu_mul(
        x, w.qweight, w.scales, w.zeros, w.bias, w.group_size, out, *_tc_split_args(x, w),
        *_prefetch_args(x, read_next),
    )  # fmt: skip
    return out


def quant_qkv_rotary_kv(
    x, w, positions, cos_sin_cache, kv_cache_layer, slot_mapping, num_heads, head_dim, read_next=()
):
    x = _fused_gemv_input(x, w)
    if (
        x is None
        or head_dim % 32
        or not _is_model_dtype(x, kv_cache_layer)
        or cos_sin_cache.dtype not in (torch.float32, x.dtype)
    ):
        return None
    q = torch.empty((x.shape[0], num_heads, head_dim), dtype=x.dtype, device=x.device)
    torch.ops.exlsp.quant_gemv_tc_rotary_kv(
        x, w.qweight, w.scales, w.zeros, w.bias, w.group_size, positions.long(), cos_sin_cache,
        kv_cache_layer, slot_mapping.long().contiguous(), q, *_tc_split_args(x, w),
        *_prefetch_args(x, read_next),
    )  # fmt: skip
    return q


def quant_linear(x, w: PackedWeight, read_next=()):
    if not _gemv_ok(x, w):
        return reference.quant_linear(x, w)
    if w.perm is not None:
        x = x.index_select(-1, w.perm)  # act-order: permute the activation, never the weight
    x = x.contiguous()
    num_rows = x.shape[0]
    if num_rows <= TC_GEMV_MAX_ROWS and _tc_ok(w):
        out = torch.empty((num_rows, w.out_features), dtype=x.dtype, device=x.device)
        torch.ops.exlsp.quant_gemv_tc(
            x, w.qweight, w.scales, w.zeros, w.bias, None, w.group_size, out, *_tc_split_args(x, w),
            *_prefetch_args(x, read_next),
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
    torch.ops.exlsp.dequantize(
        w.qweight[:, n0:n1], w.scales[:, n0:n1], w.zeros[:, n0:n1], w.bits, w.group_size, weight
    )
    return weight


def silu_and_mul(x):
    if not _is_model_dtype(x) or x.shape[-1] % 16:
        return reference.silu_and_mul(x)
    x = x.contiguous()
    out = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)
    torch.ops.exlsp.silu_and_mul(x, out)
    return out
