"""Steered generation of shapes: sequential Monte Carlo (:mod:`common.smc`) from the shape prior towards
p_pre(x)·exp(r(x; y)), r the shape reward (the reward classifier's log-probability of the class and the
attributes' tolerance likelihoods, :class:`shapectrl.reward.ShapeReward`), read on x̂₀ along the chain.

The proposal is the prior itself, or a controlled model (RGDM, CTRL, label-as-input), optionally with
classifier-free guidance. Each output cloud is drawn from its own system of K particles.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.guidance import classifier_free
from common.smc import model_proposal, particles, reward_potential, smc_sample
from shapectrl.control import ControlledShapes
from shapectrl.prior import ShapeDiffusion
from shapectrl.reward import ShapeReward


@dataclass
class SteeredShapes:
    """Clouds ``(B, N, 3)`` (normalised frame, CPU), each one's reward ``(B,)`` and final log-weight
    ``(B,)``, each system's mean ESS ``(B,)``, and the denoiser evaluations per cloud."""

    clouds: torch.Tensor
    reward: torch.Tensor
    log_weight: torch.Tensor
    ess: torch.Tensor
    network_calls: int


@torch.no_grad()
def steer_shapes(prior: ShapeDiffusion, reward: ShapeReward, y: torch.Tensor, y_mask: torch.Tensor, n_points: int,
                 n_particles: int = 16, n_sampling_steps: int | None = 50, proposal: ControlledShapes | None = None,
                 guidance_scale: float = 1.0, potential_from: int = 400, generator: torch.Generator | None = None,
                 batch_particles: int = 256, on_batch=None) -> SteeredShapes:
    """One cloud per target row ``y, y_mask (B, 1 + A)``, from ``n_particles`` particles each, moved by
    the prior or by ``proposal`` (at ``guidance_scale``); systems run ``batch_particles`` particles at
    a time, ``on_batch(k)`` after each batch of k clouds."""
    device = next(prior.parameters()).device
    per_batch = max(1, batch_particles // n_particles)
    parts = []
    for start in range(0, len(y), per_batch):
        yb, mb = (particles(v[start : start + per_batch].to(device), n_particles) for v in (y, y_mask))
        mask = torch.ones(len(yb) // n_particles, n_points, dtype=torch.bool, device=device)
        kernel = None
        if proposal is not None:
            net = classifier_free(proposal.model.denoiser, guidance_scale) or proposal.model.denoiser
            kernel = model_proposal(net, proposal.conditions.encode(yb, mb), 1 if guidance_scale == 1.0 else 2)
        result = smc_sample(prior.diffusion, prior.denoiser, reward_potential(reward, prior.diffusion, yb, mb), mask, 3,
                            n_particles, n_sampling_steps, kernel, potential_from=potential_from, generator=generator)
        parts.append(result)
        if on_batch:
            on_batch(len(mask))
    return SteeredShapes(torch.cat([r.x.cpu() for r in parts]), torch.cat([r.reward.float().cpu() for r in parts]),
                         torch.cat([r.output_log_weight.float().cpu() for r in parts]),
                         torch.cat([r.mean_ess.float().cpu() for r in parts]), parts[0].network_calls)
