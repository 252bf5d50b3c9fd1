"""Moving the act-order permutations of a GPTQ model out of its forward.

An act-order (desc_act) linear reads its input permuted, x[:, perm] @ W_sorted (engine/quant/layout.py):
exlsp's own GPTQ writes one on every linear. Done as a gather before each GEMV, a decode step has four
more kernels per layer, ordinary launches that also break the GEMVs' early start (PDL): on an H100,
Llama-3-8B shape at 2k, 283 tok/s against 400 without permutations (bench/NOTES.md 46). They cost
nothing when moved to where their input is made, with the same values in the same places:
  - q|k|v and gate|up read the output of an RMSNorm: the norm writes it in their order (ops.rms_norm
    out_perm), and the linear keeps no permutation;
  - o reads the attention's output: the attention writes each element to its place in o's order
    (ops.paged_attention out_order);
  - down reads silu(gate) * up, element by element: gate|up's output columns, gate and up alike,
    are reordered by down's permutation, and down keeps none.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.layers.attention import Attention
from engine.layers.linear import QuantLinear
from engine.layers.norm import RMSNorm


def fold_act_order(layers: nn.ModuleList) -> None:
    """In place, for each decoder layer (input_layernorm, self_attn with qkv_proj and o_proj,
    post_attention_layernorm, mlp.gate_up_proj, mlp.down_proj); a part of another kind is left as
    it is."""
    for layer in layers:
        _into_norm(layer.input_layernorm, layer.self_attn.qkv_proj)
        _into_attention(layer.self_attn)
        _into_norm(layer.post_attention_layernorm, layer.mlp.gate_up_proj)
        _into_columns(layer.mlp.gate_up_proj, layer.mlp.down_proj)


def _into_norm(norm: nn.Module, linear: nn.Module) -> None:
    if isinstance(norm, RMSNorm) and isinstance(linear, QuantLinear) and linear.perm is not None:
        norm.set_output_order(linear.perm)
        _drop_perm(linear)


def _into_attention(attention: nn.Module) -> None:
    o_proj = attention.o_proj
    if isinstance(attention, Attention) and isinstance(o_proj, QuantLinear) and o_proj.perm is not None:
        attention.set_output_order(o_proj.perm)
        _drop_perm(o_proj)


def _into_columns(gate_up: nn.Module, down: nn.Module) -> None:
    """down's permutation applied to gate|up's output columns (each half: gate i pairs with up i)."""
    if not (isinstance(down, QuantLinear) and down.perm is not None):
        return
    perm = down.perm.to(torch.int64)
    inter = down.in_features
    cols = torch.cat([perm, perm + inter])
    if not (isinstance(gate_up, QuantLinear) and gate_up.out_features == 2 * inter):
        return  # a float or split gate|up: down keeps its permutation
    cols = cols.to(gate_up.qweight.device)
    gate_up.qweight = gate_up.canonical_qweight()  # (rows, N), not the GPU's column strips
    for name in ("qweight", "scales", "zeros"):  # (rows, N): columns are output features
        setattr(gate_up, name, getattr(gate_up, name)[:, cols].contiguous())
    if gate_up.bias is not None:
        gate_up.bias = gate_up.bias[cols].contiguous()
    gate_up._prepared = None
    _drop_perm(down)


def _drop_perm(linear: QuantLinear) -> None:
    linear.perm = None
    linear._prepared = None  # prepared again, without the permutation, on the next call
