"""Steered generation of shapes: sequential Monte Carlo (:mod:`common.smc`) from the shape prior towards
p_pre(x)·exp(r(x; y)/τ), r the shape reward (the reward classifier's log-probability of the class and the
attributes' tolerance likelihoods, :class:`shapectrl.reward.ShapeReward`), read on x̂₀ along the chain.

The proposal is the prior itself, or a controlled model (RGDM, CTRL, label-as-input), optionally with
classifier-free guidance. Each output cloud comes from its own system of K particles: drawn by the final
weights, or that system's best particle (``pick``, :mod:`common.smc`).
"""
from __future__ import annotations

import torch

from common.diffusion import ANCESTRAL, Solver
from common.guidance import classifier_free
from common.smc import (
    SMCResult,
    SteeringReport,
    model_proposal,
    particles,
    reward_potential,
    smc_in_batches,
    smc_sample,
)
from shapectrl.control import ControlledShapes
from shapectrl.prior import ShapeDiffusion
from shapectrl.reward import ShapeReward


@torch.no_grad()
def steer_shapes(prior: ShapeDiffusion, reward: ShapeReward, y: torch.Tensor, y_mask: torch.Tensor, n_points: int,
                 n_particles: int = 16, n_sampling_steps: int | None = 50, proposal: ControlledShapes | None = None,
                 guidance_scale: float = 1.0, temperature: float = 1.0, potential_from: int = 400,
                 generator: torch.Generator | None = None, batch_particles: int = 256, on_batch=None,
                 solver: Solver = ANCESTRAL, pick: str = "sample") -> tuple[torch.Tensor, SteeringReport]:
    """One cloud per target row ``y, y_mask (B, 1 + A)``, from ``n_particles`` particles each, moved by
    the prior or by ``proposal`` (at ``guidance_scale``), towards p_pre·exp(r/``temperature``); systems run
    ``batch_particles`` particles at a time, ``on_batch(k)`` after each batch of k clouds; ``solver``: the
    steps' grid and order; ``pick``: each system's output (:data:`common.smc.PICKS`). ``-> (clouds (B, N, 3)``
    normalised, on the CPU``, report)``."""
    device = next(prior.parameters()).device

    def run(rows: slice) -> SMCResult:
        yb, mb = (particles(v[rows].to(device), n_particles) for v in (y, y_mask))
        mask = torch.ones(len(yb) // n_particles, n_points, dtype=torch.bool, device=device)
        kernel = None
        if proposal is not None:
            net = classifier_free(proposal.model.denoiser, guidance_scale) or proposal.model.denoiser
            kernel = model_proposal(net, proposal.conditions.encode(yb, mb), 1 if guidance_scale == 1.0 else 2)
        potential = reward_potential(reward, prior.diffusion, yb, mb)
        return smc_sample(prior.diffusion, prior.denoiser, potential, mask, prior.n_channels, n_particles,
                          n_sampling_steps, kernel, temperature, potential_from, generator=generator,
                          solver=solver, pick=pick)

    results, report = smc_in_batches(run, len(y), max(1, batch_particles // n_particles), on_batch)
    return torch.cat([r.x.cpu() for r in results]), report
