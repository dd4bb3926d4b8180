"""Every estimator on the 2-D Gaussian-mixture tilt, against closed form.

The prior p(x) = Σ_k π_k N(x; m_k, C_k) is represented by its exact ε* (:class:`benchmarks.gmm.MixtureDenoiser`);
the reward is the likelihood N(y; x₁, s²) of the first coordinate at y = 1, and the tilt p(x)·N(y; x₁, s²)^(1/α)
is again a known mixture (:meth:`benchmarks.gmm.GaussianMixture.tilt`). The conditioned model is the prior
plus a small network whose output starts at zero (:class:`CorrectedPrior`), trained with 20-step
respaced rollouts (what CTRL and trajectory-level RGDM can reach is the tilt of that 20-step chain).
Each row gives the mass on the right-hand component (prior 0.40, tilt ≈ 0.75) and the largest errors
of the component means and covariances against the exact tilt, from 20,000 samples, by soft assignment
to the prior's components. The tests in ``benchmarks/tests/test_gmm_tilt.py`` assert these rows' bounds.

    python -m benchmarks.gmm_tilt [--out FILE]
"""
from __future__ import annotations

import time

import click
import torch
from torch import nn

from benchmarks.gmm import GaussianMixture, MixtureDenoiser
from benchmarks.record import emit, machine_info
from common.ctrl import ctrl_loss
from common.diffusion import GaussianDiffusion
from common.guidance import GuidedDenoiser, reconstruction_likelihood
from common.rewards import GaussianLogLikelihood
from common.rgdm import payoff_resample, payoff_score_loss, rgdm_trajectory_loss
from common.schedules import NoiseSchedule
from common.smc import guided_proposal, reward_potential, smc_sample
from common.spaces import PointSetSpace

PRIOR = GaussianMixture([0.6, 0.4], [[-1.5, 0.0], [1.5, 0.5]], [[[0.6, 0.0], [0.0, 0.6]], [[0.5, 0.1], [0.1, 0.9]]])
W, Y, S = [1.0, 0.0], 1.0, 1.2  # likelihood N(y; x₁, s²) at y = 1
STEPS, BATCH, ITERATIONS = 20, 256, 500
SCHEDULE = NoiseSchedule("polynomial_2", 1000, 1e-5)
DIFFUSION = GaussianDiffusion(SCHEDULE, PointSetSpace(centered_dims=0))


class FirstCoordinate(nn.Module):
    def forward(self, x, mask):
        return x[:, 0, :1]


REWARD = GaussianLogLikelihood(FirstCoordinate(), [S])


class CorrectedPrior(nn.Module):
    """ε*(z, t) + g(z, t), with g an MLP on (z, Fourier features of t) whose output starts at zero."""

    def __init__(self, prior: nn.Module):
        super().__init__()
        self.prior = prior
        self.net = nn.Sequential(nn.Linear(18, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z, t, mask, cond=None):
        f = torch.arange(1, 9, dtype=z.dtype) * torch.pi * t[:, None]
        return self.prior(z, t, mask) + self.net(torch.cat([z[:, 0], f.sin(), f.cos()], -1)).unsqueeze(1)


def setup(lr: float):
    """The exact prior, a conditioned model that starts as it, its optimiser, a batch mask and targets."""
    torch.manual_seed(0)
    prior = MixtureDenoiser(PRIOR, SCHEDULE)
    model = CorrectedPrior(prior)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=lr)
    return prior, model, optimizer, torch.ones(BATCH, 1, dtype=torch.bool), torch.full((BATCH, 1), Y)


def _fit(model: nn.Module, optimizer: torch.optim.Optimizer, batch_loss) -> nn.Module:
    """``ITERATIONS`` Adam steps on ``batch_loss()`` with a cosine learning rate."""
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, ITERATIONS)
    for _ in range(ITERATIONS):
        loss = batch_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model


def train(method: str, coefficient: float, kl: str = "chain") -> torch.Tensor:
    """Fine-tune with CTRL (α = coefficient, KL of form ``kl``) or trajectory-level RGDM (τ = coefficient);
    20,000 samples of the result."""
    prior, model, optimizer, mask, y = setup(lr=1e-2)

    def batch_loss():
        if method == "ctrl":
            return ctrl_loss(DIFFUSION, model, prior, REWARD, mask, 2, y, alpha=coefficient, n_sampling_steps=STEPS,
                             checkpoint=False, kl=kl)[0]
        return rgdm_trajectory_loss(DIFFUSION, model, prior, REWARD, mask, 2, y, temperature=coefficient,
                                    n_sampling_steps=STEPS, checkpoint=False, group_size=BATCH // 4)[0]  # 4 groups

    return samples(_fit(model, optimizer, batch_loss))


def train_prior_pool() -> tuple[torch.Tensor, torch.Tensor]:
    """RGDM with prior proposals: 20,000 prior-chain samples resampled by exp(r) and fitted by the
    denoising loss. Samples of the result, and the pool's effective sample size."""
    _, model, optimizer, mask, _ = setup(lr=3e-3)
    with torch.no_grad():
        pool = DIFFUSION.sample(MixtureDenoiser(PRIOR, SCHEDULE), torch.ones(20_000, 1, dtype=torch.bool), 2, STEPS,
                                generator=torch.Generator().manual_seed(5))
        log_reward = REWARD(pool, None, torch.full((len(pool), 1), Y)).expand(BATCH, -1)
    ess = []

    def batch_loss():
        rows, batch_ess = payoff_resample(log_reward)
        ess[:] = [batch_ess[0]]
        return DIFFUSION.denoising_loss(model, pool[rows], mask).mean()

    return samples(_fit(model, optimizer, batch_loss)), ess[0]


def train_payoff_score(log_likelihood, mode: str) -> torch.Tensor:
    """Step-level RGDM at noised prior samples, the pay-off ε from ``log_likelihood`` in guidance ``mode``;
    20,000 samples of the result on 100 steps."""
    prior, model, optimizer, mask, _ = setup(lr=3e-3)
    payoff = GuidedDenoiser(prior, DIFFUSION, log_likelihood, 1.0, mode)
    g = torch.Generator().manual_seed(6)
    return samples(_fit(model, optimizer, lambda: payoff_score_loss(
        DIFFUSION, model, payoff, PRIOR.sample(BATCH, g).float().unsqueeze(1), mask)[0].mean()), steps=100)


def guided(log_likelihood, mode: str) -> torch.Tensor:
    """20,000 samples of the prior guided by ``log_likelihood`` in ``mode``, on 100 steps (float64)."""
    denoiser = GuidedDenoiser(MixtureDenoiser(PRIOR, SCHEDULE), DIFFUSION, log_likelihood, 1.0, mode)
    return DIFFUSION.sample(denoiser, torch.ones(20_000, 1, dtype=torch.bool), 2, 100,
                            generator=torch.Generator().manual_seed(1), dtype=torch.float64)[:, 0]


def steered(n_particles: int, proposal: str = "prior", outputs: int = 2_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential Monte Carlo towards the tilt at τ = 1 on the 20-step chain (:func:`common.smc.smc_sample`):
    ``outputs`` samples, one per system of ``n_particles``, and the ESS trace ``(S, outputs)``. The
    potential is the reward's reconstruction likelihood on x̂₀ from t = 400 on; resampling below ESS K/2.
    Proposals: the prior; ``guided``, the prior guided by the exact p_t(y | z) (near the optimal
    kernel); ``reversed``, the same guidance with scale −1, a deliberately poor kernel that steers away
    from y (alone it leaves 0.14 of the mass on the side the tilt favours with 0.73)."""
    prior = MixtureDenoiser(PRIOR, SCHEDULE)
    y = torch.full((outputs * n_particles, 1), Y, dtype=torch.float64)
    scale = {"prior": None, "guided": 1.0, "reversed": -1.0}[proposal]
    kernel = None if scale is None else guided_proposal(GuidedDenoiser(prior, DIFFUSION, noisy_log_likelihood, scale,
                                                                       "classifier", max_shift=None))
    result = smc_sample(DIFFUSION, prior, reward_potential(REWARD, DIFFUSION, y), torch.ones(outputs, 1, dtype=torch.bool),
                        2, n_particles, STEPS, kernel, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    return result.x[:, 0], result.ess


@torch.no_grad()
def samples(model: nn.Module, n: int = 20_000, steps: int = STEPS) -> torch.Tensor:
    return DIFFUSION.sample(model, torch.ones(n, 1, dtype=torch.bool), 2, steps,
                            generator=torch.Generator().manual_seed(1))[:, 0].double()


def chain_tilt(coefficient: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of the 20-step prior chain with their normalised weights ∝ exp(r/coefficient)."""
    with torch.no_grad():
        x = DIFFUSION.sample(MixtureDenoiser(PRIOR, SCHEDULE), torch.ones(200_000, 1, dtype=torch.bool), 2, STEPS,
                             generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = REWARD(x, None, torch.full((len(x), 1), Y, dtype=torch.float64))
    return x[:, 0], torch.softmax(r / coefficient, 0)


def exact_tilt(coefficient: float = 1.0) -> torch.Tensor:
    """200,000 samples of p(x)·N(y; x₁, s²)^(1/α) = p(x)·N(y; x₁, α s²) up to Z."""
    return PRIOR.tilt(W, Y, S * coefficient**0.5).sample(200_000, torch.Generator().manual_seed(3))


def prior_samples() -> torch.Tensor:
    return PRIOR.sample(200_000, torch.Generator().manual_seed(4))


def stats(x: torch.Tensor, weights: torch.Tensor | None = None):
    """Mixture weights ``(2,)``, means ``(2, 2)`` and covariances ``(2, 2, 2)`` by soft assignment."""
    r, _ = PRIOR.responsibilities(x)
    r = r * (weights[:, None] * len(x) if weights is not None else 1.0)
    mass = r.sum(0)
    means = (r.T @ x) / mass[:, None]
    centred = x.unsqueeze(1) - means  # (n, 2, d)
    covs = torch.einsum("nk,nki,nkj->kij", r, centred, centred) / mass[:, None, None]
    return mass / len(x), means, covs


def errors(found, reference) -> dict[str, float]:
    """Largest absolute errors of the weights and means, and relative Frobenius error of the covariances."""
    (w, m, c), (w_ref, m_ref, c_ref) = found, reference
    rel = torch.linalg.matrix_norm(c - c_ref) / torch.linalg.matrix_norm(c_ref)
    return {"weight": float((w - w_ref).abs().max()), "mean": float((m - m_ref).abs().max()), "cov_rel": float(rel.max())}


def noisy_log_likelihood(z, t, mask):
    """The exact log p_t(y | z_t) of the mixture (what a perfect noise-aware predictor would learn)."""
    gamma = SCHEDULE.gamma((t * SCHEDULE.n_steps).round().long()).double()
    return PRIOR.noisy_log_likelihood(z[:, 0].double(), NoiseSchedule.alpha(gamma), NoiseSchedule.sigma(gamma), W, Y, S)


def clean_log_likelihood(x, t, mask):
    return REWARD(x.double(), mask, torch.full((len(x), 1), Y, dtype=torch.float64))


def widened_log_likelihood(n: int = 20_000):
    return reconstruction_likelihood(REWARD, DIFFUSION, torch.full((n, 1), Y, dtype=torch.float64))


ROWS = {
    "prior": prior_samples,
    "CTRL, chain KL, α = 1": lambda: train("ctrl", 1.0),
    "CTRL, continuous KL, α = 1": lambda: train("ctrl", 1.0, kl="continuous"),
    "RGDM, trajectory-level, τ = 1": lambda: train("rgdm", 1.0),
    "RGDM, prior pool": lambda: train_prior_pool()[0],
    "RGDM, pay-off score, exact p_t(y | z)": lambda: train_payoff_score(noisy_log_likelihood, "classifier"),
    "RGDM, pay-off score, reconstruction (widened)": lambda: train_payoff_score(widened_log_likelihood(), "reconstruction"),
    "classifier guidance, exact p_t(y | z)": lambda: guided(noisy_log_likelihood, "classifier"),
    "reconstruction guidance, plain": lambda: guided(clean_log_likelihood, "reconstruction"),
    "reconstruction guidance, widened": lambda: guided(widened_log_likelihood(), "reconstruction"),
    **{f"SMC, {proposal} proposal, K = {k}": (lambda proposal=proposal, k=k: steered(k, proposal)[0])
       for proposal, k in (("prior", 4), ("prior", 16), ("prior", 64), ("guided", 4), ("guided", 16), ("reversed", 16),
                           ("reversed", 64))},
}


@click.command()
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(threads: int, out: str | None) -> None:
    """Train or sample every row and print one JSON record of its errors against the exact and chain tilts."""
    torch.set_num_threads(threads)
    exact = stats(exact_tilt())
    chain = stats(*chain_tilt(1.0))
    rows = {"exact tilt": {"right_mass": round(float(exact[0][1]), 3)},
            "20-step chain tilt": {"right_mass": round(float(chain[0][1]), 3)} | {
                f"vs_exact_{k}": round(v, 3) for k, v in errors(chain, exact).items()}}
    for name, draw in ROWS.items():
        t0 = time.perf_counter()
        found = stats(draw())
        rows[name] = ({"right_mass": round(float(found[0][1]), 3)}
                      | {f"vs_exact_{k}": round(v, 3) for k, v in errors(found, exact).items()}
                      | {"seconds": round(time.perf_counter() - t0, 1)})
    emit({"benchmark": "gmm_tilt", "command": "python -m benchmarks.gmm_tilt" + (f" --out {out}" if out else ""),
          "prior": {"weights": PRIOR.weights.tolist(), "means": PRIOR.means.tolist()},
          "likelihood": {"w": W, "y": Y, "s": S}, "training": {"steps": STEPS, "batch": BATCH, "iterations": ITERATIONS},
          "seeds": "torch.manual_seed(0) before each training; sampling generators 1 (models), 3 (exact), 4 (prior)",
          "rows": rows, "machine": machine_info()}, out)


if __name__ == "__main__":
    main()
