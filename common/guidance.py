"""Sampling-time guidance baselines: the prior's ε shifted by the gradient of a log-likelihood.

With ε̂ = −σ_t ∇ log p_t(z), a conditional sampler needs ∇ log p_t(z | y) = ∇ log p_t(z) + ∇ log p_t(y | z),
    ε̃(z_t) = ε̂(z_t) − w·σ_t·∇_z log p_t(y | z_t)     (w: guidance scale, 1 = the exact conditional).
Two ways to get p_t(y | z_t):

* ``classifier`` — a noise-aware predictor ``log_likelihood(z_t, t, mask)`` trained on noisy states
  (classifier guidance, Dhariwal & Nichol 2021);
* ``reconstruction`` — the clean-data likelihood read on the denoised estimate,
  log p(y | x̂₀(z_t)), differentiated through the denoiser (no noisy predictor needed).
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
                 scale: float = 1.0, mode: str = "reconstruction"):
        super().__init__()
        if mode not in ("classifier", "reconstruction"):
            raise ValueError(f"mode must be 'classifier' or 'reconstruction', got {mode!r}")
        self.denoiser, self.diffusion, self.log_likelihood = denoiser, diffusion, log_likelihood
        self.scale, self.mode = scale, mode

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
        shifted = eps.detach() - self.scale * sigma * grad
        return self.diffusion.space.project(shifted, mask)
