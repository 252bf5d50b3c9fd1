"""The prefill attention's pure parts on the CPU (engine/ops/cuda_prefill_attention.py): two parts
over disjoint keys merged by their log-sum-exps equal attention over all of them, and which kernel a
call goes to (the kernels themselves stood in for: their outputs are tests/kernels/test_attention.py's)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.ops import cuda_prefill_attention
from engine.ops.cuda_prefill_attention import merge_attention_parts


def attention_with_lse(q, k, v, scale, mask=None):
    """(out, lse) by the definition, in float64: q (B, H, T, D), k and v (B, H, L, D)."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    return torch.softmax(scores, dim=-1) @ v.double(), lse


@pytest.mark.parametrize("new,prefix", [(1, 1), (7, 30), (64, 64), (33, 500)])
def test_prefix_part_and_causal_square_merge_to_causal_attention_over_all_keys(new, prefix):
    """The split the cuDNN path makes for new tokens after a cached prefix: the prefix in full, the new
    tokens' own keys with a square causal mask."""
    gen = torch.Generator().manual_seed(new * 1000 + prefix)
    b, h, d, total = 1, 4, 16, prefix + new
    q = torch.randn((b, h, new, d), generator=gen)
    k = torch.randn((b, h, total, d), generator=gen)
    v = torch.randn((b, h, total, d), generator=gen)
    scale = d**-0.5
    bottom_right = torch.ones(new, total, dtype=torch.bool).tril(diagonal=prefix)
    expected, _ = attention_with_lse(q, k, v, scale, bottom_right)
    out_a, lse_a = attention_with_lse(q, k[:, :, :prefix], v[:, :, :prefix], scale)
    square = torch.ones(new, new, dtype=torch.bool).tril()
    out_b, lse_b = attention_with_lse(q, k[:, :, prefix:], v[:, :, prefix:], scale, square)
    merged = merge_attention_parts(out_a, lse_a, out_b, lse_b)
    assert merged.dtype == torch.float64
    torch.testing.assert_close(merged, expected, rtol=1e-12, atol=1e-12)


def test_a_part_without_keys_weighs_nothing():
    gen = torch.Generator().manual_seed(5)
    out_a, out_b = torch.randn((1, 2, 3, 8), generator=gen), torch.randn((1, 2, 3, 8), generator=gen)
    lse_a = torch.randn((1, 2, 3), generator=gen)
    lse_b = torch.full((1, 2, 3), -math.inf)
    torch.testing.assert_close(merge_attention_parts(out_a, lse_a, out_b, lse_b), out_a)


def test_merge_keeps_the_outputs_dtype():
    out = torch.ones((1, 1, 2, 4), dtype=torch.float16)
    lse = torch.zeros((1, 1, 2))
    merged = merge_attention_parts(out, lse, 3 * out, lse)  # equal weights: the mean
    assert merged.dtype == torch.float16
    assert torch.equal(merged, torch.full_like(out, 2.0))


def test_an_unknown_kernel_is_refused_by_name():
    with pytest.raises(
        ValueError, match=r"prefill attention kernel must be one of \('flash', 'cudnn'\), got 'fa3'"
    ):
        cuda_prefill_attention.set_prefill_attention("fa3")


class StandIns:
    """The two kernels replaced by recorders; cuDNN's refuses while `refuse` is set and runs out of
    memory while `out_of_memory` is."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.shapes: list[tuple] = []  # cuDNN's calls: (q shape, q strides, k shape, k strides)
        self.refuse = False
        self.out_of_memory = False

    def cudnn(self, qh, kh, vh, scale):
        self.calls.append("cudnn")
        self.shapes.append((qh.shape, qh.stride(), kh.shape, kh.stride()))
        if self.refuse:
            raise RuntimeError("cuDNN Frontend error: no valid execution plan")
        if self.out_of_memory:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return qh

    def flash(self, qh, kh, vh, scale):
        self.calls.append("flash")
        return qh


@pytest.fixture
def stand_ins(monkeypatch):
    """The kernels stood in for, the module's state restored after."""
    module = cuda_prefill_attention
    fakes = StandIns()
    monkeypatch.setattr(module, "_causal_cudnn", fakes.cudnn)
    monkeypatch.setattr(module, "_causal_flash", fakes.flash)
    monkeypatch.setattr(module, "_cudnn_ok", True)
    monkeypatch.setattr(module, "_kernel", "cudnn")
    return fakes


def queries(n: int) -> torch.Tensor:
    return torch.zeros((1, 2, n, 8))


def test_short_calls_stay_on_flash_and_long_ones_take_cudnn(stand_ins):
    attend = cuda_prefill_attention.causal_attention
    keys = torch.zeros((1, 1, 4096, 8))
    attend(queries(cuda_prefill_attention.CUDNN_MIN_QUERIES - 1), keys, keys, 1.0)
    assert stand_ins.calls == ["flash"] and cuda_prefill_attention.last_kernel == "flash"
    attend(queries(cuda_prefill_attention.CUDNN_MIN_QUERIES), keys, keys, 1.0)
    assert stand_ins.calls == ["flash", "cudnn"] and cuda_prefill_attention.last_kernel == "cudnn"
    cuda_prefill_attention.set_prefill_attention("flash")
    attend(queries(2048), keys, keys, 1.0)
    assert stand_ins.calls[-1] == "flash"


@pytest.mark.parametrize(
    "new,keys,kernel",
    [
        (2048, 2048, "cudnn"),  # a cold prompt's first whole chunk
        (2048, 6144, "cudnn"),  # a whole chunk after two others
        (512, 512, "cudnn"),
        (1000, 1000, "flash"),  # a cold prompt of another length: a new plan per length
        (1856, 8000, "flash"),  # a prompt's last, partial chunk
        (2048, 3000, "flash"),  # a whole chunk after a cached prefix of any length
        (256, 256, "flash"),  # whole, but short
    ],
)
def test_cudnn_takes_only_the_bounded_set_of_shapes_whose_plans_recur(stand_ins, new, keys, kernel):
    cuda_prefill_attention.causal_attention(queries(new), torch.zeros((1, 1, keys, 8)), None, 1.0)
    assert stand_ins.calls == [kernel] and cuda_prefill_attention.last_kernel == kernel


def test_a_refusal_by_cudnn_warns_once_and_flash_serves_every_later_call(stand_ins):
    attend = cuda_prefill_attention.causal_attention
    keys = torch.zeros((1, 1, 4096, 8))
    stand_ins.refuse = True
    with pytest.warns(RuntimeWarning, match="cuDNN attention refused a prefill .*no valid execution plan"):
        out = attend(queries(2048), keys, keys, 1.0)
    assert out.shape == (1, 2, 2048, 8)
    assert stand_ins.calls == ["cudnn", "flash"] and cuda_prefill_attention.last_kernel == "flash"
    attend(queries(2048), keys, keys, 1.0)
    assert stand_ins.calls == ["cudnn", "flash", "flash"]  # cuDNN not asked again


def test_running_out_of_memory_in_cudnn_fails_the_call_and_leaves_cudnn_on(stand_ins):
    """Out of memory is the request's failure, answered by the engine, not a refusal by cuDNN."""
    attend = cuda_prefill_attention.causal_attention
    keys = torch.zeros((1, 1, 4096, 8))
    stand_ins.out_of_memory = True
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate 64.00 MiB"):
        attend(queries(2048), keys, keys, 1.0)
    stand_ins.out_of_memory = False
    attend(queries(2048), keys, keys, 1.0)
    assert stand_ins.calls == ["cudnn", "cudnn"] and cuda_prefill_attention.last_kernel == "cudnn"


def test_warming_plans_calls_cudnn_on_every_whole_chunks_shape_as_prefill_lays_it_out(stand_ins):
    """The engine's chunks: 2048 new tokens after 0, 2048, 4096 and 6144 cached, with the shapes and
    strides prefill_attention gives cuDNN for them (q as the model hands it, K/V gathered from the
    paged cache): cuDNN keys its plans by strides too."""
    from engine.attention_metadata import AttentionMetadata

    heads, kv_heads, dim, block = 4, 2, 8, 16
    cache_layer = torch.zeros((2, 8192 // block, block, kv_heads, dim))
    for prefix in (0, 2048, 4096, 6144):
        attn = AttentionMetadata(
            query_start_loc=torch.tensor([0, 2048], dtype=torch.int32),
            seq_lens=torch.tensor([prefix + 2048], dtype=torch.int32),
            block_tables=torch.arange(8192 // block, dtype=torch.int32).view(1, -1),
            slot_mapping=torch.arange(prefix, prefix + 2048),
            max_query_len=2048,
            max_seq_len=prefix + 2048,
            block_size=block,
        )
        cuda_prefill_attention.prefill_attention(
            torch.zeros((2048, heads, dim)), cache_layer, attn, 1.0, None
        )
    served, stand_ins.shapes = stand_ins.shapes, []
    assert (
        cuda_prefill_attention.warm_cudnn_plans(heads, kv_heads, dim, torch.float32, 2048, 8192, "cpu") == 4
    )
    assert stand_ins.shapes == served and len(served) == 4
    assert (
        cuda_prefill_attention.warm_cudnn_plans(heads, kv_heads, dim, torch.float32, 1000, 8000, "cpu") == 0
    )
    cuda_prefill_attention.set_prefill_attention("flash")
    assert (
        cuda_prefill_attention.warm_cudnn_plans(heads, kv_heads, dim, torch.float32, 2048, 8192, "cpu") == 0
    )
    assert stand_ins.calls == ["cudnn"] * 8


def test_running_out_of_memory_while_warming_plans_warns_and_keeps_the_shapes_planned(stand_ins, monkeypatch):
    """A cache sized to the free memory may leave no room for the warm-up: it stops with a warning
    naming how far it got, the load goes on, and cuDNN stays on for the prompts."""
    warm = cuda_prefill_attention.warm_cudnn_plans
    calls = 0

    def out_of_memory_on_the_third(qh, kh, vh, scale):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return qh

    monkeypatch.setattr(cuda_prefill_attention, "_causal_cudnn", out_of_memory_on_the_third)
    with pytest.warns(
        RuntimeWarning,
        match=r"out of GPU memory while cuDNN planned the prefill chunks at load \(2 of 4 planned\)",
    ):
        assert warm(4, 2, 8, torch.float32, 2048, 8192, "cpu") == 2
    assert cuda_prefill_attention._cudnn_ok and cuda_prefill_attention._kernel == "cudnn"


def test_doctor_names_the_prefill_kernel_in_each_state(stand_ins, monkeypatch):
    """cuDNN with its rule where it serves; flash, and why, where it does not."""
    describe = cuda_prefill_attention.describe
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91900)
    assert describe() == (
        "cuDNN 91900 for 512+ new tokens in whole multiples of 256 (the engine's prefill chunks), "
        "torch's flash kernel otherwise"
    )
    monkeypatch.setattr(cuda_prefill_attention, "_cudnn_ok", False)
    assert describe() == "torch's flash kernel (cuDNN is missing or refused a call)"
    cuda_prefill_attention.set_prefill_attention("flash")
    assert describe() == "torch's flash kernel (chosen by set_prefill_attention)"
