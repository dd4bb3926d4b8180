"""RGDM: training towards the pay-off distribution q(x) ∝ p_pre(x)·exp(r(x)/τ).

The loss is the likelihood of samples from q under the model (reward-augmented maximum likelihood).
Trajectory-level estimator: trajectories come from the current model p_θ, and self-normalised
importance weights turn them into samples of q over paths,
    w_i ∝ exp(r(x_i)/τ) · p_pre(τ_i) / p_θ(τ_i),   Σ_i w_i = 1,
(the ratio is a product of closed-form Gaussian step ratios); the loss is the weighted trajectory
negative log-likelihood −Σ_i w_i log p_θ(τ_i) with the weights held fixed. Its fixed point is p_θ = q;
the effective sample size 1/Σ w_i² says how far the proposal is from q.
"""
from __future__ import annotations

import torch

from common.diffusion import Denoiser, GaussianDiffusion
from common.rewards import Reward
from common.rollout import rollout


def rgdm_trajectory_loss(diffusion: GaussianDiffusion, model: Denoiser, prior: Denoiser, reward: Reward,
                         mask: torch.Tensor, n_channels: int, y: torch.Tensor | None = None,
                         y_mask: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                         temperature: float = 1.0, n_sampling_steps: int | None = 50,
                         max_weight: float | None = None, checkpoint: bool = True, generator: torch.Generator | None = None,
                         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted trajectory NLL of one batch, and the reward, ESS and max weight for logging.

    Args:
        temperature: τ of the pay-off distribution (1 with r = log p̂(y | x): the conditional).
        max_weight: clip the normalised weights at this value and renormalise (a measured option;
            biased; None: no clipping).
    """
    roll = rollout(diffusion, model, prior, mask, n_channels, n_sampling_steps, cond, grad_steps=0,
                   checkpoint=checkpoint, generator=generator, dtype=dtype)
    with torch.no_grad():
        r = reward(roll.x, mask, y, y_mask)
        weights = torch.softmax(r / temperature + roll.prior_log_prob - roll.log_prob, dim=0)
        if max_weight is not None:
            weights = weights.clamp(max=max_weight)
            weights = weights / weights.sum()
        ess = 1.0 / (weights**2).sum()
    loss = -(weights * roll.log_prob).sum()
    return loss, {"reward": r.mean().item(), "ess": ess.item(), "max_weight": weights.max().item()}
