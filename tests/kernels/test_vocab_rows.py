"""The greedy argmax over logits and the quantized embedding lookup (csrc/vocab_rows.cu) against
torch: the argmax picks torch's index exactly (the first of equal maxima, a NaN above everything),
the lookup gives the reference expression's values."""

from __future__ import annotations

import pytest
import torch

from engine import ops
from engine.layers.embedding import QuantEmbedding
from engine.ops import reference
from tests.kernels.gpu import DTYPES, exlsp_ops, generator, gpu

pytestmark = gpu


def planted_logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """Random rows, and rows that test the order: a maximum repeated later and earlier, NaNs, a row of
    -inf only, +inf twice."""
    gen = generator(seed)
    logits = torch.randn((rows, vocab), generator=gen, device="cuda")
    special = [
        lambda r: r.__setitem__(slice(vocab // 3, vocab, vocab // 3), r.max() + 1),  # ties
        lambda r: r.__setitem__([vocab - 1, vocab // 2, 5 % vocab], float("nan")),
        lambda r: r.fill_(float("-inf")),
        lambda r: r.__setitem__([vocab - 2, vocab // 4], float("inf")),
    ]
    for i, plant in enumerate(special[:rows]):
        plant(logits[i])
    return logits


@pytest.mark.parametrize("vocab", [128256, 151936, 1000, 4099, 7])
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_argmax_is_torchs_index(rows, vocab):
    exlsp_ops()
    logits = planted_logits(rows, vocab, seed=rows * vocab)
    out = torch.full((rows,), -1, dtype=torch.int64, device="cuda")
    torch.ops.exlsp.argmax_rows(logits, out)
    assert torch.equal(out, logits.argmax(dim=-1))
    assert torch.equal(ops.argmax(logits), logits.argmax(dim=-1))


def test_argmax_reads_rows_of_a_wider_matrix():
    """Rows `stride` apart (a view of the first columns) and an odd start: the unvectorised path."""
    exlsp_ops()
    wide = planted_logits(5, 1031, seed=3)
    view = wide[:, 1:1001]
    assert view.stride() == (1031, 1)
    assert torch.equal(ops.argmax(view), view.argmax(dim=-1))


def test_argmax_rejects_what_it_cannot_read():
    exlsp_ops()
    out = torch.empty(2, dtype=torch.int64, device="cuda")
    with pytest.raises(RuntimeError, match="float32 \\(rows, vocab\\)"):
        torch.ops.exlsp.argmax_rows(torch.zeros((2, 8), dtype=torch.float16, device="cuda"), out)
    with pytest.raises(RuntimeError, match="int64 \\(2,\\)"):
        torch.ops.exlsp.argmax_rows(torch.zeros((2, 8), device="cuda"), out[:1])


def one_ulp_apart(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Every element equal or one rounding step apart (bit patterns of the same sign)."""
    ia, ib = a.view(torch.int16).int(), b.view(torch.int16).int()
    return bool(((ia - ib).abs() <= 1).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32], ids=str)
def test_quant_embedding_gives_the_reference_rows(dtype, bits, id_dtype):
    """The kernel's rows against the torch expression it replaced, on the same device and codes: the
    8-bit product exactly; the 4-bit q * s + b in one fma, as torch's addcmul computes it (allowed one
    rounding step, should torch ever round the product first). Ids of any shape, repeated ones too."""
    exlsp_ops()
    vocab, hidden = 1000, 512
    weight = torch.randn((vocab, hidden), generator=generator(bits), device="cuda") * 0.05
    emb = QuantEmbedding.from_float(weight, bits=bits, dtype=dtype)
    ids = torch.randint(0, vocab, (3, 7), generator=generator(5), device="cuda").to(id_dtype)
    ids[0, 0] = ids[2, 6] = vocab - 1
    out = ops.quant_embedding(ids, emb.codes, emb.scales, emb.offsets, bits)
    ref = reference.quant_embedding(ids.long(), emb.codes, emb.scales, emb.offsets, bits)
    assert out.shape == (3, 7, hidden) and out.dtype == dtype
    if bits == 8:
        assert torch.equal(out, ref)
    else:
        assert one_ulp_apart(out, ref)
    assert torch.equal(emb(ids), out)  # the layer takes the kernel


def test_quant_embedding_needs_the_4_bit_offsets():
    exlsp_ops()
    emb = QuantEmbedding.from_float(torch.randn((64, 128), device="cuda"), bits=4, dtype=torch.float16)
    ids = torch.zeros(2, dtype=torch.int64, device="cuda")
    out = torch.empty((2, 128), dtype=torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match="4-bit codes need their offsets"):
        torch.ops.exlsp.quant_embedding(ids, emb.codes, emb.scales, None, 4, out)
