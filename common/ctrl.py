"""CTRL: KL-regularised reward fine-tuning of a diffusion model, whose optimum is the tilted prior.

Objective over the conditioned sampler's trajectories τ (Σ_t KL in closed form, :mod:`common.rollout`):
    J(θ) = E_{τ ~ p_θ(·|y)} [ r(x; y) − α Σ_t KL(p_θ(z_s | z_t, y) ‖ p_pre(z_s | z_t)) ],
maximised by p_θ(τ | y) ∝ p_pre(τ)·exp(r(x; y)/α). With r = log p̂(y | x) and α = 1 its samples follow
p_pre(x)·p̂(y | x) ∝ p(x | y): the conditional distribution. Two gradient estimators:

* pathwise (``reward.differentiable``): back-propagate r and the KL through the reparameterised
  sampler (truncated to the last ``grad_steps`` transitions, the KL terms everywhere);
* score function (rewards without gradients): ∇J = E[(R − b)·∇ log p_θ(τ)] − α E[Σ_t ∇_θ KL_t] with
  R = r − α Σ_t KL_t per trajectory and b the batch mean — exact, as the states are sampled from p_θ.
"""
from __future__ import annotations

import torch

from common.diffusion import Denoiser, GaussianDiffusion
from common.rewards import Reward
from common.rollout import rollout


def ctrl_loss(diffusion: GaussianDiffusion, model: Denoiser, prior: Denoiser, reward: Reward, mask: torch.Tensor,
              n_channels: int, y: torch.Tensor | None = None, y_mask: torch.Tensor | None = None,
              cond: torch.Tensor | None = None, alpha: float = 1.0, n_sampling_steps: int | None = 50,
              grad_steps: int | None = None, checkpoint: bool = True, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, float]]:
    """−J(θ) on one batch of rollouts, and its parts (reward, KL) for logging.

    Args:
        y, y_mask: targets of the reward ``(B, P)``; cond: what the model sees (e.g. an embedding of y).
        alpha: KL weight (1: the conditional distribution). grad_steps: reparameterised final
            transitions for the pathwise estimator (None: all).
    """
    roll = rollout(diffusion, model, prior, mask, n_channels, n_sampling_steps, cond,
                   grad_steps=grad_steps if reward.differentiable else 0, checkpoint=checkpoint, generator=generator,
                   dtype=dtype)
    if reward.differentiable:
        r = reward(roll.x, mask, y, y_mask)
        loss = (alpha * roll.kl - r).mean()
    else:
        r = reward(roll.x.detach(), mask, y, y_mask)
        ret = (r - alpha * roll.kl).detach()
        loss = (alpha * roll.kl - (ret - ret.mean()) * roll.log_prob).mean()
    return loss, {"reward": r.mean().item(), "kl": roll.kl.mean().item()}
