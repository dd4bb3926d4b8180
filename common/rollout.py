"""Roll a conditioned sampler out next to the frozen prior: the samples, their trajectory log-likelihoods,
and the per-step KL divergence between the two models' reverse steps.

For a trajectory z_T → z_{t_1} → … → z_0 → x of the conditioned model p_θ, each step has
    p_θ(z_s | z_t, y) = N(μ_θ, σ²),   p_pre(z_s | z_t) = N(μ_pre, σ²)   (same σ: fixed-variance reverse steps)
so KL(p_θ ‖ p_pre) = ‖μ_θ − μ_pre‖² / (2σ²) = ½(e^{Δλ} − 1)·‖ε_θ − ε_pre‖² at every step, in closed form
(λ = log α²/σ²). Their sum over the steps is the KL between the two path measures of this chain given the
sampled states (``kl="chain"``). ``kl="continuous"`` sums ½Δλ·‖ε_θ − ε_pre‖² instead: the KL of the
continuous-time processes the chain discretises, on the same grid
(:meth:`GaussianDiffusion.continuous_kl_factor`). A coarse chain's last step is nearly deterministic
(σ ≈ σ₀), so its chain KL weighs any change of ε there ~10³ times more than the continuous KL does.

Gradients (``grad_steps``): the last ``grad_steps`` transitions are reparameterised,
z_s = μ_θ(z_t) + σ·ε, so a reward of the final sample back-propagates through them (and the KL of a
later step through the prior's mean at that state: the prior's weights must not require gradients);
earlier states are detached (truncated back-propagation) but their KL terms still carry gradients to θ. Each step can be
recomputed in the backward pass (``checkpoint``) so memory does not grow with the number of steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint as recompute

from common.diffusion import Denoiser, GaussianDiffusion

KL_FORMS = ("chain", "continuous")


@dataclass
class Rollout:
    """One batch of trajectories, all per sample ``(B,)`` except ``x`` ``(B, N, D)``.

    Attributes:
        x: final samples. kl: Σ_t KL(p_θ ‖ p_pre) over the steps (chain or continuous form).
            log_prob: Σ_t log p_θ(z_s | z_t) of the sampled states (gradient w.r.t. θ only).
            prior_log_prob: Σ_t log p_pre(z_s | z_t), no gradient.
            step_kl: the chain's KL of each step, ``(S, B)`` in the order of :meth:`GaussianDiffusion.transitions`.
            step_log_prob: log p_θ(z_s | z_t) of each step, ``(S, B)``, the same order (``log_prob``: its sum).
    """

    x: torch.Tensor
    kl: torch.Tensor
    prior_log_prob: torch.Tensor
    step_kl: torch.Tensor
    step_log_prob: torch.Tensor

    @property
    def log_prob(self) -> torch.Tensor:
        return self.step_log_prob.sum(0)


def rollout(diffusion: GaussianDiffusion, model: Denoiser, prior: Denoiser, mask: torch.Tensor, n_channels: int,
            n_sampling_steps: int | None = None, cond: torch.Tensor | None = None, grad_steps: int | None = 0,
            checkpoint: bool = True, generator: torch.Generator | None = None,
            dtype: torch.dtype = torch.float32, kl: str = "chain") -> Rollout:
    """Sample from ``model`` (conditioned on ``cond``) and score each step against ``prior``.

    Args:
        diffusion: the process both models were trained for. model, prior: ε-networks (the prior is
            called without a condition and never receives gradients). mask: ``(B, N)``.
        n_sampling_steps: respaced step count (``None``: all T). grad_steps: reparameterised final
            transitions (0: none — a pure score-function / weighting use; ``None``: all). checkpoint:
            recompute each step in the backward pass. kl: "chain" (the sampler's own steps) or
            "continuous" (the continuous-time limit on the sampler's grid).
    """
    if kl not in KL_FORMS:
        raise ValueError(f"unknown KL form {kl!r} (expected one of {', '.join(KL_FORMS)})")
    b = len(mask)
    z = diffusion.initial_state(mask, n_channels, generator, dtype)
    pairs = diffusion.transitions(n_sampling_steps, b, mask.device)
    run = partial(recompute, use_reentrant=False) if checkpoint and torch.is_grad_enabled() else _call
    step_kls, step_log_probs, prior_step_log_probs = [], [], []
    for k, (t, s) in enumerate(pairs):
        if grad_steps is not None and len(pairs) - k > grad_steps:
            z = z.detach()
        if z.requires_grad:  # a reparameterised state: the prior's step mean depends on θ through z
            mean, mean_pre, std = run(_moments, diffusion, model, prior, z, t, s, mask, cond)
        else:
            with torch.no_grad():
                mean_pre, std = diffusion.moments(prior, z, t, s, mask)
            mean = run(_step_mean, diffusion, model, z, t, s, mask, cond)
        z_next = diffusion.draw(mean, std, mask, generator)
        step_kls.append(diffusion.step_kl(mean, mean_pre, std, mask))
        step_log_probs.append(diffusion.step_log_prob(z_next.detach(), mean, std, mask))
        prior_step_log_probs.append(diffusion.step_log_prob(z_next.detach(), mean_pre, std, mask))
        z = z_next
    step_kl = torch.stack(step_kls)
    return Rollout(z, (step_kl * kl_factors(diffusion, pairs, kl).to(dtype)).sum(0), torch.stack(prior_step_log_probs).sum(0),
                   step_kl, torch.stack(step_log_probs))


def kl_factors(diffusion: GaussianDiffusion, pairs: list[tuple[torch.Tensor, torch.Tensor | None]],
               kl: str) -> torch.Tensor:
    """``(S, B)`` factors that turn the chain's step KLs into the form ``kl``: ones for "chain",
    Δλ/(e^{Δλ} − 1) for "continuous" (:meth:`GaussianDiffusion.continuous_kl_factor`)."""
    factors = torch.stack([diffusion.continuous_kl_factor(t, s) for t, s in pairs])
    return factors if kl == "continuous" else torch.ones_like(factors)


def _step_mean(diffusion, net, z, t, s, mask, cond) -> torch.Tensor:
    return diffusion.moments(net, z, t, s, mask, cond)[0]


def _moments(diffusion, model, prior, z, t, s, mask, cond) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step means of the model and the prior from the same state, and the shared std."""
    mean, std = diffusion.moments(model, z, t, s, mask, cond)
    return mean, diffusion.moments(prior, z, t, s, mask)[0], std


def _call(fn, *args):
    return fn(*args)
