"""The one internal layout of a quantized linear layer, and its pure-torch reference.

Every GPTQ variant on disk (4/8 bits, act-order or sequential, sym or asym, any group size, "gptq"
or "gptq_v2" zero convention) is repacked at load into `PackedWeight`. Kernels consume this layout,
except the GPU's tensor-core GEMV: it reads qweight in column strips (to_column_strips), which the CUDA
backend makes once at load in place of the canonical words (engine/ops/cuda_quant_linear.py), so the
device holds one copy; the CPU path and everything on disk stay canonical.

Math, with K = in_features, N = out_features, x: (M, K):
    rows of W are stored in group order: W_sorted = W[perm] when act-order (perm sorts g_idx),
    so group g covers rows [g * group_size, (g + 1) * group_size) of W_sorted;
    W_sorted[k, n] = (q[k, n] - zeros[k // group_size, n]) * scales[k // group_size, n]
    y = x[:, perm] @ W_sorted + bias          (x unpermuted when perm is None)

Packing: qweight is int32 (K * bits // 32, N); element k of column n lives in word k // (32 // bits)
at bit offset (k % (32 // bits)) * bits, low bits first (the GPTQ convention along K).
`zeros` are stored unpacked as float, already in the "true zero" convention (gptq_v1's +1 applied).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedWeight:
    bits: int  # 4 or 8
    group_size: int  # rows per group after sorting; == in_features for a single group
    in_features: int
    out_features: int
    qweight: torch.Tensor  # (K * bits // 32, N) int32
    scales: torch.Tensor  # (K // group_size, N) float dtype of the model
    zeros: torch.Tensor  # (K // group_size, N) same dtype as scales
    perm: torch.Tensor | None  # (K,) int64: act-order permutation of the input features, or None
    bias: torch.Tensor | None  # (N,) or None

    def __post_init__(self) -> None:
        assert self.bits in (4, 8), self.bits
        k, n = self.in_features, self.out_features
        assert k % self.group_size == 0, (k, self.group_size)
        assert self.qweight.shape == self.qweight_shape(), (self.qweight.shape, k, n, self.bits)
        assert self.qweight.dtype == torch.int32
        assert self.scales.shape == (k // self.group_size, n), self.scales.shape
        assert self.zeros.shape == self.scales.shape
        assert self.perm is None or self.perm.shape == (k,)
        assert self.bias is None or self.bias.shape == (n,)

    def qweight_shape(self) -> tuple[int, ...]:
        return (self.in_features * self.bits // 32, self.out_features)

    def to(self, device: torch.device | str) -> PackedWeight:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return PackedWeight(
            self.bits, self.group_size, self.in_features, self.out_features,
            move(self.qweight), move(self.scales), move(self.zeros), move(self.perm), move(self.bias),
        )  # fmt: skip


STRIP_COLUMNS = 16


def to_column_strips(qweight: torch.Tensor) -> torch.Tensor:
    """(K * bits // 32, N) packed words -> (N / 16, K * bits // 32, 16): the columns cut into strips of
    16, each strip's words stored whole, one strip after another. A tensor-core GEMV warp then reads
    two 256-byte runs per load instead of eight 64-byte pieces of rows N * 4 bytes apart."""
    rows, n = qweight.shape
    if n % STRIP_COLUMNS:
        raise ValueError(f"column strips need out_features a multiple of {STRIP_COLUMNS}, got {n}")
    return qweight.reshape(rows, n // STRIP_COLUMNS, STRIP_COLUMNS).transpose(0, 1).contiguous()


def from_column_strips(strips: torch.Tensor) -> torch.Tensor:
    """The inverse of to_column_strips: (N / 16, K * bits // 32, 16) -> (K * bits // 32, N)."""
    num_strips, rows, width = strips.shape
    return strips.transpose(0, 1).reshape(rows, num_strips * width)


def unpack_int32(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """(K * bits // 32, N) int32 -> (K, N) int32 of values in [0, 2**bits)."""
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, device=packed.device, dtype=torch.int32)  # (per_word,)
    values = (packed.unsqueeze(1) >> shifts.view(1, per_word, 1)) & ((1 << bits) - 1)  # (K/pw, pw, N)
    return values.reshape(packed.shape[0] * per_word, packed.shape[1])


def pack_int32(values: torch.Tensor, bits: int) -> torch.Tensor:
    """(K, N) ints in [0, 2**bits) -> (K * bits // 32, N) int32, low bits first along K."""
    per_word = 32 // bits
    k, n = values.shape
    assert k % per_word == 0, (k, per_word)
    v = values.to(torch.int64).reshape(k // per_word, per_word, n)
    shifts = torch.arange(0, 32, bits, device=values.device, dtype=torch.int64).view(1, per_word, 1)
    words = (v << shifts).sum(dim=1)  # (K/pw, N), fits in 32 bits unsigned
    return (words - ((words >> 31) << 32)).to(torch.int32)  # reinterpret as signed int32


def dequantize(w: PackedWeight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """W_sorted as a dense (K, N) tensor in `dtype` (default: the scales' dtype)."""
    dtype = dtype or w.scales.dtype
    q = unpack_int32(w.qweight, w.bits).to(dtype)  # (K, N)
    scales = w.scales.to(dtype).repeat_interleave(w.group_size, dim=0)  # (K, N)
    zeros = w.zeros.to(dtype).repeat_interleave(w.group_size, dim=0)
    return (q - zeros) * scales


def dense_weight(w: PackedWeight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The (K, N) weight in the original input-feature order: undo the act-order sort."""
    sorted_w = dequantize(w, dtype)
    if w.perm is None:
        return sorted_w
    dense = torch.empty_like(sorted_w)
    dense[w.perm] = sorted_w
    return dense


def quant_linear_reference(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """y = x @ W + bias, x: (..., K) -> (..., N). Dequantizes into x's dtype."""
    if w.perm is not None:
        x = x.index_select(-1, w.perm)
    y = x @ dequantize(w, x.dtype)
    if w.bias is not None:
        y = y + w.bias.to(y.dtype)
    return y
