"""Variance-preserving Gaussian diffusion in discrete time, kept apart from any network.

Forward process: z_t = α_t·x + σ_t·ε, ε ~ N(0, I) on the state space. For s < t,
    q(z_t | z_s) = N(α_{t|s}·z_s, σ²_{t|s}),  α_{t|s} = α_t/α_s,  σ²_{t|s} = σ_t² − α²_{t|s}·σ_s².
Reverse step with a noise prediction ε̂ = ε_θ(z_t, t):
    p(z_s | z_t) = N(μ, σ²),  μ = z_t/α_{t|s} − σ²_{t|s}/(α_{t|s}·σ_t)·ε̂,  σ = σ_{t|s}·σ_s/σ_t,
which is the exact posterior q(z_s | z_t, x) at x = x̂₀(z_t). Any s < t works, so respaced sampling
over a subset of steps is the same formula. The last step returns x ~ N(x̂₀(z_0), (σ_0/α_0)²).

Every sampler of the package — :meth:`GaussianDiffusion.sample`, CTRL's rollouts, DDPO's trajectories,
step-level RGDM, sequential Monte Carlo — walks the chain with the same four pieces: the states
:meth:`~GaussianDiffusion.initial_state`, the transitions :meth:`~GaussianDiffusion.transitions`, a
step's moments :meth:`~GaussianDiffusion.moments`, and a draw :meth:`~GaussianDiffusion.draw` (with its
log-density :meth:`~GaussianDiffusion.step_log_prob`).

Few-step sampling (:class:`Solver`): a grid uniform in log-SNR instead of in t, and a second-order
step that extrapolates x̂₀ from the previous step (:meth:`~GaussianDiffusion.solver_eps`). Both keep
every transition a Gaussian with the moments above, so the density of a step stays in closed form —
given, for the second order, the previous step's x̂₀ (:class:`History`).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from common.schedules import NoiseSchedule
from common.spaces import PointSetSpace


class Denoiser(Protocol):
    def __call__(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ of shape ``(B, N, D)`` from ``z (B, N, D)``, time ``t = step/T (B,)``, ``mask (B, N)``."""


def respaced_steps(n_steps: int, n_sampling_steps: int | None) -> list[int]:
    """Descending integer steps T = t_0 > t_1 > … > 0 visited by a sampler with ``n_sampling_steps``."""
    if n_sampling_steps is None or n_sampling_steps >= n_steps:
        return list(range(n_steps, -1, -1))
    if n_sampling_steps < 1:
        raise ValueError(f"the number of sampling steps must be positive, got {n_sampling_steps}")
    grid = torch.linspace(n_steps, 0, n_sampling_steps + 1).round().long().tolist()
    return sorted(set(grid), reverse=True)


def logsnr_steps(gamma: torch.Tensor, n_sampling_steps: int) -> list[int]:
    """Descending integer steps T > … > 0 whose log-SNR λ_t = −γ_t is as evenly spaced as the integer
    grid allows: ``n_sampling_steps`` + 1 values of λ evenly spaced from λ_T to λ_0, each rounded to the
    step of nearest λ. ``gamma (T+1,)`` must increase with t."""
    if n_sampling_steps < 1:
        raise ValueError(f"the number of sampling steps must be positive, got {n_sampling_steps}")
    gamma = gamma.double().cpu()
    targets = torch.linspace(float(gamma[-1]), float(gamma[0]), n_sampling_steps + 1, dtype=torch.float64)
    right = torch.searchsorted(gamma, targets).clamp(1, len(gamma) - 1)
    nearer_left = (targets - gamma[right - 1]) < (gamma[right] - targets)
    return sorted(set((right - nearer_left.long()).tolist()), reverse=True)


SPACINGS = ("uniform", "logsnr")


@dataclass(frozen=True)
class Solver:
    """How a sampler walks the reverse chain: the grid of steps (``uniform`` in t, or ``logsnr``: even
    in log-SNR, :func:`logsnr_steps`) and the order of the step (1: ancestral, the posterior at x̂₀;
    2: x̂₀ extrapolated from the previous step, :meth:`GaussianDiffusion.solver_eps`)."""

    spacing: str = "uniform"
    order: int = 1

    def __post_init__(self) -> None:
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown step spacing {self.spacing!r} (expected one of {', '.join(SPACINGS)})")
        if self.order not in (1, 2):
            raise ValueError(f"the solver's order must be 1 or 2, got {self.order}")


ANCESTRAL = Solver()

#: Named solvers of the command lines: DDPM's ancestral sampler, and the second-order SDE solver on a
#: log-SNR grid (benchmarks/results/prior_solvers_qm9-noh.json).
SOLVERS = {"ancestral": ANCESTRAL, "dpm2": Solver("logsnr", 2)}


def solver_named(name: str) -> Solver:
    """The :data:`SOLVERS` entry ``name``, with a one-line error for any other name."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r} (expected one of {', '.join(SOLVERS)})")
    return SOLVERS[name]


@dataclass
class History:
    """What a second-order step keeps of the previous one: its x̂₀ ``(B, N, D)`` and step ``(B,)``.
    Indexing selects particles (SMC's resampling carries the history with the state)."""

    x0: torch.Tensor
    t: torch.Tensor

    def __getitem__(self, index: torch.Tensor) -> History:
        return History(self.x0[index], self.t[index])


class GaussianDiffusion(torch.nn.Module):
    """The diffusion process on a :class:`PointSetSpace` with a :class:`NoiseSchedule`."""

    def __init__(self, schedule: NoiseSchedule, space: PointSetSpace):
        super().__init__()
        self.schedule = schedule
        self.space = space

    @property
    def n_steps(self) -> int:
        return self.schedule.n_steps

    def _coefficients(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """γ, α, σ at integer steps ``t (B,)``, shaped ``(B, 1, 1)`` to broadcast against ``x``."""
        gamma = self.schedule.gamma(t).to(x.dtype).view(-1, 1, 1)
        return gamma, NoiseSchedule.alpha(gamma), NoiseSchedule.sigma(gamma)

    def add_noise(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample z_t ~ q(z_t | x). Returns ``(z_t, ε)``, both ``(B, N, D)``."""
        _, alpha, sigma = self._coefficients(t, x)
        eps = self.space.noise(x, mask, generator)
        return alpha * x + sigma * eps, eps

    def denoising_loss(self, denoiser: Denoiser, x: torch.Tensor, mask: torch.Tensor,
                       cond: torch.Tensor | None = None, t: torch.Tensor | None = None) -> torch.Tensor:
        """ε-prediction loss per set, ``(B,)``: Σ‖ε − ε̂‖² / (N·D), t uniform on {0, …, T} (EDM's L2)."""
        if t is None:
            t = torch.randint(0, self.n_steps + 1, (x.shape[0],), device=x.device)
        z, eps = self.add_noise(x, t, mask)
        eps_hat = denoiser(z, t.to(x.dtype) / self.n_steps, mask, cond)
        err = ((eps - eps_hat) ** 2) * mask.unsqueeze(-1)
        return err.sum((1, 2)) / (x.shape[1] * x.shape[2])

    def predict_x0(self, z: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂₀ = (z_t − σ_t·ε̂)/α_t."""
        _, alpha, sigma = self._coefficients(t, z)
        return (z - sigma * eps_hat) / alpha

    def reverse_step(self, z: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(B, N, D)`` and standard deviation ``(B, 1, 1)`` of p(z_s | z_t) for s < t."""
        gamma_t, _, sigma_t = self._coefficients(t, z)
        gamma_s, _, sigma_s = self._coefficients(s, z)
        sigma2_ts = -torch.expm1(F.softplus(gamma_s) - F.softplus(gamma_t))
        alpha_ts = torch.exp(0.5 * (F.logsigmoid(-gamma_t) - F.logsigmoid(-gamma_s)))
        mean = z / alpha_ts - (sigma2_ts / alpha_ts / sigma_t) * eps_hat
        std = torch.sqrt(sigma2_ts) * sigma_s / sigma_t
        return mean, std

    def final_step(self, z0: torch.Tensor, eps_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of p(x | z_0) = N(x̂₀, (σ_0/α_0)²)."""
        t0 = torch.zeros(z0.shape[0], dtype=torch.long, device=z0.device)
        gamma0, _, _ = self._coefficients(t0, z0)
        return self.predict_x0(z0, eps_hat, t0), torch.exp(0.5 * gamma0)

    def step_log_prob(self, z_s: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log N(z_s; μ, σ²) on the space, per set ``(B,)`` (the centred channels count (n − 1) dims)."""
        d = self.space.dims(mask, z_s.shape[-1]).to(z_s.dtype)
        sq = (((z_s - mean) * mask.unsqueeze(-1)) ** 2).sum((1, 2)) / std.view(-1) ** 2
        return -0.5 * sq - d * (torch.log(std.view(-1)) + 0.5 * torch.log(torch.tensor(2 * torch.pi)))

    def continuous_kl_factor(self, t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        """Δλ/(e^{Δλ} − 1) per set ``(B,)`` for the steps t → s, with λ = log(α²/σ²) = −γ and Δλ = λ_s − λ_t.

        Between two ε-models the KL of a reverse step is ½(e^{Δλ} − 1)·‖ε_p − ε_q‖² (:meth:`step_kl`);
        its continuous-time (Girsanov) limit is ½Δλ·‖ε_p − ε_q‖² = ½∫ g²‖∇log p − ∇log q‖² dt. On a
        coarse grid the two part where Δλ is large: a 10-step sampler's last step (t = 100 → 0) has
        e^{Δλ} ≈ 10³ against Δλ ≈ 7. The final step z₀ → x has no continuous counterpart; its factor is 1.
        """
        if s is None:
            return torch.ones(t.shape, dtype=self.schedule.gamma_table.dtype, device=t.device)
        delta = self.schedule.gamma(t) - self.schedule.gamma(s)
        return delta / torch.expm1(delta)

    @staticmethod
    def step_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """KL(N(μ_p, σ²) ‖ N(μ_q, σ²)) = ‖μ_p − μ_q‖² / (2σ²), summed over dimensions, ``(B,)``."""
        return (((mean_p - mean_q) * mask.unsqueeze(-1)) ** 2).sum((1, 2)) / (2 * std.view(-1) ** 2)

    # -- the chain, one transition at a time -------------------------------------------------------

    def initial_state(self, mask: torch.Tensor, n_channels: int, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """z_T ~ N(0, I) on the space, ``(B, N, n_channels)`` for ``mask (B, N)``."""
        like = torch.empty(*mask.shape, n_channels, device=mask.device, dtype=dtype)
        return self.space.noise(like, mask, generator)

    def transitions(self, n_sampling_steps: int | None, batch: int, device: torch.device,
                    solver: Solver = ANCESTRAL) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The reverse transitions t → s of a (respaced) sampler as ``(B,)`` integer steps on ``solver``'s
        grid; the last one, s = None, is the final step z_0 → x."""
        if solver.spacing == "logsnr" and n_sampling_steps is not None and n_sampling_steps < self.n_steps:
            steps = logsnr_steps(self.schedule.gamma_table, n_sampling_steps)
        else:
            steps = respaced_steps(self.n_steps, n_sampling_steps)
        full = [torch.full((batch,), k, dtype=torch.long, device=device) for k in steps]
        return list(itertools.pairwise(full)) + [(full[-1], None)]

    def moments_from(self, z: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor,
                     s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(B, N, D)`` and std ``(B, 1, 1)`` of the step t → s (s = None: the final step) given ε̂(z_t)."""
        return self.final_step(z, eps_hat) if s is None else self.reverse_step(z, eps_hat, t, s)

    def moments(self, net: Denoiser, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None, mask: torch.Tensor,
                cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the step t → s of the ε-network ``net`` (conditioned on ``cond``) from ``z``."""
        return self.moments_from(z, net(z, t.to(z.dtype) / self.n_steps, mask, cond), t, s)

    def solver_eps(self, solver: Solver, z: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor,
                   s: torch.Tensor | None, history: History | None) -> tuple[torch.Tensor, History | None]:
        """The ε̂ that the step t → s takes under ``solver``, and the history the next step reads.

        Second order (the stochastic multistep DPM-Solver++(2M) of Lu et al. 2022): with λ = −γ/2 and
        the previous step u → t, h = λ_s − λ_t and r = (λ_t − λ_u)/h, the data estimate is extrapolated
        linearly in λ,
            D = x̂₀(z_t) + (x̂₀(z_t) − x̂₀(z_u))/(2r),
        and the step is the ancestral one at x̂₀ = D, i.e. at ε̂ = (z_t − α_t·D)/σ_t: a Gaussian with the
        moments of :meth:`reverse_step`, exact in closed form given the history. The first step (no
        history) and the final step z_0 → x stay first order.
        """
        if solver.order == 1 or s is None:
            return eps_hat, None
        x0 = self.predict_x0(z, eps_hat, t)
        if history is not None:
            lam_u, lam_t, lam_s = (-0.5 * self.schedule.gamma(k) for k in (history.t, t, s))
            r = ((lam_t - lam_u) / (lam_s - lam_t)).to(z.dtype).view(-1, 1, 1)
            _, alpha, sigma = self._coefficients(t, z)
            eps_hat = (z - alpha * (x0 + (x0 - history.x0) / (2 * r))) / sigma
        return eps_hat, History(x0, t)

    def draw(self, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """z_s = μ + σ·ε on the space, ε ~ N(0, I): a sample of the step N(μ, σ²)."""
        return self.space.project(mean + std * self.space.noise(mean, mask, generator), mask)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, mask: torch.Tensor, n_channels: int, n_sampling_steps: int | None = None,
               cond: torch.Tensor | None = None, generator: torch.Generator | None = None,
               callback: Callable[[int], None] | None = None, dtype: torch.dtype = torch.float32,
               solver: Solver = ANCESTRAL) -> torch.Tensor:
        """Sampling from z_T ~ N(0, I) through the (possibly respaced) steps of ``solver``. ``-> (B, N, D)``.

        ``callback(k)`` is called after the k-th network evaluation (for progress bars).
        """
        z = self.initial_state(mask, n_channels, generator, dtype)
        history = None
        for k, (t, s) in enumerate(self.transitions(n_sampling_steps, len(mask), mask.device, solver)):
            eps_hat, history = self.solver_eps(solver, z, denoiser(z, t.to(z.dtype) / self.n_steps, mask, cond),
                                               t, s, history)
            z = self.draw(*self.moments_from(z, eps_hat, t, s), mask, generator)
            if callback:
                callback(k + 1)
        return z
