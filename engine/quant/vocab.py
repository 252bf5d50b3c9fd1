"""Load-time quantization of the two vocabulary matrices: the output head and the token embedding.

A GPTQ checkpoint quantizes the decoder's linears and keeps the head and the embedding in fp16. For
an 8B model with a 128k vocabulary those two are 2.1 GB of the GPU's memory, and the fp16 head alone is a
fifth of the bytes a decode step reads. Quantizing them once at load, on the device that will hold
them, is what lets an 8B model with a 16k-token cache fit in 7 GB and makes every step faster:

- the head (V, H) becomes a QuantLinear of the engine's canonical layout (round-to-nearest,
  asymmetric, group 128 along H; the best shrunk range per group at 4 bits), so the decode step runs
  it through the same quantized GEMV as every other linear;
- the embedding becomes int8 (symmetric) or 4-bit (the head's grid) rows with one scale per 128
  features (QuantEmbedding): a lookup reads 1 or half a byte per feature and rescales; nothing of
  the matrix multiplies.

Both are off on the CPU by default (the float matmul is what is fast there). With tied embeddings
(one matrix serves both) the head gets its own quantized copy and the float matrix is dropped as soon
as the embedding is quantized too.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.layers.embedding import Embedding, QuantEmbedding
from engine.layers.linear import Linear, QuantLinear
from engine.quant.layout import PackedWeight, pack_int32
from engine.quant.rtn import QuantSpec, rtn_quantize

HEAD_GROUP_SIZE = 128
HEAD_ROWS_PER_PASS = 16384  # vocabulary rows quantized at once: bounds the float32 temporaries
VOCAB_BITS = (4, 8, 16)  # 16 = keep the matrix in the model's float dtype


def head_spec(bits: int, in_features: int) -> QuantSpec:
    group = HEAD_GROUP_SIZE if in_features % HEAD_GROUP_SIZE == 0 else -1
    # The shrunk-range search pays at 4 bits (outliers cost a whole step there); at 8 bits min/max is
    # already within 0.1% of float, and the search would cost seconds of load for nothing.
    return QuantSpec(bits=bits, group_size=group, sym=False, mse=bits == 4)


@torch.no_grad()
def quantize_head_weight(weight: torch.Tensor, bits: int, dtype: torch.dtype) -> PackedWeight:
    """weight (V, H) float -> the canonical PackedWeight of a (H -> V) linear, quantized row block by
    row block (every vocabulary row is its own output channel, so blocks are independent)."""
    v, h = weight.shape
    spec = head_spec(bits, h)
    qweights, scales, zeros = [], [], []
    for start in range(0, v, HEAD_ROWS_PER_PASS):
        q = rtn_quantize(weight[start : start + HEAD_ROWS_PER_PASS], spec)  # codes (H, rows)
        qweights.append(pack_int32(q.codes, bits))
        scales.append(q.scales.to(dtype))
        zeros.append(q.zeros.to(dtype))
    return PackedWeight(
        bits=bits,
        group_size=spec.group_size_for(h),
        in_features=h,
        out_features=v,
        qweight=torch.cat(qweights, dim=1),
        scales=torch.cat(scales, dim=1),
        zeros=torch.cat(zeros, dim=1),
        perm=None,
        bias=None,
    )


def check_vocab_bits(what: str, bits: int) -> None:
    if bits not in VOCAB_BITS:
        allowed = ", ".join(map(str, VOCAB_BITS))
        raise ValueError(f"{what} bits must be one of {allowed} (16 keeps float), got {bits}")


@torch.no_grad()
def quantize_vocab_matrices(model: nn.Module, head_bits: int = 16, embed_bits: int = 16) -> None:
    """Replace model.lm_head and model.embed_tokens in place (engine/models/base.py CausalLM).

    A head that is already quantized (a checkpoint that shipped it as GPTQ) is left as it is."""
    check_vocab_bits("head", head_bits)
    check_vocab_bits("embedding", embed_bits)
    float_embedding = model.embed_tokens.weight if isinstance(model.embed_tokens, Embedding) else None
    if head_bits != 16:
        if model.lm_head is None:  # tied: the head reads the embedding matrix
            if float_embedding is None:
                raise ValueError("the tied head's matrix is already quantized; quantize the head first")
            source = float_embedding
        elif isinstance(model.lm_head, Linear):
            source = model.lm_head.weight
        else:
            source = None  # already quantized in the checkpoint
        if source is not None:
            head = QuantLinear(quantize_head_weight(source, head_bits, model.dtype))
            head.packed()  # backend preparation now, never inside a later CUDA graph capture
            model.lm_head = head
        del source
    if embed_bits != 16 and float_embedding is not None:
        if model.lm_head is None:
            raise ValueError(
                "a tied head needs its own matrix before the embedding is quantized: give head bits too"
            )
        model.embed_tokens = QuantEmbedding.from_float(float_embedding, bits=embed_bits, dtype=model.dtype)
    del float_embedding
    if model.device.type == "cuda":
        torch.cuda.empty_cache()  # hand the float matrices' memory back for the KV cache


def vocab_bits(model: nn.Module) -> tuple[int, int]:
    """(head bits, embedding bits) the model computes with; 16 = the float matrix."""
    head = model.lm_head
    head_bits = head.bits if isinstance(head, QuantLinear) else 16
    embedding = model.embed_tokens
    return head_bits, embedding.bits if isinstance(embedding, QuantEmbedding) else 16
