"""Embeddings of the diffusion time, of an optional condition, and of point coordinates."""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer-style features of ``t (B,)`` in [0, 1] (read as step ``scale·t``), ``-> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / max(half - 1, 1))
    angles = (scale * t).unsqueeze(-1) * freqs
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(emb, (0, dim - 2 * half))


def fourier_features(points: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """``points (B, N, 3)`` -> ``(B, N, 3 + 6·n_frequencies)``: the coordinates and sin/cos of
    2^k·π·x for k = 0, …, n_frequencies − 1 (finer detail than a linear map of x alone resolves)."""
    if n_frequencies == 0:
        return points
    freqs = math.pi * 2.0 ** torch.arange(n_frequencies, device=points.device, dtype=points.dtype)
    angles = (points.unsqueeze(-1) * freqs).flatten(-2)
    return torch.cat([points, angles.sin(), angles.cos()], dim=-1)


class ContextEmbedding(nn.Module):
    """The per-cloud context ``(B, H)`` of a denoiser: an MLP of the sinusoidal time features plus,
    for a conditioned network, ``t·W_c c`` with a bias-free linear map ``cond_embed`` of its own.

    The time gate t ∈ [0, 1] follows the molecule model (:class:`molctrl.prior.MoleculeDenoiser`): the
    exact conditional ε differs from the unconditional one by −σ_t ∇ log p(y | z_t), which vanishes as
    t → 0, and the gate keeps the condition from moving the last, most heavily KL-weighted steps. With
    ``cond_embed`` zeroed the context, and so the network, equals the unconditional one.
    """

    def __init__(self, width: int, cond_dim: int = 0):
        super().__init__()
        self.width, self.cond_dim = width, cond_dim
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_embed = nn.Linear(cond_dim, width, bias=False) if cond_dim else None

    def forward(self, t: torch.Tensor, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``t (B,)``, ``cond (B, cond_dim)`` or None -> ``(B, H)``."""
        ctx = self.time(sinusoidal_embedding(t, self.width))
        if self.cond_embed is None:
            if cond is not None:
                raise ValueError("this denoiser is unconditional but a condition was given (use with_condition first)")
            return ctx
        if cond is None or cond.shape != (batch, self.cond_dim):
            raise ValueError(f"a conditioned denoiser needs cond of shape ({batch}, {self.cond_dim}), "
                             f"got {None if cond is None else tuple(cond.shape)}")
        return ctx + self.cond_embed(cond.to(ctx.dtype)) * t.to(ctx.dtype).view(-1, 1)
