"""Nearest-neighbour distances between point clouds and the Chamfer distance (PointFlow convention).

``CD(X, Y) = mean_x min_y ||x - y||² + mean_y min_x ||x - y||²``: squared Euclidean distances,
both directions, the two means *summed* (not averaged), as PointFlow's ``distChamfer`` and its
evaluation code compute it. All squared distances of a pair come from one matrix product (after
centring the pair, which keeps float32 rounding to about 1e-7 of the squared extent: identical
clouds give ~1e-9 rather than exactly 0; pass float64 clouds for more).
"""
from __future__ import annotations

import torch

#: Default bound on the elements of one distance block, ``chunk * N * M`` (2^26 floats = 256 MiB).
MAX_BLOCK_ELEMENTS = 2**26


def as_batch(points: torch.Tensor, name: str = "points") -> tuple[torch.Tensor, bool]:
    """``points (N, 3)`` or ``(B, N, 3)`` as ``(B, N, 3)``, and whether a batch dimension was added."""
    if points.dim() == 2:
        points = points.unsqueeze(0)
        single = True
    else:
        single = False
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} has shape {tuple(points.shape)} (expected (N, 3) or (B, N, 3))")
    return points, single


def _nearest_block(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Centre each pair on x's mean (distances do not change; rounding error shrinks), then get all
    # squared distances |x|² − 2 x·y + |y|² from one product of augmented coordinates.
    centre = x.mean(dim=1, keepdim=True)
    x, y = x - centre, y - centre
    xx, yy = (x * x).sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True)
    xa = torch.cat([x, torch.ones_like(xx), xx], dim=-1)
    ya = torch.cat([-2.0 * y, yy, torch.ones_like(yy)], dim=-1)
    d = torch.bmm(xa, ya.transpose(1, 2))
    return d.amin(dim=2).clamp_(min=0.0), d.amin(dim=1).clamp_(min=0.0)


def nearest_sq_distances(
    x: torch.Tensor, y: torch.Tensor, max_block: int = MAX_BLOCK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance from every point of ``x (B, N, 3)`` to its nearest point of ``y (B, M, 3)``,
    ``(B, N)``, and from every point of ``y`` to its nearest in ``x``, ``(B, M)``.

    Clouds are paired by batch index; the work is split over the batch so that no distance block
    holds more than ``max_block`` elements.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"batch sizes differ: {x.shape[0]} and {y.shape[0]} clouds")
    per_pair = x.shape[1] * y.shape[1]
    step = max(1, max_block // max(per_pair, 1))
    if step >= x.shape[0]:
        return _nearest_block(x, y)
    parts = [_nearest_block(x[k:k + step], y[k:k + step]) for k in range(0, x.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def chamfer_distance(x: torch.Tensor, y: torch.Tensor, max_block: int = MAX_BLOCK_ELEMENTS) -> torch.Tensor:
    """Chamfer distance (PointFlow convention, see the module docstring) between paired clouds.

    ``x (B, N, 3)`` and ``y (B, M, 3)`` give ``(B,)``; ``(N, 3)`` and ``(M, 3)`` give a scalar.
    Units: squared model (or normalised) units, whichever frame the clouds are in.
    """
    x, single = as_batch(x, "x")
    y, _ = as_batch(y, "y")
    dx, dy = nearest_sq_distances(x, y, max_block)
    cd = dx.mean(dim=1) + dy.mean(dim=1)
    return cd[0] if single else cd
