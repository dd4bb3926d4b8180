"""DDPO (Black et al., 2023): policy-gradient fine-tuning with PPO's clipped importance ratio.

Each reverse step is a Gaussian policy p_θ(z_s | z_t). Trajectories are sampled once with the current
weights (θ_old), then several updates maximise, per step,
    E[ min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A) ],   ρ = p_θ(z_s | z_t) / p_θold(z_s | z_t),
with A the reward standardised over the batch. No KL to the prior: the baseline that CTRL's
regulariser is measured against.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.diffusion import Denoiser, GaussianDiffusion


@dataclass
class Trajectories:
    """Sampled states ``z_{t_0} … z_{t_K}, x`` (each ``(B, N, D)``), the transitions, old log-probabilities
    ``(K + 1, B)``, and what the model was conditioned on."""

    states: list[torch.Tensor]
    steps: list[tuple[torch.Tensor, torch.Tensor | None]]
    log_probs: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor | None

    @property
    def x(self) -> torch.Tensor:
        return self.states[-1]


@torch.no_grad()
def sample_trajectories(diffusion: GaussianDiffusion, model: Denoiser, mask: torch.Tensor, n_channels: int,
                        n_sampling_steps: int | None = 50, cond: torch.Tensor | None = None,
                        generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Trajectories:
    z = diffusion.initial_state(mask, n_channels, generator, dtype)
    steps = diffusion.transitions(n_sampling_steps, len(mask), mask.device)
    states, log_probs = [z], []
    for t, s in steps:
        mean, std = diffusion.moments(model, z, t, s, mask, cond)
        z = diffusion.draw(mean, std, mask, generator)
        log_probs.append(diffusion.step_log_prob(z, mean, std, mask))
        states.append(z)
    return Trajectories(states, steps, torch.stack(log_probs), mask, cond)


def ddpo_loss(diffusion: GaussianDiffusion, model: Denoiser, trajectories: Trajectories, rewards: torch.Tensor,
              step_indices: list[int], clip: float = 1e-4) -> torch.Tensor:
    """Clipped surrogate loss (to minimise) over the transitions ``step_indices``; ``rewards (B,)``."""
    advantages = (rewards - rewards.mean()) / rewards.std().clamp(min=1e-8)
    losses = []
    for k in step_indices:
        t, s = trajectories.steps[k]
        z, z_next = trajectories.states[k], trajectories.states[k + 1]
        mean, std = diffusion.moments(model, z, t, s, trajectories.mask, trajectories.cond)
        ratio = torch.exp(diffusion.step_log_prob(z_next, mean, std, trajectories.mask) - trajectories.log_probs[k])
        surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
        losses.append(-surrogate.mean())
    return torch.stack(losses).mean()
