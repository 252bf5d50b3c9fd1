"""Load-time quantization of the output head and the embedding (engine/quant/vocab.py): the values
each stores, the model's logits against the same matrices computed densely, tied and untied heads,
and the Engine's per-device defaults."""

from __future__ import annotations

import pytest
import torch

import engine
from engine.layers.embedding import Embedding, QuantEmbedding
from engine.layers.linear import Linear, QuantLinear
from engine.loader import default_vocab_bits
from engine.quant.layout import dequantize
from engine.quant.rtn import find_grid, quantize_codes
from engine.quant.vocab import head_spec, quantize_head_weight, quantize_vocab_matrices
from tests.tiny_models import make_tiny_checkpoint


def test_quant_embedding_rows_are_int8_codes_times_group_scales():
    w = torch.randn(50, 256, generator=torch.Generator().manual_seed(0))
    w[3, 128:] = 0.0  # an all-zero group keeps a finite scale and decodes to zeros
    emb = QuantEmbedding.from_float(w, rows_per_pass=16)  # several row blocks
    assert emb.codes.dtype == torch.int8 and emb.scales.shape == (50, 2)
    expected_scale = w.view(50, 2, 128).abs().amax(dim=2) / 127
    assert torch.equal(emb.scales, expected_scale)
    expected = torch.round(w.view(50, 2, 128) / expected_scale.clamp(min=1e-30).unsqueeze(2)).view(50, 256)
    assert torch.equal(emb.codes.float(), expected)
    assert torch.equal(emb.codes[3, 128:], torch.zeros(128, dtype=torch.int8))
    ids = torch.tensor([[3, 7], [49, 0]])
    out = emb(ids)
    assert out.shape == (2, 2, 256)
    assert torch.equal(out, emb.dense()[ids])
    # symmetric int8: every element within half a step of its float value, the group maximum exact
    assert ((emb.dense() - w).abs() <= expected_scale.repeat_interleave(128, dim=1) / 2 + 1e-7).all()
    assert torch.equal(emb.dense().abs().view(50, 2, 128).amax(2), w.abs().view(50, 2, 128).amax(2))


def test_quant_embedding_scales_take_the_model_dtype_and_codes_use_the_stored_scale():
    w = torch.randn(10, 128, generator=torch.Generator().manual_seed(1))
    emb = QuantEmbedding.from_float(w, dtype=torch.float16)
    assert emb.scales.dtype == torch.float16 and emb(torch.tensor([1])).dtype == torch.float16
    codes = torch.round(w / emb.scales.float()).clamp(-127, 127)  # rounded with the fp16 scale itself
    assert torch.equal(emb.codes.float(), codes)


def test_4bit_embedding_rows_are_the_heads_grid_packed_two_codes_per_byte():
    w = torch.randn(40, 256, generator=torch.Generator().manual_seed(3))
    emb = QuantEmbedding.from_float(w, bits=4, rows_per_pass=16)
    assert emb.codes.dtype == torch.uint8 and emb.codes.shape == (40, 128) and emb.scales.shape == (40, 2)
    spec = head_spec(4, 256)  # the same asymmetric grid with the searched range as a 4-bit head
    for g in range(2):
        cols = w[:, g * 128 : (g + 1) * 128]
        grid = find_grid(cols, spec)
        codes = quantize_codes(cols, grid, 15)
        packed = emb.codes[:, g * 64 : (g + 1) * 64]
        assert torch.equal((packed & 15).float(), codes[:, 0::2])  # even features: low nibble
        assert torch.equal((packed >> 4).float(), codes[:, 1::2])
        expected = (codes - grid.zero[:, None]) * grid.scale[:, None]
        assert torch.allclose(emb.dense()[:, g * 128 : (g + 1) * 128], expected, rtol=0, atol=1e-6)
    ids = torch.tensor([[5, 0, 39]])
    assert torch.equal(emb(ids), emb.dense()[ids])
    assert ((emb.dense() - w).norm() / w.norm()).item() < 0.12


@pytest.mark.parametrize("bits", [4, 8])
def test_head_weight_packs_the_round_to_nearest_codes_of_every_vocabulary_row(bits, monkeypatch):
    monkeypatch.setattr("engine.quant.vocab.HEAD_ROWS_PER_PASS", 24)  # blocks of rows, stitched back
    w = torch.randn(100, 256, generator=torch.Generator().manual_seed(2))
    packed = quantize_head_weight(w, bits, torch.float32)
    assert (packed.in_features, packed.out_features, packed.group_size, packed.bits) == (256, 100, 128, bits)
    spec = head_spec(bits, 256)
    assert not spec.sym and spec.mse == (bits == 4)
    for g in range(2):
        cols = w[:, g * 128 : (g + 1) * 128]
        grid = find_grid(cols, spec)  # per row of the block, independent of the other rows
        expected = (quantize_codes(cols, grid, spec.maxq) - grid.zero[:, None]) * grid.scale[:, None]
        assert torch.equal(dequantize(packed)[g * 128 : (g + 1) * 128].t(), expected)


def test_head_of_an_odd_width_is_one_group():
    packed = quantize_head_weight(torch.randn(8, 96), 8, torch.float32)
    assert packed.group_size == 96 and packed.scales.shape == (1, 8)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("head_bits, embed_bits", [(4, 16), (8, 16), (4, 8), (8, 8), (8, 4), (16, 16)])
def test_model_computes_with_the_quantized_head_and_embedding(tmp_path, tie, head_bits, embed_bits):
    folder = make_tiny_checkpoint(tmp_path, "qwen2", tie=tie, seed=4)
    float_model = engine.load_model(folder, device="cpu")
    if tie and embed_bits != 16 and head_bits == 16:
        pytest.skip("refused, see test_tied_embedding_alone_cannot_be_quantized")
    model = engine.load_model(folder, device="cpu")
    quantize_vocab_matrices(model, head_bits=head_bits, embed_bits=embed_bits)
    assert isinstance(model.embed_tokens, QuantEmbedding if embed_bits != 16 else Embedding)
    if head_bits == 16:
        assert (model.lm_head is None) == tie
    else:
        assert isinstance(model.lm_head, QuantLinear) and model.lm_head.bits == head_bits

    # The same network with the quantized matrices written back densely into the float model.
    source = (
        float_model.embed_tokens.weight
        if tie
        else (float_model.lm_head.weight if float_model.lm_head else None)
    )
    if head_bits != 16:
        head_dense = dequantize(model.lm_head.packed()).t().contiguous()  # (V, H)
        float_model.lm_head = Linear(head_dense)
    if embed_bits != 16:
        float_model.embed_tokens = Embedding(model.embed_tokens.dense())
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model(ids), float_model(ids), rtol=1e-5, atol=1e-5)
    if head_bits != 16:  # and the quantized head is close to the float one it came from
        assert source is not None
        err = (head_dense - source).norm() / source.norm()
        assert err < (0.12 if head_bits == 4 else 0.006)


def test_tied_embedding_alone_cannot_be_quantized(tmp_path):
    model = engine.load_model(make_tiny_checkpoint(tmp_path, "qwen2", tie=True), device="cpu")
    with pytest.raises(ValueError, match="tied head needs its own matrix"):
        quantize_vocab_matrices(model, head_bits=16, embed_bits=8)
    assert isinstance(model.embed_tokens, Embedding) and model.lm_head is None  # nothing half-done


@pytest.mark.parametrize("head_bits, embed_bits, message", [(6, 16, "head bits must be one of 4, 8, 16"),
                                                            (16, 6, "embedding bits must be one of 4, 8, 16")])  # fmt: skip
def test_unsupported_bits_are_refused_by_name(tmp_path, head_bits, embed_bits, message):
    folder = make_tiny_checkpoint(tmp_path, "llama")
    with pytest.raises(ValueError, match=message):
        engine.load_model(folder, device="cpu", head_bits=head_bits, embed_bits=embed_bits)


def test_load_model_keeps_the_checkpoint_matrices_unless_asked(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "llama")
    model = engine.load_model(folder, device="cpu")
    assert isinstance(model.embed_tokens, Embedding) and isinstance(model.lm_head, Linear)
    model = engine.load_model(folder, device="cpu", head_bits=8, embed_bits=8)
    assert isinstance(model.embed_tokens, QuantEmbedding) and isinstance(model.lm_head, QuantLinear)
    assert model.dtype == torch.float32 and model.device.type == "cpu"


def test_engine_defaults_quantize_on_a_gpu_and_keep_float_on_the_cpu(tmp_path):
    assert default_vocab_bits(torch.device("cuda")) == (8, 4)
    assert default_vocab_bits(torch.device("cpu")) == (16, 16)
    with engine.Engine(make_tiny_checkpoint(tmp_path / "a", "llama"), device="cpu", cache_tokens=256) as eng:
        assert isinstance(eng.model.lm_head, Linear) and isinstance(eng.model.embed_tokens, Embedding)
        assert (eng.stats()["head_bits"], eng.stats()["embed_bits"]) == (16, 16)
    with engine.Engine(
        make_tiny_checkpoint(tmp_path / "b", "llama"),
        device="cpu",
        cache_tokens=256,
        head_bits=8,
        embed_bits=8,
    ) as eng:
        assert isinstance(eng.model.lm_head, QuantLinear) and isinstance(
            eng.model.embed_tokens, QuantEmbedding
        )
        assert (eng.stats()["head_bits"], eng.stats()["embed_bits"]) == (8, 8)
        assert eng.generate([1, 2, 3], max_new_tokens=4).token_ids  # serves with them
