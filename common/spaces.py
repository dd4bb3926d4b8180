"""State spaces of the diffusion: how noise is drawn and projected, and how many dimensions count.

Every state is a padded set of points ``x`` of shape ``(B, N, D)`` with a node mask ``(B, N)``: atoms
of molecules (positions ⊕ type features) or points of a cloud. The first ``centered_dims`` channels are
constrained to zero mean over the real points of each set (E(3)-invariant densities over positions live
on that subspace, EDM's zero centre-of-mass trick); the others are plain Euclidean.
"""
from __future__ import annotations

import torch


class PointSetSpace:
    """Padded point sets whose first ``centered_dims`` channels have zero mean per set.

    Args:
        centered_dims: number of leading channels projected to zero mean (3 for molecules, 0 for R^d).
    """

    def __init__(self, centered_dims: int = 0):
        self.centered_dims = centered_dims

    def project(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Zero the padding and remove the masked mean of the centred channels. ``(B, N, D) -> (B, N, D)``."""
        m = mask.unsqueeze(-1).to(x.dtype)
        x = x * m
        k = self.centered_dims
        if k == 0:
            return x
        n = m.sum(1, keepdim=True).clamp(min=1)
        mean = x[..., :k].sum(1, keepdim=True) / n
        return torch.cat([x[..., :k] - mean * m, x[..., k:]], dim=-1)

    def noise(self, like: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard Gaussian noise on the space (isotropic within the constrained subspace)."""
        device = generator.device if generator is not None else like.device
        eps = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)
        return self.project(eps, mask)

    def dims(self, mask: torch.Tensor, n_channels: int) -> torch.Tensor:
        """Degrees of freedom per set, ``(B,)``: (n − 1)·k + n·(D − k) for k centred channels."""
        n = mask.sum(1).to(torch.float32)
        k = self.centered_dims
        return (n - 1) * k + n * (n_channels - k) if k else n * n_channels
