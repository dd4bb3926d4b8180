"""Sampling-time guidance baselines: the prior's ε shifted by the gradient of a log-likelihood.

With ε̂ = −σ_t ∇ log p_t(z), a conditional sampler needs ∇ log p_t(z | y) = ∇ log p_t(z) + ∇ log p_t(y | z),
    ε̃(z_t) = ε̂(z_t) − w·σ_t·∇_z log p_t(y | z_t)     (w: guidance scale, 1 = the exact conditional).
Two ways to get p_t(y | z_t):

* ``classifier`` — a noise-aware predictor ``log_likelihood(z_t, t, mask)`` trained on noisy states
  (classifier guidance, Dhariwal & Nichol 2021);
* ``reconstruction`` — the clean-data likelihood read on the denoised estimate,
  log p(y | x̂₀(z_t)), differentiated through the denoiser (no noisy predictor needed).

The shift is clipped per sample to a root-mean-square of ``max_shift`` per degree of freedom (the
scale of ε itself); ``None`` turns the clip off.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from common.diffusion import Denoiser, GaussianDiffusion

#: ``(z or x̂₀ (B, N, D), t = step/T (B,), mask (B, N)) -> log-likelihood (B,)``
LogLikelihood = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class GuidedDenoiser(nn.Module):
    """A :class:`~common.diffusion.Denoiser` whose ε is shifted by ``scale``·σ_t·∇ log p(y | ·)."""

    def __init__(self, denoiser: Denoiser, diffusion: GaussianDiffusion, log_likelihood: LogLikelihood,
                 scale: float = 1.0, mode: str = "reconstruction", max_shift: float | None = 1.0):
        super().__init__()
        if mode not in ("classifier", "reconstruction"):
            raise ValueError(f"mode must be 'classifier' or 'reconstruction', got {mode!r}")
        self.denoiser, self.diffusion, self.log_likelihood = denoiser, diffusion, log_likelihood
        self.scale, self.mode, self.max_shift = scale, mode, max_shift

    def forward(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        step = (t * self.diffusion.n_steps).round().long()
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            eps = self.denoiser(z, t, mask, cond)
            if self.mode == "reconstruction":
                x0 = self.diffusion.predict_x0(z, eps, step)
                ll = self.log_likelihood(x0, t, mask)
            else:
                ll = self.log_likelihood(z, t, mask)
            (grad,) = torch.autograd.grad(ll.sum(), z)
        sigma = self.diffusion.schedule.sigma(self.diffusion.schedule.gamma(step)).to(z.dtype).view(-1, 1, 1)
        shift = self.diffusion.space.project(self.scale * sigma * torch.nan_to_num(grad), mask)
        if self.max_shift is not None:  # at high noise x̂₀ = (z − σε̂)/α amplifies gradients by 1/α
            dims = self.diffusion.space.dims(mask, z.shape[-1]).to(z.dtype).view(-1, 1, 1)
            rms = shift.square().sum((1, 2), keepdim=True).div(dims).sqrt()
            shift = shift * torch.clamp(self.max_shift / rms.clamp(min=1e-12), max=1.0)
        return self.diffusion.space.project(eps.detach() - shift, mask)


class ConditionScaled(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) of a conditioned denoiser whose empty condition
    (c = 0: nothing conditioned, so t·W_c c = 0) is its unconditional branch:

        ε̃(z, t, c) = ε(z, t, 0) + w·(ε(z, t, c) − ε(z, t, 0)),

    w = 1 is the model itself; w > 1 sharpens p(x | c) towards ∝ p(x)·p(c | x)^w. Two network calls per step.
    """

    def __init__(self, denoiser: Denoiser, scale: float):
        super().__init__()
        self.denoiser, self.scale = denoiser, scale

    def forward(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition")
        eps = self.denoiser(torch.cat([z, z]), torch.cat([t, t]), torch.cat([mask, mask]),
                            torch.cat([cond, torch.zeros_like(cond)]))
        conditional, unconditional = eps.chunk(2)
        return unconditional + self.scale * (conditional - unconditional)


def classifier_free(denoiser: Denoiser, scale: float) -> ConditionScaled | None:
    """The denoiser to sample a conditioned model with at guidance scale w: None (the model itself)
    for w = 1, :class:`ConditionScaled` otherwise."""
    return None if scale == 1.0 else ConditionScaled(denoiser, scale)
