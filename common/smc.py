"""Sequential Monte Carlo over the reverse chain (twisted SMC, Feynman–Kac steering): samples of the
tilted distribution that CTRL and RGDM both aim at,

    π(x) ∝ p_pre(x)·exp(r(x)/τ),

exact as the number of particles grows, with no training.

Each output runs its own system of K particles. A particle moves by a proposal kernel q(z_s | z_t) —
the prior itself, the guided prior, a CTRL or RGDM conditioned model, classifier-free guidance: any
ε-network on the prior's chain, with the prior's fixed step variance — and its log-weight gains, per
transition t → s,

    log p_pre(z_s | z_t) − log q(z_s | z_t)  +  G_s(z_s) − G_t(z_t),

both step densities Gaussian in closed form. The potential G_t ≈ log E[exp(r(x)/τ) | z_t] is the reward
expected of the state, read on the prior's denoised estimate x̂₀(z_t) (:class:`Potential`), tempered
along the chain:

    G_t = λ_t·r̂_t(x̂₀(z_t))/τ,   λ_t = clamp(1 − t/t_on, 0, 1)   (t in diffusion steps, t_on = ``potential_from``),

so it is off over the noisy part of the chain and reaches the reward at the data; after the final step
G = r(x)/τ, plus log 1[x admissible] when the potential restricts the target (an invalid molecule). The
sum telescopes: a finished particle weighs p_pre(path)/q(path)·exp(r(x)/τ), so the weighted particles
target π whatever G and q are; G and q only decide how many particles carry weight (the effective
sample size, ESS = 1/Σ w̄²). When a system's ESS falls below ``ess_threshold``·K (at steps inside
``resample_window``), it is resampled systematically and its weights reset.

Diversity: each output is one particle drawn from its own system's final weights, so no two outputs
share an ancestor. ``pick="best"`` takes each system's particle of highest final reward instead: a
selection among the steered particles, no longer a sample of π, which trades π's spread for the
reward's mode (as best-of-K selection does among independent samples). Particle batches are laid out
output-major: output b's particles are rows b·K … b·K + K − 1 (see :func:`particles`), and
``potential``/``proposal`` see them that way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from common.diffusion import ANCESTRAL, Denoiser, GaussianDiffusion, Solver
from common.guidance import GuidedDenoiser, reconstruction_likelihood
from common.rewards import GaussianLogLikelihood, Reward, reward_where

PICKS = ("sample", "best")  # each system's output: drawn by the final weights, or its highest final reward


def check_pick(pick: str) -> None:
    """A ValueError naming :data:`PICKS` unless ``pick`` is one of them."""
    if pick not in PICKS:
        raise ValueError(f"unknown pick {pick!r} (expected one of {', '.join(PICKS)})")


FLOOR = -1e30  # the potential of a state whose reward estimate is NaN or −inf: kept finite so that weights stay defined


@dataclass
class Potential:
    """What steers the particles, in reward units (SMC divides by τ).

    ``estimate(x̂₀ (B, N, D), t = step/T (B,), mask (B, N)) -> (B,)``: the reward expected of a state
    from its denoised estimate; ``final(x, mask) -> (B,)``: the reward of finished samples (−inf or NaN:
    outside the target, never chosen while its system has another particle).
    """

    estimate: Callable[[Tensor, Tensor, Tensor], Tensor]
    final: Callable[[Tensor, Tensor], Tensor]


@dataclass
class Proposal:
    """A reverse kernel on the prior's chain: ``eps(z, t = step/T, mask, eps_pre) -> ε_q``, given the
    prior's ε at the same state, and the network evaluations it costs per step beyond the prior's.

    It moves the particles only from states with t > ``floor``·T; below, they take the prior's own
    steps. The chain's last steps are nearly deterministic (the step into z_0 has σ ≈ σ_0 ≈ 3·10⁻³
    for EDM's schedule), so any difference of means there is many standard deviations and
    p_pre/q explodes: on the 2-D mixture, guidance with the exact p_t(y | z) used down to t = 0 left
    SMC at 0.82 of the mass on the tilted side against the true 0.73 (K = 16), and at 0.74 with the
    floor at 0.05 (``benchmarks.gmm_tilt``).
    """

    eps: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    network_calls: int = 1
    floor: float = 0.05


def model_proposal(denoiser: Denoiser, cond: Tensor | None = None, network_calls: int = 1) -> Proposal:
    """A conditioned model (CTRL, RGDM; classifier-free guidance with ``network_calls=2``) as proposal;
    ``cond`` holds one row per particle."""
    return Proposal(lambda z, t, mask, eps_pre: denoiser(z, t, mask, cond), network_calls)


def guided_proposal(guided: GuidedDenoiser) -> Proposal:
    """The guided prior as proposal: the prior's ε (already computed) shifted by the guidance, so it
    costs no network evaluation beyond the prior's (only the likelihood's gradient)."""
    space = guided.diffusion.space
    return Proposal(lambda z, t, mask, eps_pre: space.project(eps_pre - guided.shift(z, t, mask, eps_pre), mask), 0)


def reward_potential(reward: Reward, diffusion: GaussianDiffusion, y: Tensor | None = None,
                     y_mask: Tensor | None = None, admissible: Callable[[Tensor, Tensor], Tensor] | None = None,
                     widened: bool = True, admissible_from: float = 0.1, inadmissible_cost: float = 5.0,
                     final_reward: Reward | None = None) -> Potential:
    """The potential of a reward for targets ``y``/``y_mask`` (one row per particle): the reward read on
    x̂₀, for a Gaussian likelihood widened by the posterior variance at t (``widened``: the
    reconstruction likelihood of :func:`common.guidance.reconstruction_likelihood`, which flattens at
    high noise as log p_t(y | z_t) does). ``admissible(x, mask) -> (B,) bool`` restricts the target to
    the samples it accepts; from t ≤ ``admissible_from``·T on, a state whose x̂₀ it rejects already
    costs ``inadmissible_cost`` (in reward units), so that resampling keeps particles that can still end
    admissible (any potential leaves the target exact: only the final one counts). ``final_reward``
    (default ``reward``) judges the finished samples, admissible ones only: a costlier judge (physics, no
    gradient) then defines the target p_pre·exp(r_final/τ) while ``reward`` only steers the path."""
    widen = widened and isinstance(reward, GaussianLogLikelihood)
    likelihood = reconstruction_likelihood(reward, diffusion, y, y_mask) if widen else None

    def expected(x0: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        if likelihood is None:
            return reward(x0, mask, y, y_mask)
        with torch.enable_grad():  # the widening reads ∇f at x̂₀
            return likelihood(x0.detach().requires_grad_(True), t, mask).detach()

    def estimate(x0: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        value = expected(x0, t, mask)
        if admissible is not None and t[0] <= admissible_from:
            value = value - inadmissible_cost * (~admissible(x0, mask)).to(value)
        return value

    judge = final_reward or reward

    def final(x: Tensor, mask: Tensor) -> Tensor:
        if admissible is None:
            return judge(x, mask, y, y_mask)
        return reward_where(judge, admissible(x, mask), x, mask, y, y_mask)

    return Potential(estimate, final)


@dataclass
class SMCResult:
    """One output per particle system.

    Attributes:
        x: the outputs ``(B, N, D)``. reward: r(x) of each output ``(B,)``.
        log_weights: every particle's final log-weight ``(B, K)`` (−inf: outside the target).
        chosen: which particle each output is ``(B,)``. ess: each system's ESS before each step's
            resampling decision ``(S, B)``. resampled: where it resampled ``(S, B)``.
        network_calls: denoiser evaluations per output (K particles × (S steps + the proposal's calls)).
    """

    x: Tensor
    reward: Tensor
    log_weights: Tensor
    chosen: Tensor
    ess: Tensor
    resampled: Tensor
    network_calls: int

    @property
    def output_log_weight(self) -> Tensor:
        """The final log-weight of each output's particle ``(B,)``."""
        return self.log_weights.gather(1, self.chosen.unsqueeze(1)).squeeze(1)

    @property
    def mean_ess(self) -> Tensor:
        """Each system's ESS averaged over the steps ``(B,)``."""
        return self.ess.mean(0)


@dataclass
class SteeringReport:
    """What steering many systems reports per output, ``(M,)`` each: its reward, the final log-weight of
    its particle and its system's ESS averaged over the steps; the denoiser evaluations per output; how
    many systems ended with no particle inside the target (their outputs are outside it)."""

    reward: Tensor
    log_weight: Tensor
    ess: Tensor
    network_calls: int
    no_valid: int


def smc_in_batches(run: Callable[[slice], SMCResult], n: int, per_batch: int,
                   on_batch: Callable[[int], None] | None = None) -> tuple[list[SMCResult], SteeringReport]:
    """``run(rows)`` over consecutive slices of ``n`` outputs, ``per_batch`` systems at a time, and the
    report over all of them; ``on_batch(k)`` after each batch of k outputs."""
    results = []
    for start in range(0, n, per_batch):
        results.append(run(slice(start, start + per_batch)))
        if on_batch:
            on_batch(len(results[-1].x))

    def joined(values) -> Tensor:
        return torch.cat([v.float().cpu() for v in values])

    no_valid = sum(int((~torch.isfinite(r.log_weights).any(1)).sum()) for r in results)
    return results, SteeringReport(joined(r.reward for r in results), joined(r.output_log_weight for r in results),
                                   joined(r.mean_ess for r in results), results[0].network_calls, no_valid)


def particles(tensor: Tensor | None, k: int) -> Tensor | None:
    """``(B, ...) -> (B·K, ...)``: each output's row repeated for its K particles (output-major)."""
    return None if tensor is None else tensor.repeat_interleave(k, dim=0)


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """1/Σ w̄² of each row of log-weights ``(B, K)`` -> ``(B,)``."""
    w = torch.softmax(log_weights, dim=-1)
    return 1.0 / w.square().sum(-1)


def systematic_resample(log_weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Ancestor indices ``(B, K)`` within each row: one uniform offset per row, K evenly spaced points
    on the weights' cumulative sum (the lowest-variance unbiased scheme)."""
    b, k = log_weights.shape
    cumulative = torch.softmax(log_weights.double(), dim=-1).cumsum(-1)
    offset = torch.rand(b, 1, generator=generator, dtype=torch.float64, device=generator.device if generator else None)
    points = (offset.to(cumulative.device) + torch.arange(k, dtype=torch.float64, device=cumulative.device)) / k
    return torch.searchsorted(cumulative, points).clamp(max=k - 1)


@torch.no_grad()
def smc_sample(diffusion: GaussianDiffusion, prior: Denoiser, potential: Potential, mask: Tensor, n_channels: int,
               n_particles: int = 16, n_sampling_steps: int | None = 100, proposal: Proposal | None = None,
               temperature: float = 1.0, potential_from: int = 400, ess_threshold: float = 0.5,
               resample_window: tuple[int, int] | None = None, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, solver: Solver = ANCESTRAL, potential_every: int = 1,
               pick: str = "sample") -> SMCResult:
    """Steer ``n_particles`` particles per output towards p_pre(x)·exp(r(x)/τ) (see the module docstring).

    Args:
        diffusion, prior: the chain and the prior's ε-network (called unconditioned). potential: r̂ and r.
        mask: ``(B, N)``, one row per output. n_sampling_steps: respaced steps (``None``: all T).
        proposal: the kernel particles move by (``None``: the prior). temperature: τ.
        potential_from: t_on, the diffusion step below which the potential is switched on (ramping to 1 at 0).
        ess_threshold: resample a system when its ESS falls below this fraction of K.
        resample_window: ``(lo, hi)``: resample only at steps lo < t ≤ hi (``None``: anywhere).
        solver: the grid and order of the steps; a second-order step's history (the prior's, and the
            proposal's) is resampled with the particles, so p_pre and q stay closed-form Gaussians.
        potential_every: read the potential at every m-th step of those where it is on, the first
            included, and keep G_t between (another sequence of intermediate targets: the final target
            is unchanged; the reward's cost falls by m, the steering gets coarser).
        pick: ``"sample"`` draws each output by its system's final weights (a sample of π); ``"best"``
            takes the particle with the highest final reward (a selection: π's mode, not π).
    """
    if n_particles < 1 or temperature <= 0 or not 0 <= ess_threshold <= 1 or potential_every < 1:
        raise ValueError("SMC needs n_particles ≥ 1, temperature > 0, 0 ≤ ess_threshold ≤ 1 and potential_every ≥ 1")
    check_pick(pick)
    b, k, steps = len(mask), n_particles, diffusion.n_steps
    calls = 0
    lo, hi = resample_window or (-1, steps)
    mask = particles(mask, k)
    z = diffusion.initial_state(mask, n_channels, generator, dtype)
    log_w = torch.zeros(b, k, dtype=torch.float64, device=mask.device)
    value = torch.zeros(b * k, dtype=torch.float64, device=mask.device)  # G_t of each particle's state
    pending = torch.zeros_like(value)  # log p_pre − log q of the step just taken
    rows = torch.arange(b, device=mask.device).unsqueeze(1) * k
    ess_trace, resampled_trace = [], []
    history_pre = history_q = None
    reads = 0  # steps so far where the potential is on
    for t, s in diffusion.transitions(n_sampling_steps, b * k, mask.device, solver):
        time = t.to(z.dtype) / steps
        eps_pre = prior(z, time, mask)
        weight = 1 - t[0].item() / potential_from if potential_from > 0 else 1.0
        if weight <= 0:
            new_value = torch.zeros_like(value)
        elif reads % potential_every:
            new_value = value  # between reads G_t is kept
        else:
            estimate = potential.estimate(diffusion.predict_x0(z, eps_pre, t), time, mask).double()
            new_value = weight * torch.nan_to_num(estimate, nan=FLOOR, neginf=FLOOR).clamp(min=FLOOR) / temperature
        reads += weight > 0
        log_w += (pending + new_value - value).view(b, k)
        value = new_value
        ess = effective_sample_size(log_w)
        resample = (ess < ess_threshold * k) & torch.tensor(lo < t[0].item() <= hi, device=mask.device)
        ess_trace.append(ess)
        resampled_trace.append(resample)
        if resample.any():
            ancestors = systematic_resample(log_w[resample], generator)
            index = torch.arange(b * k, device=mask.device).view(b, k)
            index[resample] = ancestors + rows[resample]
            index = index.flatten()
            z, eps_pre, value = z[index], eps_pre[index], value[index]
            history_pre, history_q = (h if h is None else h[index] for h in (history_pre, history_q))
            log_w[resample] = 0.0
        eps_step, history_pre = diffusion.solver_eps(solver, z, eps_pre, t, s, history_pre)
        mean_pre, std = diffusion.moments_from(z, eps_step, t, s)
        calls += 1
        if proposal is None or t[0].item() <= proposal.floor * steps:
            z = diffusion.draw(mean_pre, std, mask, generator)
            pending = torch.zeros_like(value)
        else:
            calls += proposal.network_calls
            eps_q, history_q = diffusion.solver_eps(solver, z, proposal.eps(z, time, mask, eps_pre), t, s, history_q)
            mean_q, _ = diffusion.moments_from(z, eps_q, t, s)
            z = diffusion.draw(mean_q, std, mask, generator)
            pending = (diffusion.step_log_prob(z, mean_pre, std, mask)
                       - diffusion.step_log_prob(z, mean_q, std, mask)).double()
    reward = potential.final(z, mask).double()
    log_w += (pending + reward / temperature - value).view(b, k)
    log_w = log_w.masked_fill(torch.isnan(log_w), -torch.inf)  # a NaN reward: outside the target
    if pick == "best":
        chosen = torch.nan_to_num(reward, nan=-torch.inf).view(b, k).argmax(1)
    elif k > 1:
        choice = torch.where(torch.isfinite(log_w).any(1, keepdim=True), log_w, torch.zeros_like(log_w))
        chosen = torch.multinomial(torch.softmax(choice, -1).cpu(), 1, generator=generator).squeeze(1).to(mask.device)
    else:
        chosen = torch.zeros(b, dtype=torch.long, device=mask.device)
    outputs = rows.squeeze(1) + chosen
    return SMCResult(z[outputs], reward.view(b, k).gather(1, chosen.unsqueeze(1)).squeeze(1), log_w, chosen,
                     torch.stack(ess_trace), torch.stack(resampled_trace), k * calls)
