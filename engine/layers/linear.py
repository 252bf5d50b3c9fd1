"""Linear layers: float, GPTQ-quantized (through ops.quant_linear), and a concatenation of several.

Weights arrive built by the loader (engine/loader.py), already fused where possible: q/k/v and gate/up
are one matrix whose output features are the parts side by side. x: (..., K) -> (..., N).

A QuantLinear may be told which linear the model reads after it (link_read_order): its GEMV then
hands that weight's tensors to the op as read_next, a hint a kernel uses to start fetching them
while the memory bus would otherwise idle (engine/ops/__init__.py).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from engine import ops
from engine.quant.layout import PackedWeight, from_column_strips


def _frozen(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t, requires_grad=False)


class Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = _frozen(weight)  # (N, K), the Hugging Face layout
        self.bias = _frozen(bias)  # (N,) or None

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class QuantLinear(nn.Module):
    """A PackedWeight kept as buffers (so `.to()` moves it); the op sees a PackedWeight prepared once
    per device by ops.prepare_quant_weight. Where the CUDA backend reads qweight in column strips
    (engine/quant/layout.py), the strips replace the canonical buffer, so the device holds one copy;
    moved back to the CPU, the buffer is canonical again."""

    def __init__(self, w: PackedWeight):
        super().__init__()
        self.bits, self.group_size = w.bits, w.group_size
        self.in_features, self.out_features = w.in_features, w.out_features
        self.register_buffer("qweight", w.qweight)
        self.register_buffer("scales", w.scales)
        self.register_buffer("zeros", w.zeros)
        self.register_buffer("perm", w.perm)
        self.register_buffer("bias", w.bias)
        self._prepared: PackedWeight | None = None
        # (owner, attribute name) of the linear read after this one, looked up per call so that a
        # module replaced or moved later (a quantized head, .to()) is the one named
        self._read_next: tuple[nn.Module, str] | None = None

    def set_read_next(self, owner: nn.Module, name: str) -> None:
        self._read_next = (owner, name)

    def read_next(self) -> tuple[torch.Tensor, ...]:
        """The tensors of the linear the model reads after this one, or () when none was linked."""
        if self._read_next is None:
            return ()
        owner, name = self._read_next
        return weight_tensors(owner._modules.get(name))  # the dicts, not nn.Module's slow __getattr__

    def read_next_hint(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """read_next() for an op on x: only a GPU kernel uses it, so a CPU forward skips the lookups."""
        return self.read_next() if x.is_cuda else ()

    def _apply(self, fn, recurse=True):
        self._prepared = None  # tensors moved or cast: prepare again on the next call
        module = super()._apply(fn, recurse)
        qweight = self._buffers["qweight"]
        if qweight.dim() == 3 and not qweight.is_cuda:  # column strips: only the GPU GEMV reads them
            self._buffers["qweight"] = from_column_strips(qweight)
        return module

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._buffers["qweight"].dim() == 3:  # a state dict holds the canonical layout, as files do
            destination[prefix + "qweight"] = self.canonical_qweight()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self._buffers["qweight"].dim() == 3 and prefix + "qweight" in state_dict:
            self._buffers["qweight"] = self.canonical_qweight()  # canonical words in; prepared anew
            self._prepared = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def canonical_qweight(self) -> torch.Tensor:
        """qweight in the canonical (K * bits // 32, N) layout (a copy where the buffer holds strips)."""
        qweight = self._buffers["qweight"]
        return from_column_strips(qweight) if qweight.dim() == 3 else qweight

    def packed(self) -> PackedWeight:
        if self._prepared is None:
            w = PackedWeight(
                self.bits, self.group_size, self.in_features, self.out_features,
                self.canonical_qweight(), self.scales, self.zeros, self.perm, self.bias,
            )  # fmt: skip
            self._prepared = ops.prepare_quant_weight(w)
            if self._prepared.qweight.dim() == 3:
                self._buffers["qweight"] = self._prepared.qweight  # the canonical words are freed
        return self._prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.quant_linear(x.reshape(-1, self.in_features), self.packed(), self.read_next_hint(x))  # (M, N)
        return y.reshape(*x.shape[:-1], self.out_features)


class ConcatLinear(nn.Module):
    """Several linears reading the same input whose outputs are concatenated: what a fused q/k/v or
    gate/up becomes when its parts cannot share one matrix (GPTQ act-order with different g_idx)."""

    def __init__(self, parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.out_features = sum(p.out_features for p in parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


def prepare_quant_linears(model: nn.Module) -> None:
    """Every QuantLinear's backend preparation now, at load: never inside a later CUDA graph capture,
    and on a GPU the column strips replace the canonical words before the KV cache is sized (the
    freed words go back to the device, not into torch's cache)."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.packed()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def weight_tensors(module: nn.Module | None) -> tuple[torch.Tensor, ...]:
    """What a linear's product reads, small tensors first (a prefetch limited in bytes then still
    covers the scales of the rows it reaches): () for anything that is not a linear."""
    if isinstance(module, QuantLinear):
        buffers = module._buffers
        return (buffers["scales"], buffers["zeros"], buffers["qweight"])
    if isinstance(module, Linear):
        return (module._parameters["weight"],)
    if isinstance(module, ConcatLinear):
        return weight_tensors(module.parts[0])
    return ()


def link_read_order(linears: list[tuple[nn.Module, str]]) -> None:
    """Tell each QuantLinear of `linears` (owner, attribute name), listed in the order a forward reads
    them, which one comes next."""
    for (owner, name), following in pairwise(linears):
        module = getattr(owner, name)
        if isinstance(module, QuantLinear):
            module.set_read_next(*following)
