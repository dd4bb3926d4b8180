"""Steered generation of molecules: sequential Monte Carlo (:mod:`common.smc`) towards
p_pre(x)·exp(r(x)/τ)·1[x valid], with the prior, the guided prior or a conditioned model as proposal.

The reward is the reward predictor's calibrated likelihood of the targets (r = log p̂(y | x), τ = 1:
the prior's own conditional) or an RDKit score to maximise (τ small: QED's spread over QM9 is ~0.1).
The final weight keeps only valid molecules (RDKit sanitisation of the largest fragment, the metric's
definition): the likelihood alone favours broken molecules whose predicted property happens to fit.
Each output molecule is drawn from its own system of K particles, so outputs never share an ancestor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.diffusion import ANCESTRAL, Solver
from common.guidance import GuidedDenoiser, reconstruction_likelihood, window_shares
from common.rewards import GaussianLogLikelihood, Reward
from common.smc import (
    Proposal,
    SMCResult,
    SteeringReport,
    guided_proposal,
    model_proposal,
    particles,
    reward_potential,
    smc_in_batches,
    smc_sample,
)
from molctrl.conditions import PropertyConditions
from molctrl.metrics import evaluate_molecule
from molctrl.molecule import Molecule
from molctrl.prior import MoleculeDiffusion

PROPOSALS = ("prior", "guidance", "rgdm", "ctrl")


@dataclass
class Steering:
    """How to steer: K particles per molecule, the proposal kernel, τ, where the potential starts (a
    diffusion step; it ramps to the full reward at t = 0), the ESS fraction that triggers resampling,
    and the guidance scale and window of the ``guidance`` proposal (diffusion steps lo < t ≤ hi)."""

    particles: int = 16
    proposal: str = "prior"
    temperature: float = 1.0
    potential_from: int = 400
    ess_threshold: float = 0.5
    guidance_scale: float = 1.0
    guidance_window: tuple[int, int] = (0, 1000)
    widened: bool = True  # the potential of a likelihood reward: widened by the posterior variance, or plain
    potential_every: int = 1  # read the potential at every m-th step where it is on (common.smc.smc_sample)
    pick: str = "sample"  # each system's output: drawn by the final weights, or "best": its highest final reward

    def __post_init__(self) -> None:
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.proposal!r} (expected one of {', '.join(PROPOSALS)})")


def admissible(model: MoleculeDiffusion):
    """``(x, mask) -> (B,) bool``: which states decode to valid molecules."""

    def valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.tensor([evaluate_molecule(k, m).valid if m.n_atoms else False
                             for k, m in enumerate(model.decode(x, mask))])

    return valid


def _proposal(steering: Steering, prior: MoleculeDiffusion, reward: Reward, y: torch.Tensor, y_mask: torch.Tensor,
              conditioned: MoleculeDiffusion | None, conditions: PropertyConditions) -> Proposal | None:
    if steering.proposal == "prior":
        return None
    if steering.proposal == "guidance":
        if not isinstance(reward, GaussianLogLikelihood):
            raise ValueError("the guidance proposal needs a property target (a differentiable likelihood)")
        return guided_proposal(GuidedDenoiser(prior.denoiser, prior.diffusion,
                                              reconstruction_likelihood(reward, prior.diffusion, y, y_mask),
                                              steering.guidance_scale,
                                              window=window_shares(steering.guidance_window, prior.diffusion.n_steps)))
    if conditioned is None:
        raise ValueError(f"the {steering.proposal} proposal needs its conditioned model")
    return model_proposal(conditioned.denoiser, conditions.encode(y, y_mask).to(y.device))


def steer(prior: MoleculeDiffusion, reward: Reward, y: torch.Tensor, y_mask: torch.Tensor, n_atoms: torch.Tensor,
          steering: Steering, conditions: PropertyConditions, n_sampling_steps: int | None = 100,
          generator: torch.Generator | None = None, conditioned: MoleculeDiffusion | None = None,
          batch_particles: int = 512, on_batch=None, final_reward: Reward | None = None,
          solver: Solver = ANCESTRAL) -> tuple[list[Molecule], SteeringReport]:
    """One molecule per row of targets ``y (M, 6)`` / ``y_mask (M, 6)`` with ``n_atoms (M,)`` atoms,
    each from its own SMC system of ``steering.particles`` particles; systems run ``batch_particles``
    particles at a time. ``on_batch(k)`` after each batch of k molecules. ``final_reward`` (e.g. the
    GFN2-xTB likelihood) judges the finished particles in ``reward``'s place: the target becomes
    p_pre·exp(r_final/τ)·1[valid], with ``reward`` steering the path. ``solver``: the steps' grid and order."""
    device = prior.n_atoms_hist.device
    k = steering.particles
    molecules: list[Molecule] = []

    def run(rows: slice) -> SMCResult:
        yb, mb = (particles(v[rows].to(device), k) for v in (y, y_mask))
        counts = n_atoms[rows].to(device)
        mask = torch.arange(int(counts.max()), device=device).unsqueeze(0) < counts.unsqueeze(1)
        potential = reward_potential(reward, prior.diffusion, yb, mb, admissible(prior), steering.widened,
                                     final_reward=final_reward)
        proposal = _proposal(steering, prior, reward, yb, mb, conditioned, conditions)
        result = smc_sample(prior.diffusion, prior.denoiser, potential, mask, prior.n_channels, k,
                            n_sampling_steps, proposal, steering.temperature, steering.potential_from,
                            steering.ess_threshold, generator=generator, dtype=prior.n_atoms_hist.dtype,
                            solver=solver, potential_every=steering.potential_every, pick=steering.pick)
        molecules.extend(prior.decode(result.x, mask))
        return result

    _, report = smc_in_batches(run, len(y), max(1, batch_particles // k), on_batch)
    return molecules, report
