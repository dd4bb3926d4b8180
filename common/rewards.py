"""Rewards: scores of clean states, higher is better, with optional per-sample targets.

A reward maps a batch of clean states ``x (B, N, C)`` with ``mask (B, N)`` — and, for rewards that
condition on labels, targets ``y (B, P)`` in label units with ``y_mask (B, P)`` saying which targets
are conditioned — to ``r (B,)``. ``differentiable`` says whether ``r`` can be back-propagated to ``x``
(RGDM and CTRL pick their estimator from it).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def gaussian_log_density(y: Tensor, mean: Tensor, scale: Tensor, keep: Tensor, tail: float | None = None) -> Tensor:
    """Σ_k keep_k · log N(y_k; mean_k, scale_k²) over the last dimension; entries not kept may be NaN.

    With ``tail = c`` the quadratic −½z² becomes linear beyond |z| = c, −c|z| + ½c² (Huber's density:
    a Gaussian core with exponential tails, unnormalised), so that a wildly wrong prediction costs
    O(|z|) and its gradient stays bounded by c/s."""
    y = torch.where(keep, y.to(mean.dtype), torch.zeros((), dtype=mean.dtype, device=mean.device))
    z = (y - mean) / scale
    penalty = 0.5 * z.square()
    if tail is not None:
        penalty = torch.where(z.abs() <= tail, penalty, tail * z.abs() - 0.5 * tail**2)
    return ((-penalty - scale.log() - 0.5 * math.log(2 * math.pi)) * keep).sum(-1)


class Reward(nn.Module):
    """Base class: ``forward(x (B, N, C), mask (B, N), y (B, P) | None, y_mask (B, P) | None) -> (B,)``."""

    differentiable: bool = True

    def forward(self, x: Tensor, mask: Tensor, y: Tensor | None = None, y_mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class GaussianLogLikelihood(Reward):
    """log p(y | x) of a calibrated regressor: Σ_k m_k · log N(y_k; f_k(x), s_k²).

    With z_k = (y_k − f_k(x)) / s_k each used column contributes −½ z_k² − log s_k − ½ log 2π;
    columns with ``y_mask`` false contribute 0 (their targets may be anything, NaN included).

    Args:
        regressor: ``regressor(x (B, N, C), mask (B, N)) -> (B, P_all)`` predicted means, label units.
        scale: calibrated standard deviation s of each used column, ``(P,)``, positive.
        columns: the regressor outputs used, in the order of y's columns (default: all, P = P_all).
        target_columns: where those targets sit in a wider y (e.g. one column per property of the
            domain, so that rewards of separately trained predictors compose on one y); default: y
            has exactly the P columns.
        tail: Huber threshold c in units of s (see :func:`gaussian_log_density`; None: Gaussian).
    """

    def __init__(self, regressor: nn.Module, scale: Tensor | Sequence[float], columns: Sequence[int] | None = None,
                 target_columns: Sequence[int] | None = None, tail: float | None = None):
        super().__init__()
        self.tail = tail
        scale = torch.as_tensor(scale, dtype=torch.float32).flatten()
        if not bool((scale > 0).all()):
            raise ValueError(f"scale must be positive, got {scale.tolist()}")
        if columns is not None and len(columns) != len(scale):
            raise ValueError(f"{len(columns)} columns but {len(scale)} scales")
        self.regressor = regressor
        if target_columns is not None and len(target_columns) != len(scale):
            raise ValueError(f"{len(target_columns)} target columns but {len(scale)} scales")
        self.columns = None if columns is None else list(columns)
        self.target_columns = None if target_columns is None else list(target_columns)
        self.register_buffer("scale", scale)

    @property
    def n_targets(self) -> int:
        """P, the number of target columns."""
        return len(self.scale)

    def forward(self, x: Tensor, mask: Tensor, y: Tensor | None = None, y_mask: Tensor | None = None) -> Tensor:
        return self.log_likelihood(self.predict(x, mask), y, y_mask)

    def predict(self, x: Tensor, mask: Tensor) -> Tensor:
        """The regressor's means of the used columns, ``(B, P)``."""
        mean = self.regressor(x, mask)
        if self.columns is not None:
            mean = mean[..., self.columns]
        if mean.shape[-1] != self.n_targets:
            raise ValueError(f"regressor gives {mean.shape[-1]} outputs, the reward has {self.n_targets} scales")
        return mean

    def log_likelihood(self, mean: Tensor, y: Tensor | None, y_mask: Tensor | None = None,
                       scale: Tensor | None = None) -> Tensor:
        """log p(y | x) from predicted means ``(..., P)`` and targets ``(..., P_y)``, broadcast over the
        leading dimensions (e.g. ``mean (1, M, P)`` against ``y (B, 1, P_y)`` gives all pairs ``(B, M)``);
        ``scale`` (broadcast like ``mean``) replaces the calibrated s."""
        if y is None:
            raise ValueError("GaussianLogLikelihood needs targets y of shape (B, P); got None")
        y, y_mask = self._target_view(y), None if y_mask is None else self._target_view(y_mask)
        if y.shape[-1] != self.n_targets:
            raise ValueError(f"targets have {y.shape[-1]} columns, the reward uses {self.n_targets}")
        keep = torch.ones_like(y, dtype=torch.bool) if y_mask is None else y_mask.bool()
        scale = self.scale if scale is None else scale
        return gaussian_log_density(y, mean, scale.to(mean.dtype), keep, self.tail)

    def _target_view(self, y: Tensor) -> Tensor:
        """The reward's own columns of a (possibly wider) target tensor."""
        return y if self.target_columns is None else y[..., self.target_columns]

    def denoised_log_likelihood(self, x0: Tensor, mask: Tensor, y: Tensor, y_mask: Tensor | None,
                                variance: Tensor) -> Tensor:
        """log N(y_k; f_k(x̂₀), s_k² + v·‖∇f_k(x̂₀)‖²) summed over the used columns, ``(B,)``.

        The likelihood of y given a noisy state whose denoised estimate ``x0 (B, N, C)`` (in the graph
        of the state) leaves x a per-coordinate variance ``variance (B,)``: f linearised at x̂₀, so
        f(x) ~ N(f(x̂₀), v‖∇f‖²) adds to the regressor's own s² (ΠGDM's approximation). ∇f is held fixed
        when this is differentiated; one backward pass through the regressor per column some row conditions."""
        mean = self.predict(x0, mask)
        dims = tuple(range(1, x0.dim()))
        used = self._target_view(y_mask).bool().any(0) if y_mask is not None else torch.ones(mean.shape[-1], dtype=torch.bool)
        squared = torch.zeros_like(mean)
        for k in torch.nonzero(used).view(-1).tolist():
            grad = torch.autograd.grad(mean[:, k].sum(), x0, retain_graph=True)[0]
            squared[:, k] = grad.square().sum(dims).detach()
        scale = (self.scale.to(mean.dtype).square() + variance.view(-1, 1).to(mean.dtype) * squared).sqrt()
        return self.log_likelihood(mean, y, y_mask, scale)


def reward_where(reward: Reward, keep: Tensor, x: Tensor, mask: Tensor, y: Tensor | None = None,
                 y_mask: Tensor | None = None) -> Tensor:
    """``(B,)``: the reward of the rows ``keep (B,)`` selects, −inf elsewhere; only those rows are scored
    (a costly judge, e.g. physics, never sees a rejected sample)."""
    keep = keep.to(x.device)
    r = torch.full(keep.shape, -torch.inf, dtype=x.dtype, device=x.device)
    if keep.any():
        r[keep] = reward(x[keep], mask[keep], *(None if v is None else v[keep] for v in (y, y_mask))).to(r)
    return r


class WeightedSum(Reward):
    """Σ_i w_i · r_i(x, mask, y, y_mask); differentiable iff every term is."""

    def __init__(self, terms: Sequence[tuple[float, Reward]]):
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one (weight, reward) term")
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList(r for _, r in terms)
        self.differentiable = all(r.differentiable for r in self.terms)

    def forward(self, x: Tensor, mask: Tensor, y: Tensor | None = None, y_mask: Tensor | None = None) -> Tensor:
        return sum(w * r(x, mask, y, y_mask) for w, r in zip(self.weights, self.terms))
