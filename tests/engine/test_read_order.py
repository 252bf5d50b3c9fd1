"""The read order a model tells its quantized linears (engine/layers/linear.py link_read_order): each
GEMV hands the op the tensors of the weight the forward reads next, which the CUDA kernel asks L2 to
fetch early. A hint only, so what is checked here is that it names the right weight: a wrong or
stale one would cost speed on a GPU and show nowhere else."""

from __future__ import annotations

import pytest
import torch

import engine
from engine.layers.linear import QuantLinear, weight_tensors
from engine.ops import reference
from tests.tiny_models import make_tiny_checkpoint


def same_tensors(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("head_bits", [16, 8])
def test_each_linear_names_the_one_read_after_it(tmp_path, head_bits):
    folder = make_tiny_checkpoint(tmp_path, "llama", quant={"bits": 4, "group_size": 32}, seed=2)
    model = engine.load_model(folder, device="cpu", head_bits=head_bits)
    order = []
    for layer in model.layers:
        order += [
            layer.self_attn.qkv_proj,
            layer.self_attn.o_proj,
            layer.mlp.gate_up_proj,
            layer.mlp.down_proj,
        ]
    order.append(model.lm_head)  # replaced by a quantized head at load when head_bits < 16
    assert all(isinstance(m, QuantLinear) for m in order[:-1])
    assert isinstance(model.lm_head, QuantLinear) == (head_bits < 16)
    for module, following in zip(order, order[1:], strict=False):
        assert same_tensors(module.read_next(), weight_tensors(following))
    # small tensors first, then the packed weight; layer 0's down is followed by layer 1's q|k|v
    assert len(model.layers) == 2
    qkv = model.layers[1].self_attn.qkv_proj
    assert same_tensors(model.layers[0].mlp.down_proj.read_next(), (qkv.scales, qkv.zeros, qkv.qweight))
    assert len(model.layers[-1].mlp.down_proj.read_next()) == (3 if head_bits < 16 else 1)


def test_a_moved_model_names_the_moved_tensors(tmp_path):
    folder = make_tiny_checkpoint(tmp_path, "llama", quant={"bits": 4, "group_size": 32}, seed=3)
    model = engine.load_model(folder, device="cpu")
    model.to(torch.float64)
    o_proj = model.layers[0].self_attn.o_proj
    assert o_proj.scales.dtype == torch.float64
    assert same_tensors(model.layers[0].self_attn.qkv_proj.read_next(), weight_tensors(o_proj))


def test_the_ops_receive_the_next_weight(tmp_path, monkeypatch):
    """Every GEMV of a forward passes read_next to the op, on a GPU: a CPU forward passes () (no
    kernel reads it), so here the hint answers as it does for CUDA tensors."""
    folder = make_tiny_checkpoint(tmp_path, "llama", quant={"bits": 4, "group_size": 32}, seed=4)
    model = engine.load_model(folder, device="cpu")
    qkv = model.layers[0].self_attn.qkv_proj
    assert qkv.read_next_hint(torch.zeros(1)) == () and qkv.read_next()
    monkeypatch.setattr(QuantLinear, "read_next_hint", lambda self, x: self.read_next())
    seen = []
    real = reference.quant_linear

    def recording(x, w, read_next=(), row_norm=None):
        seen.append((w.qweight.data_ptr(), tuple(t.data_ptr() for t in read_next)))
        return real(x, w, read_next, row_norm)

    monkeypatch.setattr(reference, "quant_linear", recording)
    model(torch.tensor([[1, 2, 3]]))
    layer = model.layers[0]
    expected = (
        layer.self_attn.qkv_proj.qweight.data_ptr(),
        tuple(t.data_ptr() for t in weight_tensors(layer.self_attn.o_proj)),
    )
    assert seen[0] == expected
    assert len(seen) == 4 * len(model.layers)  # the reference composes the fused ops from quant_linear
    assert all(nxt for _, nxt in seen[:-1])
