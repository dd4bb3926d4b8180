"""PointNet (Qi et al. 2017) without the input transforms: a shared per-point MLP and a symmetric pool.

The pool concatenates the max and the mean over the points: both are invariant to point order, and
the mean keeps the global feature from hinging on single extreme points when N changes.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn


def symmetric_pool(h: torch.Tensor) -> torch.Tensor:
    """``(B, N, C) -> (B, 2C)``: [max over points, mean over points]."""
    return torch.cat([h.amax(1), h.mean(1)], dim=-1)


class PointNetEncoder(nn.Module):
    """``points (B, N, 3) -> (B, 2·widths[-1])``, invariant to the order of the points.

    Args:
        widths: features of the shared layers (each Linear, LayerNorm, SiLU).
    An optional per-cloud ``ctx (B, widths[0])`` (e.g. a time embedding) is added after the first layer.
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 256)):
        super().__init__()
        dims = [3, *widths]
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.LayerNorm(b), nn.SiLU()) for a, b in pairwise(dims)
        )
        self.out_dim = 2 * dims[-1]

    def forward(self, points: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        h = points
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k == 0 and ctx is not None:
                h = h + ctx.unsqueeze(1)
        return symmetric_pool(h)
