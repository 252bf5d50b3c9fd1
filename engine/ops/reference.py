"""Pure-torch reference of every op the model calls: the CPU path and the oracle for the CUDA kernels.

Each function here has the exact signature of its public face in engine/ops/__init__.py. Clarity
beats speed: per-sequence Python loops and float32 math wherever precision could differ. One
exception, because the CPU path runs here: a decode step attends for all sequences in one call
(decode_attention), since a per-sequence loop cost more than the attention itself at batch 4.

Layouts:
  q (T, Hq, D), k and v (T, Hkv, D): new tokens of all sequences packed along T (no padding)
  kv_cache_layer (2, num_blocks, block_size, Hkv, D): [0] is K, [1] is V; flat slot = block * bs + offset
  cos_sin_cache (max_positions, D) float32: [:, :D/2] = cos, [:, D/2:] = sin (neox half-split rotation)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from engine.attention_metadata import AttentionMetadata
from engine.quant.layout import PackedWeight, dequantize, quant_linear_reference

QUERY_CHUNK_TOKENS = 256  # paged_attention: queries per score matrix


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    out_perm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, new_residual) with new_residual = x + residual (or x) and out = rmsnorm(new_residual) * weight.

    The residual add happens in the model dtype (as transformers does); the normalization in float32,
    cast back before the weight multiply. out_perm (H,) int32: out is written in that order,
    out[:, j] = rmsnorm(...)[:, out_perm[j]] (the act-order permutation of the linear it feeds,
    engine/models/act_order.py); new_residual keeps the model's order.
    """
    if residual is not None:
        x = x + residual
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    out = weight * normed.to(x.dtype)
    return (out if out_perm is None else out.index_select(-1, out_perm)), x


class RowNorm(NamedTuple):
    """The row scale of an RMSNorm left to the linear after it (quant_linear_add_norm): that linear's
    input rows are h * weight, and sumsq_tiles (M, K / 32) float32 holds each row's sums of h^2 per
    32-column tile. Row m of the product is scaled by rsqrt(sum(sumsq_tiles[m]) / K + eps)."""

    sumsq_tiles: torch.Tensor
    eps: float


def apply_row_norm(rows: torch.Tensor, row_norm: RowNorm) -> torch.Tensor:
    """rows (M, K) of h * weight scaled by their norm's rsqrt(mean(h^2) + eps), in the rows' dtype."""
    mean = row_norm.sumsq_tiles.float().sum(dim=-1, keepdim=True) / rows.shape[-1]
    return (rows.float() * torch.rsqrt(mean + row_norm.eps)).to(rows.dtype)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (T, Hq, D) and k (T, Hkv, D) by their positions (T,); returns new tensors."""
    cos, sin = cos_sin_cache.index_select(0, positions).chunk(2, dim=-1)  # (T, D/2) each
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (T, 1, D/2): broadcast over heads

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)  # (T, H, D/2) each
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, kv_cache_layer: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store each new token's K and V (T, Hkv, D) at its slot. A negative slot means "do not store"
    (padding tokens of a captured batch)."""
    _, num_blocks, block_size, num_kv_heads, head_dim = kv_cache_layer.shape
    flat = kv_cache_layer.view(2, num_blocks * block_size, num_kv_heads, head_dim)
    keep = slot_mapping >= 0
    if not bool(keep.all()):
        k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
    flat[0].index_copy_(0, slot_mapping, k.to(flat.dtype))
    flat[1].index_copy_(0, slot_mapping, v.to(flat.dtype))


def gather_blocks(kv_cache_layer: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """A copy of the blocks block_ids (any shape S, integer): (2, *S, block_size, Hkv, D).
    index_select of whole rows, 3-5x faster on the CPU than advanced indexing of the same blocks."""
    _, _, *block_shape = kv_cache_layer.shape
    rows = kv_cache_layer.flatten(2).index_select(1, block_ids.reshape(-1).long())  # (2, n, bs*Hkv*D)
    return rows.view(2, *block_ids.shape, *block_shape)


def gather_kv(
    kv_cache_layer: torch.Tensor, block_table: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first seq_len cached tokens of one sequence: K and V, each (seq_len, Hkv, D)."""
    block_size = kv_cache_layer.shape[2]
    num_blocks = -(-seq_len // block_size)
    blocks = gather_blocks(kv_cache_layer, block_table[:num_blocks])  # (2, nb, bs, Hkv, D)
    k, v = blocks.flatten(1, 2)[:, :seq_len]  # (seq_len, Hkv, D) each
    return k, v


def causal_mask(
    query_len: int, seq_len: int, sliding_window: int | None, device: torch.device
) -> torch.Tensor:
    """(query_len, seq_len) bool for the last query_len of seq_len tokens attending to all of them."""
    return causal_mask_between(seq_len - query_len, query_len, 0, seq_len, sliding_window, device)


def causal_mask_between(
    first_query_pos: int,
    num_queries: int,
    first_key_pos: int,
    num_keys: int,
    sliding_window: int | None,
    device: torch.device,
) -> torch.Tensor:
    """(num_queries, num_keys) bool, True where a query may attend. Queries sit at consecutive
    positions from first_query_pos, keys from first_key_pos; a query sees keys at positions <= its
    own and, with a window, only the `sliding_window` most recent of them (itself included), as
    transformers masks."""
    q_pos = torch.arange(first_query_pos, first_query_pos + num_queries, device=device).unsqueeze(
        1
    )  # (Tq, 1)
    k_pos = torch.arange(first_key_pos, first_key_pos + num_keys, device=device).unsqueeze(0)  # (1, L)
    allowed = k_pos <= q_pos
    if sliding_window is not None:
        allowed &= q_pos - k_pos < sliding_window
    return allowed


def attention_dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """q (Tq, Hq, D), k and v (L, Hkv, D), mask (Tq, L) -> (Tq, Hq, D), computed in float32.
    mask None: causal with queries and keys starting at the same position (Tq == L).
    GQA: query head h reads K/V head h // (Hq / Hkv). torch's fused attention (enable_gqa) reads
    each K/V head once for its whole group and never materializes repeated heads."""
    qh = q.float().transpose(0, 1).unsqueeze(0)  # (1, Hq, Tq, D)
    kh = k.float().transpose(0, 1).unsqueeze(0)  # (1, Hkv, L, D)
    vh = v.float().transpose(0, 1).unsqueeze(0)
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
    )
    return out[0].transpose(0, 1).to(q.dtype)  # (Tq, Hq, D)


class OutputOrder(NamedTuple):
    """The input order of the act-order linear after an op, applied to the op's output (engine/models/
    act_order.py): element j of a row is element perm[j] of the op's own row; index is the inverse,
    for a kernel that writes each element to its place. Both (N,) int32."""

    perm: torch.Tensor
    index: torch.Tensor


def in_order(out: torch.Tensor, order: OutputOrder | None) -> torch.Tensor:
    """out (T, ...) with each row's elements (flattened) in `order`."""
    if order is None:
        return out
    return out.reshape(out.shape[0], -1).index_select(-1, order.perm).view(out.shape)


def paged_attention(
    q: torch.Tensor,
    kv_cache_layer: torch.Tensor,
    attn: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
    out_order: OutputOrder | None = None,
) -> torch.Tensor:
    """Causal attention of the new tokens (T, Hq, D) over each sequence's cached blocks (whose K/V
    for the new tokens were already written). Mixed prefill and decode sequences in one batch.
    out_order: each token's Hq * D outputs in that order (the o projection's act-order)."""
    if attn.is_decode and q.shape[0] == attn.num_seqs:
        return in_order(decode_attention(q, kv_cache_layer, attn, scale, sliding_window), out_order)
    return in_order(_prefill_attention(q, kv_cache_layer, attn, scale, sliding_window), out_order)


def _prefill_attention(
    q: torch.Tensor,
    kv_cache_layer: torch.Tensor,
    attn: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    out = torch.empty_like(q)
    query_start_loc = attn.query_start_loc.tolist()
    seq_lens = attn.seq_lens.tolist()
    for i, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[i], query_start_loc[i + 1]
        if end == start:
            continue
        k, v = gather_kv(kv_cache_layer, attn.block_tables[i], seq_len)  # (L, Hkv, D) each
        first_pos = seq_len - (end - start)  # position of the sequence's first new token
        # Queries in chunks bound the (Hq, chunk, L) scores of a long prefill; each chunk reads only
        # the keys it can see (none after its last query, none before its window).
        for chunk_start in range(start, end, QUERY_CHUNK_TOKENS):
            chunk_end = min(chunk_start + QUERY_CHUNK_TOKENS, end)
            q_first = first_pos + chunk_start - start
            q_last = q_first + chunk_end - chunk_start - 1
            k_first = 0 if sliding_window is None else max(0, q_first - sliding_window + 1)
            # Keys that start at the first query (the first chunk of an uncached prompt): torch's own
            # causal flag, which skips the masked tiles, instead of building and applying a mask.
            top_left = k_first == q_first and sliding_window is None
            mask = None if top_left else causal_mask_between(
                q_first, chunk_end - chunk_start, k_first, q_last + 1 - k_first, sliding_window, q.device
            )  # fmt: skip
            out[chunk_start:chunk_end] = attention_dense(
                q[chunk_start:chunk_end], k[k_first : q_last + 1], v[k_first : q_last + 1], mask, scale
            )
    return out


def decode_attention(
    q: torch.Tensor,
    kv_cache_layer: torch.Tensor,
    attn: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """paged_attention when every sequence brings one token: q (B, Hq, D) -> (B, Hq, D). All
    sequences' blocks are gathered at once, padded to the longest, and attended in one fused call:
    a loop over sequences cost a gather, a mask and an attention call per sequence and layer."""
    block_size = kv_cache_layer.shape[2]
    max_len = attn.max_seq_len
    num_blocks = -(-max_len // block_size)
    blocks = gather_blocks(kv_cache_layer, attn.block_tables[:, :num_blocks])  # (2, B, nb, bs, Hkv, D)
    kv = blocks.flatten(2, 3)[:, :, :max_len]  # (2, B, L, Hkv, D)
    mask = None
    if attn.num_seqs > 1 or (sliding_window is not None and max_len > sliding_window):
        key_pos = torch.arange(max_len, device=q.device)  # (L,)
        seq_lens = attn.seq_lens.to(torch.int64).unsqueeze(1)  # (B, 1); the query sits at seq_len - 1
        mask = key_pos < seq_lens  # (B, L)
        if sliding_window is not None:
            mask &= key_pos >= seq_lens - sliding_window
        # Padding slots hold other sequences' K/V or stale data (NaN in the tests): a masked score of
        # NaN would still poison the softmax, so they are zeroed, not just masked.
        kv.masked_fill_(~mask[None, :, :, None, None], 0)
        mask = mask[:, None, None, :]  # (B, 1, 1, L): every head, the one query
    k, v = kv  # (B, L, Hkv, D) each
    qh = q.float().unsqueeze(2)  # (B, Hq, 1, D)
    kh = k.float().transpose(1, 2)  # (B, Hkv, L, D)
    vh = v.float().transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.squeeze(2).to(q.dtype)  # (B, Hq, D)


@dataclass
class DequantizedWeight(PackedWeight):
    """A PackedWeight with its dequantized rows kept beside it (CPU only, see prepare_quant_weight)."""

    sorted_dense: torch.Tensor | None = None  # (K, N) = dequantize(self), rows in group order


def quant_linear(
    x: torch.Tensor,
    w: PackedWeight,
    read_next: tuple[torch.Tensor, ...] = (),
    row_norm: RowNorm | None = None,
) -> torch.Tensor:
    """x (M, K) @ dequantized W (K, N) + bias -> (M, N). read_next: the tensors the model reads after
    this weight, a hint a kernel may use to start fetching them (no effect on any result). row_norm:
    x is h * weight of an RMSNorm whose row scale is applied here (a kernel scales the product)."""
    if row_norm is not None:
        x = apply_row_norm(x, row_norm)
    if not isinstance(w, DequantizedWeight):
        return quant_linear_reference(x, w)
    if w.perm is not None:
        x = x.index_select(-1, w.perm)
    y = x @ w.sorted_dense.to(x.dtype)
    return y if w.bias is None else y + w.bias.to(y.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x (M, 2I) holding [gate | up] -> silu(gate) * up, (M, I)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def quant_linear_silu_mul(
    x: torch.Tensor,
    w: PackedWeight,
    read_next: tuple[torch.Tensor, ...] = (),
    row_norm: RowNorm | None = None,
) -> torch.Tensor | None:
    """Fused op: silu(gate) * up of x @ W = [gate | up] in one kernel, or None where no kernel serves
    the call (always here: the caller composes quant_linear and silu_and_mul)."""
    return None


def quant_qkv_rotary_kv(
    x: torch.Tensor,
    w: PackedWeight,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    kv_cache_layer: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    head_dim: int,
    read_next: tuple[torch.Tensor, ...] = (),
    row_norm: RowNorm | None = None,
) -> torch.Tensor | None:
    """Fused op: x @ W = [q | k | v] heads, q and k rotated, k and v written to their slots, q
    (T, Hq, D) returned, in one kernel; or None where no kernel serves the call (always here: the
    caller composes quant_linear, apply_rotary and write_kv)."""
    return None


def quant_linear_add_norm(
    x: torch.Tensor,
    w: PackedWeight,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_index: torch.Tensor | None = None,
    read_next: tuple[torch.Tensor, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Fused op: the linear before an RMSNorm doing the norm's residual add, weight and square sums
    in one kernel: h = x @ W + residual -> (h * norm_weight at column norm_index[n] (or n), sumsq_tiles
    (M, N / 32) float32 of h^2, h), the row scale left to the next linear (RowNorm); or None where
    no kernel serves the call (always here: the caller composes quant_linear and rms_norm)."""
    return None


def prepare_quant_weight(w: PackedWeight) -> PackedWeight:
    """Once per weight and device. On the CPU, dequantize once and keep the float rows: unpacking
    every call would cost several times the matmul, and a CPU has memory to spare for a model small
    enough to run on it. Elsewhere (a GPU without built kernels) keep only the packed form."""
    if w.qweight.device.type != "cpu" or isinstance(w, DequantizedWeight):
        return w
    fields = {f.name: getattr(w, f.name) for f in dataclasses.fields(PackedWeight)}
    return DequantizedWeight(**fields, sorted_dense=dequantize(w))


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """(N, V) -> (N,) int64: each row's first largest value (a NaN above everything)."""
    return logits.argmax(dim=-1)


def quant_embedding(
    ids: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, bits: int
) -> torch.Tensor:
    """Rows `ids` (...,) of a quantized embedding -> (..., H) in the scales' dtype: e = q * s (8 bits,
    int8 codes) or q * s + b (4 bits, two codes per byte, the even feature low), one scale s and
    offset b per group of H / scales.shape[1] features (engine/layers/embedding.py)."""
    packed = codes[ids]  # (..., H * bits / 8)
    if bits == 4:
        packed = torch.stack((packed & 15, packed >> 4), dim=-1).flatten(-2)  # (..., H) in [0, 16)
    hidden = packed.shape[-1]
    q = packed.to(scales.dtype).unflatten(-1, (scales.shape[1], hidden // scales.shape[1]))
    s = scales[ids].unsqueeze(-1)  # (..., G, 1)
    if offsets is None:
        return (q * s).flatten(-2)
    return torch.addcmul(offsets[ids].unsqueeze(-1), q, s).flatten(-2)
