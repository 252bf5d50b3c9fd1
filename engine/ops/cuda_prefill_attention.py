"""Prefill attention on a GPU (engine/ops/cuda_attention.py sends every call that is not a decode
step here): each sequence's K/V gathered from the paged cache and handed to one of torch's fused
attention kernels, causal aligned to the bottom right (new tokens see every cached token and
themselves).

Which kernel (set_prefill_attention): torch's flash kernel (FlashAttention-2, called directly), or
cuDNN's fused attention, whose Hopper kernels use wgmma where flash-2 cannot. A 2k prefill spends ~10%
of its time in flash attention at ~215 TFLOP/s, an 8k one about a third (bench/NOTES.md 80). cuDNN's
causal mask is aligned to the top left, so new tokens after a cached prefix are computed in two
parts whose masks cannot disagree: the prefix in full and the new tokens' own keys causally (a
square), merged by their log-sum-exps (merge_attention_parts). Where cuDNN refuses a call (a card or
build without it), flash serves it from then on, with one warning.

cuDNN builds an execution plan for each shape it sees: a new shape's first call took 45.6 ms (median,
up to 657) on an H200 against 0.12 ms warm (bench/probes/attention_backends.py, bench/NOTES.md 81k),
and an editor's prompts come in every length. So cuDNN takes only shapes from a bounded set that
recurs: CUDNN_MIN_QUERIES new tokens or more (where the attention is worth the most), and as many
new and cached tokens as whole multiples of CUDNN_SHAPE_MULTIPLE. The engine's whole prefill chunks
(2048 new tokens after 0, 2048, 4096, ... cached) are such shapes, each planned once per process;
a prompt's last, partial chunk, a cold prompt of another length and a suffix after a cached prefix
of any length stay on flash, which has no per-shape cost.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from engine.attention_metadata import AttentionMetadata
from engine.ops import reference

KERNELS = ("flash", "cudnn")
CUDNN_MIN_QUERIES = 512
CUDNN_SHAPE_MULTIPLE = 256
_kernel = "cudnn"
_cudnn_ok = True  # False once cuDNN refused a call here
_flash_direct = True  # False once the direct flash call failed here: use the generic SDPA path
last_kernel: str | None = None  # the kernel of the last causal call (for tests and benchmarks)


def set_prefill_attention(kernel: str) -> None:
    """The kernel for a prefill's causal attention: "cudnn" (the default: flash for the shapes cuDNN
    does not take, cudnn_takes, and where cuDNN cannot) or "flash" (side-by-side benchmarks)."""
    global _kernel
    if kernel not in KERNELS:
        raise ValueError(f"prefill attention kernel must be one of {KERNELS}, got {kernel!r}")
    _kernel = kernel


def describe() -> str:
    """Which kernel serves a prefill's attention in this process, for `exlsp doctor`."""
    if _kernel == "flash":
        return "torch's flash kernel (chosen by set_prefill_attention)"
    if not _cudnn_ok or not torch.backends.cudnn.is_available():
        return "torch's flash kernel (cuDNN is missing or refused a call)"
    return (
        f"cuDNN {torch.backends.cudnn.version()} for {CUDNN_MIN_QUERIES}+ new tokens in whole multiples "
        f"of {CUDNN_SHAPE_MULTIPLE} (the engine's prefill chunks), torch's flash kernel otherwise"
    )


def merge_attention_parts(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> torch.Tensor:
    """Attention over two disjoint sets of keys from each set's output (B, H, T, D) and log-sum-exp
    of its scaled scores (B, H, T, natural log): the softmax over the union weighs part a by its share
    of the total exp-sum, exp(lse_a) / (exp(lse_a) + exp(lse_b)) = sigmoid(lse_a - lse_b) (0 for a
    part that saw no key: lse -inf). One lerp in the outputs' dtype (computed in float32 inside):
    no float32 copies of the outputs, which at 2048 new tokens had raised the serving peak by 22 MB
    (bench/NOTES.md 81g)."""
    wide = torch.promote_types(lse_a.dtype, torch.float32)
    share_a = torch.sigmoid(lse_a.to(wide) - lse_b.to(wide)).unsqueeze(-1).to(out_a.dtype)
    return torch.lerp(out_b, out_a, share_a)


def _cudnn(qh, kh, vh, scale: float, causal: bool, with_lse: bool):
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        qh, kh, vh, None, with_lse, 0.0, causal, False, scale=scale
    )[:2]
    return out, (lse.reshape(qh.shape[:3]) if with_lse else None)


def _causal_cudnn(qh, kh, vh, scale: float) -> torch.Tensor:
    tq, tk = qh.shape[2], kh.shape[2]
    if tq == tk:
        return _cudnn(qh, kh, vh, scale, causal=True, with_lse=False)[0]
    prefix = tk - tq
    out_a, lse_a = _cudnn(qh, kh[:, :, :prefix], vh[:, :, :prefix], scale, causal=False, with_lse=True)
    out_b, lse_b = _cudnn(qh, kh[:, :, prefix:], vh[:, :, prefix:], scale, causal=True, with_lse=True)
    return merge_attention_parts(out_a, lse_a, out_b, lse_b)


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


def cudnn_takes(new_tokens: int, keys: int) -> bool:
    """Whether a call of `new_tokens` queries over `keys` keys (its cached prefix and itself) is a
    shape cuDNN serves: long enough, and of the bounded set whose plans are reused."""
    whole = new_tokens % CUDNN_SHAPE_MULTIPLE == 0 and keys % CUDNN_SHAPE_MULTIPLE == 0
    return new_tokens >= CUDNN_MIN_QUERIES and whole


def causal_attention(qh, kh, vh, scale: float) -> torch.Tensor:
    """(1, Hq, Tq, D) queries, the last Tq of (1, Hkv, Tk, D) keys and values -> (1, Hq, Tq, D)."""
    global _cudnn_ok, last_kernel
    if _kernel == "cudnn" and _cudnn_ok and cudnn_takes(qh.shape[2], kh.shape[2]):
        try:
            out = _causal_cudnn(qh, kh, vh, scale)
            last_kernel = "cudnn"
            return out
        except torch.OutOfMemoryError:
            raise  # the request's failure (the engine answers it), not cuDNN's refusal
        except RuntimeError as exc:
            _cudnn_ok = False
            warnings.warn(
                f"exlsp: cuDNN attention refused a prefill ({exc!s:.200}); flash attention serves them now",
                RuntimeWarning,
                stacklevel=2,
            )
    last_kernel = "flash"
    return _causal_flash(qh, kh, vh, scale)


def warm_cudnn_plans(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    chunk_tokens: int,
    max_tokens: int,
    device: torch.device | str = "cuda",
) -> int:
    """Has cuDNN plan, at load, the shapes of the engine's whole prefill chunks: `chunk_tokens` new
    tokens after 0, chunk_tokens, 2 * chunk_tokens... cached, up to `max_tokens` keys, laid out as
    prefill_attention lays them out (cuDNN keys its plans by strides too). Else the first long
    prompt after a start pays ~45 ms per chunk index (bench/NOTES.md 81k). Returns the shapes
    warmed: 0 where cuDNN would not take the chunks. Out of GPU memory (a cache sized to what was
    free) stops the warm-up with a warning, not the load: the shapes left are planned on first use."""
    if _kernel != "cudnn" or not _cudnn_ok or not cudnn_takes(chunk_tokens, chunk_tokens):
        return 0
    warmed = 0
    try:
        q = torch.zeros((chunk_tokens, num_heads, head_dim), dtype=dtype, device=device)
        kv = torch.zeros((2, max_tokens, num_kv_heads, head_dim), dtype=dtype, device=device)
        qh = q.transpose(0, 1).unsqueeze(0)
        for keys in range(chunk_tokens, max_tokens + 1, chunk_tokens):
            kh, vh = (kv[i, :keys].transpose(0, 1).unsqueeze(0) for i in (0, 1))
            causal_attention(qh, kh, vh, head_dim**-0.5)
            warmed += last_kernel == "cudnn"
    except torch.OutOfMemoryError:
        warnings.warn(
            f"exlsp: out of GPU memory while cuDNN planned the prefill chunks at load ({warmed} of "
            f"{max_tokens // chunk_tokens} planned); the rest are planned on their first prompt",
            RuntimeWarning,
            stacklevel=2,
        )
    return warmed


_last_host_lists: tuple[AttentionMetadata, list[int], list[int]] | None = None


def _host_lists(attn: AttentionMetadata) -> tuple[list[int], list[int]]:
    """query_start_loc and seq_lens on the host, read once per forward pass: every layer gets the
    same metadata object, and a device->host copy per layer would stall the CPU at every layer."""
    global _last_host_lists
    if _last_host_lists is None or _last_host_lists[0] is not attn:
        _last_host_lists = (attn, attn.query_start_loc.tolist(), attn.seq_lens.tolist())
    return _last_host_lists[1], _last_host_lists[2]


def prefill_attention(q, kv_cache_layer, attn: AttentionMetadata, scale, sliding_window):
    """q (T, Hq, D), the new tokens of every sequence -> (T, Hq, D)."""
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
            o = causal_attention(qh, kh, vh, scale)  # (1, Hq, Tq, D)
        out[start:end] = o[0].transpose(0, 1)
    return out
