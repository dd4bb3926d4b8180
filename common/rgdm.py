"""RGDM: training towards the pay-off distribution q(x) ∝ p_pre(x)·exp(r(x)/τ).

The loss is the likelihood of samples from q under the model (reward-augmented maximum likelihood).
Trajectory-level estimator: trajectories come from the current model p_θ, and self-normalised
importance weights turn them into samples of q over paths,
    w_i ∝ exp(r(x_i)/τ) · p_pre(τ_i) / p_θ(τ_i),   Σ_i w_i = 1,
(the ratio is a product of closed-form Gaussian step ratios); the loss is the weighted negative
log-likelihood of the samples with the weights held fixed, −Σ_i w_i log p_θ(τ_i). Its fixed point is p_θ = q; the effective sample size
1/Σ w_i² says how far the proposal is from q. (Fitting the weighted samples by the denoising loss
instead collapsed onto one mode on the Gaussian-mixture test: the path ratio degenerates when the
fit does not control the paths' likelihood.)

Prior-proposal estimator (:func:`payoff_resample`): with samples of the prior itself as proposals the
ratio is 1; resampled by exp(r/τ), they are fitted by the denoising loss (no path likelihood needed).

Step-level estimators: :func:`rgdm_step_loss` shifts the prior's steps along the model's own rollouts;
:func:`payoff_score_loss` shifts the prior's ε at noised data states, where the shift is the score of
the pay-off marginals and the fit needs no rollout.
"""
from __future__ import annotations

import torch

from common.diffusion import Denoiser, GaussianDiffusion
from common.guidance import GuidedDenoiser
from common.rewards import Reward
from common.rollout import rollout


def rgdm_trajectory_loss(diffusion: GaussianDiffusion, model: Denoiser, prior: Denoiser, reward: Reward,
                         mask: torch.Tensor, n_channels: int, y: torch.Tensor | None = None,
                         y_mask: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                         temperature: float = 1.0, n_sampling_steps: int | None = 50, group_size: int | None = None,
                         max_weight: float | None = None, checkpoint: bool = True,
                         generator: torch.Generator | None = None,
                         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted NLL of one batch, and the reward, ESS and max weight for logging.

    Args:
        temperature: τ of the pay-off distribution (1 with r = log p̂(y | x): the conditional).
        group_size: rows ``k·G … k·G + G − 1`` share one target and their weights are normalised
            among themselves (None: the whole batch is one group). With different targets per row,
            one normaliser over the batch still has p_θ(x | y) = q(x | y) as its fixed point, but it
            spends the weight on the targets that are easiest to hit; groups estimate each Z(y).
        max_weight: clip the normalised weights at this value and renormalise (a measured option;
            biased; None: no clipping). ESS is the mean over groups of 1/Σ w² (at most the group size).
    """
    roll = rollout(diffusion, model, prior, mask, n_channels, n_sampling_steps, cond, grad_steps=0,
                   checkpoint=checkpoint, generator=generator, dtype=dtype)
    b = mask.shape[0]
    size = group_size or b
    if b % size:
        raise ValueError(f"batch {b} is not a multiple of group_size {size}")
    with torch.no_grad():
        r = reward(roll.x, mask, y, y_mask)
        log_w = r / temperature + roll.prior_log_prob - roll.log_prob
        weights = torch.softmax(log_w.view(-1, size), dim=1)
        if max_weight is not None:
            weights = weights.clamp(max=max_weight)
            weights = weights / weights.sum(1, keepdim=True)
        ess = (1.0 / (weights**2).sum(1)).mean()
        weights = weights.view(-1) / (b // size)  # Σ over the batch = 1
    loss = -(weights * roll.log_prob).sum()
    return loss, {"reward": r.mean().item(), "ess": ess.item(), "max_weight": weights.max().item() * (b // size)}


def payoff_resample(log_reward: torch.Tensor, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior-proposal RGDM: for each target b, one pool index j ~ softmax_j(r_bj/τ), ``(B,)``, and the
    effective sample size 1/Σ_j w_bj² of those weights, ``(B,)``.

    ``log_reward (B, M)`` scores M samples of the prior for B targets (−inf excludes a sample). With
    the prior as the proposal the importance ratio p_pre/p_θ is 1, so this is self-normalised importance
    resampling from q(x | y) ∝ p_pre(x)·exp(r(x; y)/τ); the model then fits the picks by its denoising
    loss, with the fixed point p_θ = q.
    """
    weights = torch.softmax(log_reward / temperature, dim=1)
    rows = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return rows, 1.0 / (weights**2).sum(1)


def rgdm_step_loss(diffusion: GaussianDiffusion, model: Denoiser, prior: Denoiser, reward: Reward, mask: torch.Tensor,
                   n_channels: int, y: torch.Tensor | None = None, y_mask: torch.Tensor | None = None,
                   cond: torch.Tensor | None = None, temperature: float = 1.0, radius: float = 0.1,
                   n_sampling_steps: int | None = 50, n_train_steps: int = 4, n_candidates: int = 8,
                   reward_on: str = "denoised", generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, float]]:
    """Step-level RGDM: a pay-off step from the prior's proposal, and the model fit to it.

    Along a trajectory of the current model (on-policy states), at ``n_train_steps`` random
    transitions t → s, the prior's proposal z_s ~ p_pre(· | z_t) is moved inside the ball
    ‖z' − z_s‖ ≤ ρ towards q(z_s | z_t) ∝ p_pre(z_s | z_t)·exp(r/τ):

    * differentiable reward: z' = z_s + clip_ρ(σ²·∇r/τ), the maximiser of the linearised pay-off
      log-density within the ball (σ: the step's standard deviation);
    * otherwise: K candidates uniform in the ball, weighted ∝ p_pre(z'|z_t)·exp(r(z')/τ).

    The pay-off step is anchored at the prior's step, not the model's: fitting p_θ to a tilt of its
    own step tilts again at every update (p·exp(n·r/τ) after n rounds: reward maximisation with no
    fixed point at q; measured on the Gaussian-mixture test as a collapse onto one mode and a drift
    of the unrewarded coordinate). Anchored at the prior, the fixed point is μ_θ = μ_pre + E[shift].

    r is read on the denoised estimate x̂₀(z') (``reward_on="denoised"``, the default) or on z'
    itself (``"noisy"``). The loss is −log p_θ(z' | z_t) up to constants, ‖z' − μ_θ(z_t)‖²/(2σ²),
    averaged over the chosen transitions and the batch.
    """
    if reward_on not in ("denoised", "noisy"):
        raise ValueError(f"reward_on must be 'denoised' or 'noisy', got {reward_on!r}")
    space = diffusion.space
    pairs = diffusion.transitions(n_sampling_steps, len(mask), mask.device)
    chosen = set(torch.randperm(len(pairs), generator=generator)[:n_train_steps].tolist())
    z = diffusion.initial_state(mask, n_channels, generator, dtype)
    losses, rewards = [], []
    for k, (t, s) in enumerate(pairs):
        with torch.set_grad_enabled(k in chosen and torch.is_grad_enabled()):  # the model's step, fitted below
            mean, std = diffusion.moments(model, z, t, s, mask, cond)
        with torch.no_grad():
            z_next = diffusion.draw(mean, std, mask, generator)
        if k in chosen:
            score = _PayoffScore(diffusion, model, reward, s, mask, y, y_mask, cond, reward_on)
            with torch.no_grad():
                mean_pre, _ = diffusion.moments(prior, z, t, s, mask)
                proposal = diffusion.draw(mean_pre, std, mask, generator)
            if reward.differentiable:
                targets, weights = _gradient_shift(score, proposal, std, temperature, radius, mask)[None], None
            else:
                targets, weights = _candidates(score, proposal, mean_pre, std, temperature, radius, n_candidates,
                                               mask, generator)
            rewards.append(score.last.mean())
            sq = (((targets - mean) * mask.unsqueeze(-1)) ** 2).sum((2, 3)) / (2 * std.view(1, -1) ** 2)
            sq = sq / space.dims(mask, n_channels).to(sq.dtype)  # per degree of freedom
            losses.append((sq * weights).sum(0).mean() if weights is not None else sq.mean())
        z = z_next
    return torch.stack(losses).mean(), {"reward": torch.stack(rewards).mean().item()}


class _PayoffScore:
    """r/τ-free reward of a candidate state z' at step s: r(x̂₀(z')) (or r(z')), ``(B, N, D) -> (B,)``."""

    def __init__(self, diffusion, model, reward, s, mask, y, y_mask, cond, reward_on):
        self.diffusion, self.model, self.reward, self.s = diffusion, model, reward, s
        self.mask, self.y, self.y_mask, self.cond, self.reward_on = mask, y, y_mask, cond, reward_on
        self.last = torch.zeros(())

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        if self.reward_on == "denoised" and self.s is not None:
            eps = self.model(z, self.s.to(z.dtype) / self.diffusion.n_steps, self.mask, self.cond)
            x = self.diffusion.predict_x0(z, eps, self.s)
        r = self.reward(x, self.mask, self.y, self.y_mask)
        self.last = r.detach()
        return r


def _gradient_shift(score: _PayoffScore, z: torch.Tensor, std: torch.Tensor, temperature: float, radius: float,
                    mask: torch.Tensor) -> torch.Tensor:
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(score(z).sum(), z)
    shift = std**2 * grad / temperature * mask.unsqueeze(-1)
    norm = shift.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return (z + shift * torch.clamp(radius / norm, max=1.0)).detach()


@torch.no_grad()
def _candidates(score: _PayoffScore, z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, temperature: float,
                radius: float, n_candidates: int, mask: torch.Tensor,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """K points uniform in the ball around z (on the space), ``(K, B, N, D)``, and weights ``(K, B)``."""
    space = score.diffusion.space
    dims = space.dims(mask, z.shape[-1]).to(z.dtype).view(-1, 1, 1)
    out, log_w = [], []
    for _ in range(n_candidates):
        direction = space.noise(z, mask, generator)
        direction = direction / direction.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1)
        u = torch.rand(z.shape[0], 1, 1, generator=generator, device=generator.device if generator else z.device)
        candidate = z + radius * u.to(z) ** (1.0 / dims) * direction
        out.append(candidate)
        log_w.append(score.diffusion.step_log_prob(candidate, mean, std, mask) + score(candidate) / temperature)
    return torch.stack(out), torch.softmax(torch.stack(log_w), dim=0)


def payoff_score_loss(diffusion: GaussianDiffusion, model: Denoiser, payoff: GuidedDenoiser, x: torch.Tensor,
                      mask: torch.Tensor, cond: torch.Tensor | None = None,
                      max_step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-level RGDM at noised data states: the model's ε fitted to the pay-off distribution's.

    The noisy marginals of q(x | y) ∝ p_pre(x)·p̂(y | x)^{1/τ} have the score ∇log p_t(z) + (1/τ)·∇log p̂_t(y | z)
    (exact at τ = 1, where p̂_t(y | z_t) = ∫ p̂(y | x) p(x | z_t) dx), so the ε of q's denoiser is

        ε_q(z_t, y) = ε_pre(z_t) − (1/τ)·σ_t·∇_z log p̂_t(y | z_t),

    the prior's ε shifted as guidance shifts it; ``payoff`` is that guided prior (:class:`GuidedDenoiser`
    at scale 1/τ, its shift clipped: the pay-off step's radius). The model is fitted by regression,

        L = ‖ε_θ(z_t, t, y) − ε_q(z_t, y)‖² / (N·D),   z_t ~ q(z_t | x),  t uniform on {0, …, max_step or T},

    with x an unlabelled data molecule and ``cond`` encoding targets y (e.g. drawn from the reward model's
    predictive at x, so that the states follow q_t(z | y)). The minimiser
    is ε_q at every state the data reaches, so the trained model samples what guidance of the prior
    samples, at one network call per step. Unlike the denoising loss, whose target ε equals the
    posterior mean only on average, the target has no noise of its own.

    Returns the loss per set ``(B,)`` and the shift's root-mean-square per degree of freedom ``(B,)``.
    """
    top = diffusion.n_steps if max_step is None else max_step
    t = torch.randint(0, top + 1, (x.shape[0],), device=x.device)
    z, _ = diffusion.add_noise(x, t, mask)
    time = t.to(x.dtype) / diffusion.n_steps
    with torch.no_grad():
        eps_pre = payoff.denoiser(z, time, mask)
    shift = payoff.shift(z, time, mask, eps_pre)
    eps_hat = model(z, time, mask, cond)
    dims = diffusion.space.dims(mask, x.shape[-1]).to(x.dtype)
    err = ((eps_pre - shift - eps_hat) ** 2) * mask.unsqueeze(-1)
    return err.sum((1, 2)) / (x.shape[1] * x.shape[2]), (shift.square().sum((1, 2)) / dims).sqrt()
