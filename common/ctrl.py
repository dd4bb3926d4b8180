"""CTRL: KL-regularised reward fine-tuning of a diffusion model, whose optimum is the tilted prior.

Objective over the conditioned sampler's trajectories τ (Σ_t KL in closed form, :mod:`common.rollout`):
    J(θ) = E_{τ ~ p_θ(·|y)} [ r(x; y) − α Σ_t KL(p_θ(z_s | z_t, y) ‖ p_pre(z_s | z_t)) ],
maximised by p_θ(τ | y) ∝ p_pre(τ)·exp(r(x; y)/α). With r = log p̂(y | x) and α = 1 its samples follow
p_pre(x)·p̂(y | x) ∝ p(x | y): the conditional distribution. That holds for the chain's own step KL (the
default). ``kl="continuous"`` takes the continuous-time KL on the same grid instead (:mod:`common.rollout`):
it tends to the same optimum as the grid refines, but on a coarse grid it charges the steps next to the
noise and next to the data far less than the chain does, so the model tilts further than α says (the 2-D
mixture test measures by how much at 20 steps). Two gradient estimators:

* pathwise (``reward.differentiable``): back-propagate r and the KL through the reparameterised
  sampler (truncated to the last ``grad_steps`` transitions, the KL terms everywhere);
* score function (rewards without gradients): ∇J = E[(R − b)·∇ log p_θ(τ)] − α E[Σ_t ∇_θ KL_t] with
  R = r − α Σ_t KL_t per trajectory and b the mean R of the other trajectories of its group (rows that
  share a target; leave-one-out, so b does not depend on the trajectory it corrects) — exact, as the
  states are sampled from p_θ;
* both (``score_early``): the last ``grad_steps`` transitions pathwise and the earlier ones, whose states the
  pathwise estimator detaches, by the score function. Truncated back-propagation drops the gradient that
  flows through the early states; on a chain whose early steps choose a mode (the mixture's component, a
  cloud's class) the pathwise gradient of one trajectory through them is near zero even where the value
  E[r | z_t] is steep, and the score-function term estimates that part instead:
      ∇J = E[∇_θ(r − α Σ_t KL_t) through the late steps] + E[(R − b)·Σ_{early t} ∇ log p_θ(z_s | z_t)].
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
              dtype: torch.dtype = torch.float32, kl: str = "chain", kl_cap: float | None = None,
              score_early: bool = False, group_size: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """−J(θ) on one batch of rollouts, and its parts (median reward, median KL) for logging.

    Args:
        y, y_mask: targets of the reward ``(B, P)``; cond: what the model sees (e.g. an embedding of y).
        alpha: KL weight (1: the conditional distribution). grad_steps: reparameterised final
            transitions for the pathwise estimator (None: all). kl: "chain" or "continuous", see
            :func:`common.rollout.rollout` and above.
        kl_cap: leave out of the loss the trajectories whose KL exceeds it (None: keep all). A state
            the networks never saw (atoms on top of each other) can give one trajectory a KL of 10⁴–10⁸,
            whose gradient alone then sets the update; the fraction left out is reported as ``capped``.
        score_early: with a differentiable reward, add the score-function term of the transitions before
            the last ``grad_steps`` (see above). group_size: rows ``k·G … k·G + G − 1`` share a target, and
            the score-function baseline of a row is the mean return of the others of its group (None: of
            the whole batch).
    """
    pathwise = reward.differentiable
    reparameterised = grad_steps if pathwise else 0  # None: every transition
    roll = rollout(diffusion, model, prior, mask, n_channels, n_sampling_steps, cond, grad_steps=reparameterised,
                   checkpoint=checkpoint, generator=generator, dtype=dtype, kl=kl)
    keep = torch.ones_like(roll.kl, dtype=torch.bool) if kl_cap is None else roll.kl.detach() <= kl_cap
    r = reward(roll.x if pathwise else roll.x.detach(), mask, y, y_mask)
    per_sample = alpha * roll.kl - (r if pathwise else 0.0)
    detached = 0 if reparameterised is None else max(len(roll.step_log_prob) - reparameterised, 0)
    n_scored = detached if score_early or not pathwise else 0  # the first transitions, whose states were detached
    if n_scored:
        ret = (r - alpha * roll.kl).detach()
        per_sample = per_sample - (ret - others_mean(ret, keep, group_size)) * roll.step_log_prob[:n_scored].sum(0)
    loss = per_sample[keep].sum() / keep.sum().clamp(min=1)
    stats = {"reward": r.median().item(), "kl": roll.kl.median().item()}
    return loss, stats | ({} if kl_cap is None else {"capped": 1.0 - keep.float().mean().item()})


def others_mean(values: torch.Tensor, keep: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """Per row of ``values (B,)``: the mean over the other kept rows of its group (rows ``k·G … k·G + G − 1``;
    None: the whole batch), 0 where there is none — a leave-one-out baseline."""
    size = group_size or len(values)
    if len(values) % size:
        raise ValueError(f"batch {len(values)} is not a multiple of group_size {size}")
    kept, count = values.where(keep, 0.0).view(-1, size), keep.to(values.dtype).view(-1, size)
    others = count.sum(1, keepdim=True) - count
    return ((kept.sum(1, keepdim=True) - kept) / others.clamp(min=1)).view(-1)
