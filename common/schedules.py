"""Noise schedules of variance-preserving diffusion, z_t = α_t·x + σ_t·ε with α_t² + σ_t² = 1.

A schedule is a table of γ_t = log(σ_t² / α_t²) for the integer steps t = 0, …, T, so that
α_t² = sigmoid(−γ_t) and σ_t² = sigmoid(γ_t). γ grows with t (more noise).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _clip_step_ratios(alpha2: np.ndarray, clip: float = 0.001) -> np.ndarray:
    """Re-derive ᾱ² from its step ratios ᾱ_t²/ᾱ_{t−1}², each clipped to [clip, 1] (EDM's stabilisation)."""
    ratios = alpha2 / np.concatenate([[1.0], alpha2[:-1]])
    return np.cumprod(np.clip(ratios, clip, 1.0))


def polynomial_alpha2(n_steps: int, power: float = 2.0, precision: float = 1e-5) -> np.ndarray:
    """EDM's ``polynomial_<power>``: α_t² = (1 − (t/T)^power)², step ratios clipped at 0.001, then
    squeezed into [precision, 1 − precision] as (1 − 2·precision)·α_t² + precision. Shape ``(T+1,)``."""
    t = np.arange(n_steps + 1, dtype=np.float64) / n_steps
    alpha2 = _clip_step_ratios((1.0 - t**power) ** 2)
    return (1.0 - 2.0 * precision) * alpha2 + precision


def cosine_alpha2(n_steps: int, s: float = 0.008, precision: float = 1e-5) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule, ᾱ_t = cos²((t/T + s)/(1 + s)·π/2) / ᾱ_0, clipped as above."""
    t = np.arange(n_steps + 1, dtype=np.float64) / n_steps
    f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha2 = _clip_step_ratios(f / f[0])
    return (1.0 - 2.0 * precision) * alpha2 + precision


def linear_beta_alpha2(n_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM/PVD's linear β schedule: ᾱ_t = Π_{k≤t}(1 − β_k) for t = 1, …, T. Shape ``(T+1,)``.

    Step 0 (the data end, where the last reverse step decodes) gets ᾱ_0 = 1 − β_start/2, half the
    first step's noise, so that γ_0 stays finite.
    """
    betas = np.linspace(beta_start, beta_end, n_steps, dtype=np.float64)
    return np.concatenate([[1.0 - beta_start / 2], np.cumprod(1.0 - betas)])


SCHEDULES = {
    "polynomial_2": lambda T, precision: polynomial_alpha2(T, 2.0, precision),
    "cosine": lambda T, precision: cosine_alpha2(T, precision=precision),
    "linear": lambda T, precision: linear_beta_alpha2(T),
}


class NoiseSchedule(torch.nn.Module):
    """γ_t for t = 0, …, T as a buffer (moves with the model between devices).

    Args:
        name: ``polynomial_2`` (EDM), ``cosine`` or ``linear`` (PVD: β from 1e-4 to 0.02).
        n_steps: T.
        precision: EDM's floor on α² and σ² (ignored by ``linear``).
    """

    def __init__(self, name: str = "polynomial_2", n_steps: int = 1000, precision: float = 1e-5):
        super().__init__()
        if name not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {name!r} (expected one of {', '.join(SCHEDULES)})")
        if n_steps < 1:
            raise ValueError(f"n_steps must be positive, got {n_steps}")
        alpha2 = SCHEDULES[name](n_steps, precision)
        gamma = np.log(1.0 - alpha2) - np.log(alpha2)
        self.name, self.n_steps, self.precision = name, n_steps, precision
        self.register_buffer("gamma_table", torch.from_numpy(gamma).float(), persistent=False)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        """γ at integer steps ``t`` (any shape, int64)."""
        return self.gamma_table[t]

    @staticmethod
    def alpha(gamma: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.sigmoid(-gamma))

    @staticmethod
    def sigma(gamma: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.sigmoid(gamma))
