"""GPTQ (Frantar et al., 2022): quantize a linear layer's weight column by column, pushing each
column's rounding error onto the columns not yet quantized so that the layer's output on the
calibration inputs moves as little as possible.

The objective of one layer with weight W (N, K) and calibration inputs X (K, num_samples) is
||(W - W_hat) X||^2, whose Hessian in each row of W is H = 2 X X^T (K, K). `Hessian` accumulates
it from batches of activations; `gptq_quantize` consumes it. Pure torch: runs where the tensors are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.quant.rtn import (
    Grid,
    QuantizedWeight,
    QuantSpec,
    dequantize_codes,
    find_grid,
    quantize_codes,
)

HESSIAN_BLOCK = 512  # rows of H per matmul when accumulating only its upper block triangle


class Hessian:
    """H = 2/n * sum_i x_i x_i^T over all n rows seen so far, accumulated in float32.

    The mean (not the sum) keeps H's scale independent of the number of calibration tokens, which
    matters for the dampening term: it is a fraction of mean(diag(H)). H is symmetric, so `add` only
    computes the blocks on and above the diagonal (55% of the multiply-adds of the full X^T X at
    K = 4864, the down_proj input that dominates the quantizer's time); `matrix` mirrors them.
    """

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        self.in_features = in_features
        self._sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)  # upper blocks
        self.num_samples = 0

    def add(self, x: torch.Tensor) -> None:
        """x: (..., K) activations entering the layer."""
        k = self.in_features
        x = x.reshape(-1, k).to(self._sum.device, torch.float32)  # (n, K)
        for r0 in range(0, k, HESSIAN_BLOCK):
            r1 = min(r0 + HESSIAN_BLOCK, k)
            self._sum[r0:r1, r0:].addmm_(x[:, r0:r1].t(), x[:, r0:])  # (R, K - r0)
        self.num_samples += x.shape[0]

    @property
    def matrix(self) -> torch.Tensor:
        """(K, K) float32, a new tensor on each read."""
        upper = torch.triu(self._sum)
        h = upper + torch.triu(self._sum, diagonal=1).t()
        return h.mul_(2.0 / max(self.num_samples, 1))


class OutputShift:
    """Delta = 2/n * sum_i W (xf_i - x_i) x_i^T (N, K): for one linear W (N, K), how the outputs the
    float model computes (W xf_i, on the float model's inputs xf_i) differ from what W computes on
    the quantized model's inputs x_i, correlated with those inputs. Same 2/n scale as `Hessian`.

    With it, the "asymmetric" objective ||W Xf - W_hat X||^2 (hit the float model's outputs from the
    inputs the quantized layer will really see, as in GPTAQ and Qronos) becomes ordinary GPTQ on a
    shifted weight, see `float_target_weight`. Two ways to the same sum, whichever is cheaper per
    token: the (K, K) cross matrix sum (xf - x) x^T, multiplied by W at the end (K^2 multiply-adds
    per token: q/k/v, o, gate/up), or W (xf - x) first, then its outer product with x (2 N K:
    down_proj, K = 4864 inputs for N = 896 outputs).
    """

    def __init__(self, weight: torch.Tensor, device: torch.device | str | None = None) -> None:
        n, k = weight.shape
        self.in_features = k
        self.weight = weight.detach().to(device, torch.float32)
        self.by_cross = k < 2 * n
        self._sum = torch.zeros(k if self.by_cross else n, k, dtype=torch.float32, device=device)
        self._extra: torch.Tensor | None = None  # (N, K) sum of extra output drifts times x^T
        self.num_samples = 0

    def add(self, x_float: torch.Tensor, x: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        """x_float, x: (..., K) the float model's and the quantized model's inputs, token for token.
        extra: (..., N) an output drift to cancel as well (the target becomes W xf + extra)."""
        k = self.in_features
        x = x.reshape(-1, k).to(self._sum.device, torch.float32)  # (n, K)
        d = x_float.reshape(-1, k).to(self._sum.device, torch.float32) - x  # (n, K)
        assert d.shape == x.shape, (d.shape, x.shape)
        if extra is not None:
            extra = extra.reshape(x.shape[0], -1).to(self._sum.device, torch.float32)  # (n, N)
        if self.by_cross:
            self._sum.addmm_(d.t(), x)  # (K, K)
            if extra is not None:
                if self._extra is None:
                    self._extra = torch.zeros(self.weight.shape, dtype=torch.float32, device=self._sum.device)
                self._extra.addmm_(extra.t(), x)  # (N, K)
        else:
            out = d @ self.weight.t()  # (n, N)
            if extra is not None:
                out += extra
            self._sum.addmm_(out.t(), x)  # (N, n) @ (n, K)
        self.num_samples += x.shape[0]

    @property
    def matrix(self) -> torch.Tensor:
        """(N, K) float32."""
        total = self.weight @ self._sum if self.by_cross else self._sum.clone()
        if self._extra is not None:
            total += self._extra
        return total.mul_(2.0 / max(self.num_samples, 1))


def float_target_weight(
    weight: torch.Tensor, hessian: torch.Tensor, shift: torch.Tensor, damp_percent: float, alpha: float = 1.0
) -> torch.Tensor:
    """W* = W + alpha * Delta (H + lambda I)^-1, with lambda = damp_percent * mean(diag(H)).

    At alpha = 1 this minimises ||W Xf - W* X||^2 + lambda/2 ||W* - W||^2 (a ridge pulled towards W,
    not 0, so that W* == W exactly where the inputs agree, Xf == X), and for every W_hat
    ||W Xf - W_hat X||^2 = ||(W* - W_hat) X||^2 + const (exactly at lambda 0): GPTQ of W* with
    H = 2 X X^T then minimises the asymmetric objective. Returns (N, K) float32.
    """
    h = hessian.to(torch.float32)
    lower = _dampened_cholesky(h, damp_percent)
    correction = torch.cholesky_solve(shift.to(h.device, torch.float32).t(), lower).t()  # (N, K)
    return weight.detach().to(h.device, torch.float32) + alpha * correction


def _dampened_cholesky(
    h: torch.Tensor, damp_percent: float, finish: Callable[[torch.Tensor], torch.Tensor | None] | None = None
) -> torch.Tensor:
    """finish(L) (default: L itself) for the lower Cholesky factor L of H + damp * mean(diag(H)) * I.

    If H is not positive definite (too few distinct inputs), or `finish` returns None, the dampening
    grows tenfold and the factorisation is tried again, up to six times."""
    k = h.shape[0]
    mean_diag = torch.mean(torch.diag(h)).item()
    eye = torch.eye(k, dtype=h.dtype, device=h.device)
    damp = damp_percent
    for _ in range(6):
        lower, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if info.item() == 0:
            result = lower if finish is None else finish(lower)
            if result is not None:
                return result
        damp *= 10
    raise RuntimeError(f"Hessian of a {k}-input layer is not positive definite even with damp {damp}")


def _inverse_cholesky_upper(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U) after dampening the diagonal.

    Row i of U, divided by U[i, i], is how quantizing column i must update the later columns; this
    is the sequential elimination of the GPTQ paper done once up front.
    """

    def upper_of_inverse(lower: torch.Tensor) -> torch.Tensor | None:
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
        return upper if info.item() == 0 else None

    return _dampened_cholesky(h, damp_percent, upper_of_inverse)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Quantize `weight` (N, K) given the Hessian (K, K) of its calibration inputs."""
    n, k = weight.shape
    assert hessian.shape == (k, k), (hessian.shape, weight.shape)
    group_size = spec.group_size_for(k)
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group size {group_size}")
    maxq = spec.maxq
    w = weight.detach().to(hessian.device, torch.float32).clone()  # (N, K)
    h = hessian.to(torch.float32).clone()

    # An input that is always zero carries no information: pin its weights to 0 and keep H invertible.
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    if spec.act_order:
        perm = torch.argsort(torch.diag(h), descending=True)  # (K,) big-influence columns first
        w = w[:, perm]
        h = h[perm][:, perm]
    else:
        perm = torch.arange(k, device=w.device)

    u = _inverse_cholesky_upper(h, spec.damp_percent)  # (K, K)
    codes = torch.zeros_like(w)  # (N, K) in visiting order
    scales: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []
    grid: Grid | None = None

    for b0 in range(0, k, spec.block_size):
        b1 = min(b0 + spec.block_size, k)
        w_block = w[:, b0:b1].clone()  # (N, B) updated as the block's columns get quantized
        err_block = torch.zeros_like(w_block)  # (N, B) scaled errors, applied to the rest at the end
        u_block = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:
                # The group's grid comes from its columns as they are now, error updates included.
                rest = group_size - (b1 - b0 - i)  # columns of the group beyond this block
                group = torch.cat([w_block[:, i : i + group_size], w[:, b1 : b1 + max(rest, 0)]], dim=1)
                grid = find_grid(group, spec)
                scales.append(grid.scale)
                zeros.append(grid.zero)
            assert grid is not None
            q = quantize_codes(w_block[:, i], grid, maxq)  # (N,)
            codes[:, col] = q
            err = (w_block[:, i] - dequantize_codes(q, grid)) / u_block[i, i]  # (N,)
            w_block[:, i:] -= err.unsqueeze(1) * u_block[i, i:].unsqueeze(0)
            err_block[:, i] = err
        w[:, b1:] -= err_block @ u[b0:b1, b1:]  # lazy batch update of all later columns

    inv_perm = torch.argsort(perm)
    g_idx = (torch.arange(k, device=w.device) // group_size)[inv_perm]  # group of each input feature
    q = QuantizedWeight(
        codes=codes[:, inv_perm].t().to(torch.int32).contiguous(),
        scales=torch.stack(scales),
        zeros=torch.stack(zeros).to(torch.int32),
        g_idx=g_idx.to(torch.int32),
        bits=spec.bits,
        group_size=group_size,
    )
    if spec.refit_scales:
        h0 = h[inv_perm][:, inv_perm] if spec.act_order else h  # dead inputs' fix included
        w0 = weight.detach().to(h.device, torch.float32).clone()
        w0[:, dead] = 0.0
        q = refit_scales(q, w0, h0, spec.damp_percent)
    return q


def refit_scales(q: QuantizedWeight, weight: torch.Tensor, hessian: torch.Tensor, damp_percent: float):
    """The same codes and zeros with each row's group scales refit to the least (w - w_hat)^T H' (w - w_hat),
    H' = H + damp_percent * mean(diag(H)) I (the dampened Hessian GPTQ propagated its errors with).

    With codes and zeros fixed, row r's weight is linear in its G group scales: w_hat = A_r s_r,
    A_r[k, g] = (code[k] - zero[g]) if g_idx[k] == g. The optimum solves the (G, G) system
    A_r^T H' A_r s_r = A_r^T H' w_r, batched over rows. GPTQ picked each group's scale before most of
    its codes (the grid of the group's columns as they were when it started), so the codes it then
    chose may fit a slightly different scale better. A row keeps its old scales unless the new ones
    (rounded to fp16, as stored) lower its objective.
    """
    n, k = weight.shape
    h = hessian.to(torch.float32)
    h = h + damp_percent * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype, device=h.device)
    g_idx = q.g_idx.long().to(h.device)
    groups = q.scales.shape[0]
    member = torch.nn.functional.one_hot(g_idx, groups).to(h.dtype)  # (K, G)
    offsets = q.codes.t().float().to(h.device) - q.zeros.t().float().to(h.device)[:, g_idx]  # (N, K)
    rhs = ((weight @ h) * offsets) @ member  # (N, G): A_r^T H' w_r
    lhs = torch.empty(n, groups, groups, dtype=h.dtype, device=h.device)  # A_r^T H' A_r
    for g in range(groups):
        cols = torch.nonzero(g_idx == g).squeeze(1)
        lhs[:, g, :] = ((offsets[:, cols] @ h[cols, :]) * offsets) @ member  # (N, G)
    old = q.scales.t().float().to(h.device)  # (N, G)
    # A group whose codes all sit on its zero has no say in its scale: a tiny ridge keeps the old one.
    ridge = 1e-6 * lhs.diagonal(dim1=1, dim2=2).mean(dim=1).clamp(min=1e-30)  # (N,)
    eye = torch.eye(groups, dtype=h.dtype, device=h.device)
    new = torch.linalg.solve(lhs + ridge[:, None, None] * eye, (rhs + ridge[:, None] * old).unsqueeze(2))
    new = new.squeeze(2).half().float()  # (N, G) what an fp16 checkpoint stores
    new = torch.where(torch.isfinite(new) & (new > 0), new, old)

    def objective(scales: torch.Tensor) -> torch.Tensor:
        err = weight - offsets * scales[:, g_idx]  # (N, K)
        return ((err @ h) * err).sum(dim=1)  # (N,)

    better = objective(new) < objective(old)
    scales = torch.where(better[:, None], new, old)
    return QuantizedWeight(
        q.codes, scales.t().contiguous().to(q.scales.device), q.zeros, q.g_idx, q.bits, q.group_size
    )
