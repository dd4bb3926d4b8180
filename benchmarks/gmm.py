"""A Gaussian mixture as a diffusion prior with exact noise prediction, and its closed-form tilt by a
linear-Gaussian likelihood: the ground truth that CTRL and RGDM are tested against.

Prior p(x) = Σ_k π_k N(x; m_k, C_k) in R^d. Under z_t = α_t·x + σ_t·ε the marginal stays a mixture,
p_t(z) = Σ_k π_k N(z; α_t m_k, α_t² C_k + σ_t² I), so the optimal noise prediction is exact:
    ε*(z, t) = −σ_t ∇ log p_t(z) = σ_t Σ_k r_k(z) (α_t² C_k + σ_t² I)⁻¹ (z − α_t m_k),
with r_k(z) the posterior responsibilities. A likelihood p(y | x) = N(y; wᵀx, s²) tilts it into
p(x | y) ∝ p(x)·p(y | x), again a mixture with
    C'_k = (C_k⁻¹ + w wᵀ/s²)⁻¹,  m'_k = C'_k (C_k⁻¹ m_k + w y/s²),  π'_k ∝ π_k N(y; wᵀm_k, wᵀC_k w + s²).
States are point sets of one point, ``(B, 1, d)``.
"""
from __future__ import annotations

import math

import torch

from common.schedules import NoiseSchedule


class GaussianMixture:
    """``weights (K,)``, ``means (K, d)``, ``covariances (K, d, d)``, float64."""

    def __init__(self, weights, means, covariances):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, d)`` samples."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covariances)[k]
        noise = torch.randn(n, self.dim, 1, dtype=torch.float64, generator=generator)
        return self.means[k] + (chol @ noise).squeeze(-1)

    def _components(self, x: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """log N(x; α m_k, α²C_k + σ²I) ``(n, K)`` and (α²C_k + σ²I)⁻¹ (x − α m_k) ``(n, K, d)``;
        ``alpha``, ``sigma``: scalars or ``(n,)``."""
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        eye = torch.eye(self.dim, dtype=torch.float64)
        cov = alpha.unsqueeze(-1) ** 2 * self.covariances + sigma**2 * eye  # (n|1, K, d, d)
        diff = x.unsqueeze(1) - alpha * self.means  # (n, K, d)
        chol = torch.linalg.cholesky(cov)
        solved = torch.cholesky_solve(diff.unsqueeze(-1), chol).squeeze(-1)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return -0.5 * ((diff * solved).sum(-1) + log_det + self.dim * math.log(2 * math.pi)), solved

    def responsibilities(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Component posteriors ``(n, K)`` of ``x (n, d)`` under the mixture noised to (α, σ), and the
        precision-weighted residuals ``(n, K, d)``."""
        log_n, solved = self._components(x, alpha, sigma)
        return torch.softmax(log_n + self.weights.log(), dim=-1), solved

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` -> ``(n,)``."""
        return torch.logsumexp(self._components(x, 1.0, 0.0)[0] + self.weights.log(), dim=-1)

    def noisy_log_likelihood(self, z: torch.Tensor, alpha, sigma, w, y: float, s: float) -> torch.Tensor:
        """log p_t(y | z_t) for the likelihood N(y; wᵀx, s²) and z_t = α x + σ ε: ``(n, d) -> (n,)``;
        ``alpha``, ``sigma``: scalars or ``(n,)``.

        Per component, x | z_t is Gaussian with precision P_k = C_k⁻¹ + (α²/σ²) I and mean
        P_k⁻¹ (C_k⁻¹ m_k + α z/σ²), so p_t(y | z_t) = Σ_k r_k(z_t) N(y; wᵀ mean_k, wᵀ P_k⁻¹ w + s²).
        """
        w = torch.as_tensor(w, dtype=torch.float64)
        r, _ = self.responsibilities(z, alpha, sigma)
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)
        v = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1) ** 2
        inv_c = torch.linalg.inv(self.covariances)
        cov = torch.linalg.inv(inv_c + (a**2 / v).unsqueeze(-1) * torch.eye(self.dim, dtype=torch.float64))  # (n|1, K, d, d)
        info = (inv_c @ self.means.unsqueeze(-1)).squeeze(-1) + a * z.unsqueeze(1) / v  # (n, K, d)
        mean_y = (cov @ info.unsqueeze(-1)).squeeze(-1) @ w  # (n, K)
        var_y = torch.einsum("i,...ij,j->...", w, cov, w) + s**2  # (n|1, K)
        log_n = -0.5 * ((y - mean_y) ** 2 / var_y + torch.log(2 * math.pi * var_y))
        return torch.logsumexp(log_n + torch.log(r.clamp(min=1e-300)), dim=-1)

    def tilt(self, w, y: float, s: float) -> GaussianMixture:
        """The posterior p(x | y) for the likelihood N(y; wᵀx, s²)."""
        w = torch.as_tensor(w, dtype=torch.float64)
        precision = torch.linalg.inv(self.covariances) + torch.outer(w, w) / s**2
        cov = torch.linalg.inv(precision)
        info = torch.linalg.solve(self.covariances, self.means.unsqueeze(-1)).squeeze(-1) + w * y / s**2
        means = (cov @ info.unsqueeze(-1)).squeeze(-1)
        var_y = (w @ self.covariances @ w) + s**2
        log_w = self.weights.log() - 0.5 * ((y - self.means @ w) ** 2 / var_y + torch.log(2 * math.pi * var_y))
        return GaussianMixture(torch.softmax(log_w, 0), means, cov)


class MixtureDenoiser(torch.nn.Module):
    """The exact ε*(z, t) of a :class:`GaussianMixture` under a schedule; ``z (B, 1, d)``, ``t = step/T (B,)``."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__()
        self.mixture, self.schedule = mixture, schedule

    def forward(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        step = (t * self.schedule.n_steps).round().long()
        gamma = self.schedule.gamma(step).double()
        alpha, sigma = NoiseSchedule.alpha(gamma), NoiseSchedule.sigma(gamma)
        r, solved = self.mixture.responsibilities(z[:, 0].double(), alpha, sigma)
        score = -(r.unsqueeze(-1) * solved).sum(1)
        return (-sigma.view(-1, 1) * score).unsqueeze(1).to(z.dtype)
