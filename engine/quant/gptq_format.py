"""GPTQ tensors as AutoGPTQ / GPTQModel store them -> the internal PackedWeight (engine/quant/layout.py).

On disk, for one linear with K = in_features, N = out_features, pw = 32 // bits, G = ceil(K / group):
  qweight int32 (K / pw, N)   packed along K, low bits first (the same packing PackedWeight keeps)
  qzeros  int32 (G, N / pw)   packed along N; "gptq" stores zero - 1, "gptq_v2" stores the zero
  scales  float (G, N)
  g_idx   int32 (K,)          group of each input feature (absent in some old sequential files)
  bias    float (N,)          optional
Act-order (desc_act) makes g_idx a shuffled grouping. Repacking sorts the input features by group
(stable), so that each group becomes a contiguous run of rows, and keeps that order as `perm`: the
kernels then permute the activations once instead of gathering scales per row. When g_idx is already
sorted (sequential GPTQ) there is nothing to permute and perm is None.
"""

from __future__ import annotations

import math

import torch

from engine.config import QuantConfig
from engine.errors import CheckpointError
from engine.quant.layout import PackedWeight, pack_int32, unpack_int32

GPTQ_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


def _expect(prefix: str, key: str, tensor: torch.Tensor, shape: tuple[int, ...], why: str) -> None:
    if tuple(tensor.shape) != shape:
        raise CheckpointError(
            f"GPTQ tensor {prefix}.{key} has shape {tuple(tensor.shape)}, expected {shape} ({why})"
        )


def _check_bits(prefix: str, qweight: torch.Tensor, quant: QuantConfig, k: int, n: int) -> None:
    expected = (k * quant.bits // 32, n)
    if tuple(qweight.shape) == expected:
        return
    hint = ""
    for bits in (2, 3, 4, 8):
        if bits != quant.bits and qweight.shape[0] * 32 == k * bits and qweight.shape[1] == n:
            hint = f"; its rows fit {bits}-bit packing (K*{bits}/32 = {qweight.shape[0]}): the bits in the checkpoint's quantization config contradict the tensors"
    raise CheckpointError(
        f"GPTQ tensor {prefix}.qweight has shape {tuple(qweight.shape)}, expected {expected} for "
        f"bits={quant.bits} and a {k} -> {n} linear (rows = in_features * bits / 32){hint}"
    )


def repack_gptq(
    prefix: str,
    tensors: dict[str, torch.Tensor],
    quant: QuantConfig,
    in_features: int,
    out_features: int,
    dtype: torch.dtype,
) -> PackedWeight:
    """One linear's GPTQ tensors (keys qweight, qzeros, scales, optional g_idx and bias) -> PackedWeight
    with scales, zeros and bias in `dtype`. `prefix` names the layer in error messages."""
    k, n, bits = in_features, out_features, quant.bits
    per_word = 32 // bits
    qweight = tensors["qweight"]
    if qweight.dtype != torch.int32:
        raise CheckpointError(f"GPTQ tensor {prefix}.qweight has dtype {qweight.dtype}, expected torch.int32")
    _check_bits(prefix, qweight, quant, k, n)
    group_size = k if quant.group_size == -1 else quant.group_size
    num_groups = math.ceil(k / group_size)
    scales = tensors["scales"]
    _expect(
        prefix,
        "scales",
        scales,
        (num_groups, n),
        f"group_size={quant.group_size} gives {num_groups} groups of {k} inputs",
    )
    _expect(
        prefix,
        "qzeros",
        tensors["qzeros"],
        (num_groups, n // per_word),
        f"{bits}-bit zeros packed along {n} outputs",
    )

    g_idx = tensors.get("g_idx")
    if g_idx is None:
        g_idx = torch.arange(k) // group_size
    else:
        _expect(prefix, "g_idx", g_idx, (k,), "one group index per input feature")
        g_idx = g_idx.to(torch.int64)
        if k and (int(g_idx.min()) < 0 or int(g_idx.max()) >= num_groups):
            raise CheckpointError(
                f"GPTQ tensor {prefix}.g_idx holds group {int(g_idx.max())} (or a negative one), but "
                f"scales has {num_groups} groups: group_size={quant.group_size} contradicts the tensors"
            )

    # zeros: (G, N / pw) packed along N -> unpack the transpose along its rows
    zeros = unpack_int32(tensors["qzeros"].to(torch.int32).t().contiguous(), bits).t()  # (G, N)
    if quant.checkpoint_format == "gptq":
        # v1 stores zero - 1 masked to `bits`, so a true zero of 0 reads back as 2**bits, exactly as
        # AutoGPTQ's own kernels compute it; reproduce that rather than "fix" the checkpoint
        zeros = zeros + 1

    perm = torch.argsort(g_idx, stable=True)  # (K,) input features in group order
    sorted_groups = g_idx[perm]
    if bool((perm == torch.arange(k)).all()):
        perm = None
        q_sorted = qweight
    else:
        q_sorted = pack_int32(unpack_int32(qweight, bits)[perm], bits)
    # Groups of equal size become runs of that size. Unequal ones (K not a multiple of the group size)
    # are split into runs of the gcd of their sizes, each run repeating its group's scale and zero.
    counts = torch.bincount(g_idx, minlength=num_groups)
    run = math.gcd(*(int(c) for c in counts if c > 0))
    run_groups = sorted_groups[::run]  # (K / run,) original group of each run
    bias = tensors.get("bias")
    if bias is not None:
        _expect(prefix, "bias", bias, (n,), "one per output feature")
    return PackedWeight(
        bits=bits,
        group_size=run,
        in_features=k,
        out_features=n,
        qweight=q_sorted.contiguous(),
        scales=scales[run_groups].to(dtype).contiguous(),
        zeros=zeros[run_groups].to(dtype).contiguous(),
        perm=perm,
        bias=None if bias is None else bias.to(dtype),
    )


def concat_out_features(weights: list[PackedWeight]) -> PackedWeight | None:
    """Fuse linears that read the same input into one with their outputs side by side, or None when
    they cannot share one matrix (different bits, grouping or act-order permutation)."""
    first = weights[0]
    for w in weights[1:]:
        same_perm = (w.perm is None and first.perm is None) or (
            w.perm is not None and first.perm is not None and torch.equal(w.perm, first.perm)
        )
        if (w.bits, w.group_size, w.in_features) != (
            first.bits,
            first.group_size,
            first.in_features,
        ) or not same_perm:
            return None
    biases = None
    if any(w.bias is not None for w in weights):
        biases = torch.cat(
            [w.bias if w.bias is not None else w.scales.new_zeros(w.out_features) for w in weights]
        )
    return PackedWeight(
        bits=first.bits,
        group_size=first.group_size,
        in_features=first.in_features,
        out_features=sum(w.out_features for w in weights),
        qweight=torch.cat([w.qweight for w in weights], dim=1),
        scales=torch.cat([w.scales for w in weights], dim=1),
        zeros=torch.cat([w.zeros for w in weights], dim=1),
        perm=first.perm,
        bias=biases,
    )
