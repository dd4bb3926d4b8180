"""A coarse voxel grid over a fixed box: point features averaged into cells, and read back at the
points by trilinear interpolation (the point-voxel scheme of PVCNN/PVD, on a fixed grid).

The grid has ``R³`` cells whose centres span ``[-extent, extent]³``. The normalised frame holds data
of unit standard deviation (the procedural shapes reach |x| ≈ 3.8 in it, 0.4 % of their
coordinates beyond 3) and every diffusion state z_t = α_t·x + σ_t·ε has about unit variance too, so
one fixed box serves every t (and keeps where a shape sits, which a per-cloud box would erase);
points outside are clamped onto the border cells. Voxelisation assigns each point to its
nearest cell centre and averages (so a cell's value does not depend on how many points a cloud
has); devoxelisation interpolates the 8 surrounding cell centres with ``grid_sample``.

Measured on one CPU thread (batch 32, 512 points, 32 channels, R = 8, forward + backward): 21 ms,
against 135 ms for trilinear splatting that materialises a ``(B, N, 8, C)`` tensor in both directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Voxelisation:
    """Where the points of a batch fall: ``index (B·N,)`` flat cell of each point over the B·R³ cells,
    ``inverse_count (B·R³, 1)`` = 1/max(points in the cell, 1), and ``coords (B, 1, 1, N, 3)`` the
    points in ``grid_sample``'s [-1, 1] frame (last axis first)."""

    index: torch.Tensor
    inverse_count: torch.Tensor
    coords: torch.Tensor
    resolution: int


@dataclass(frozen=True)
class VoxelGrid:
    """A ``resolution³`` grid whose cell centres span ``[-extent, extent]³`` (``resolution ≥ 2``)."""

    resolution: int
    extent: float = 3.5

    def __post_init__(self) -> None:
        if self.resolution < 2:
            raise ValueError(f"a voxel grid needs a resolution of at least 2, got {self.resolution}")
        if not self.extent > 0:
            raise ValueError(f"a voxel grid needs a positive extent, got {self.extent}")

    def assign(self, points: torch.Tensor) -> Voxelisation:
        """The cells of ``points (B, N, 3)``; computed once per forward pass and shared by every block."""
        b, n, _ = points.shape
        r = self.resolution
        unit = (points / self.extent).clamp(-1.0, 1.0)  # cell centres at -1, …, 1
        with torch.no_grad():
            cell = ((unit + 1.0) * ((r - 1) / 2.0)).round().long()
            batch = torch.arange(b, device=points.device).view(-1, 1)
            index = (((batch * r + cell[..., 0]) * r + cell[..., 1]) * r + cell[..., 2]).reshape(-1)
            count = torch.zeros(b * r**3, device=points.device, dtype=points.dtype)
            count.index_add_(0, index, torch.ones_like(index, dtype=points.dtype))
        coords = unit.flip(-1).view(b, 1, 1, n, 3)  # grid_sample reads (W, H, D) = (z, y, x)
        return Voxelisation(index, count.clamp(min=1.0).reciprocal().unsqueeze(-1), coords, r)


def voxelise(features: torch.Tensor, vox: Voxelisation) -> torch.Tensor:
    """Mean of point ``features (B, N, C)`` per cell -> grid ``(B, C, R, R, R)`` (0 in empty cells)."""
    b, n, c = features.shape
    r = vox.resolution
    sums = features.new_zeros(b * r**3, c).index_add_(0, vox.index, features.reshape(b * n, c))
    return (sums * vox.inverse_count).view(b, r, r, r, c).permute(0, 4, 1, 2, 3)


def devoxelise(grid: torch.Tensor, vox: Voxelisation) -> torch.Tensor:
    """Trilinear interpolation of ``grid (B, C, R, R, R)`` at the points -> ``(B, N, C)``."""
    out = F.grid_sample(grid, vox.coords, mode="bilinear", padding_mode="border", align_corners=True)
    return out.flatten(2).transpose(1, 2)
