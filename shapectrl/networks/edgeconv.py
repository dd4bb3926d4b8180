"""A light EdgeConv network (DGCNN, Wang et al. 2019) on a static k-nearest-neighbour graph.

An EdgeConv layer with one linear map and a monotone activation, max over the neighbours j of i,

    h'_i = max_j act(W_a·h_i + W_b·(h_j − h_i)) = act((W_a − W_b)·h_i + max_j W_b·h_j),

needs no per-edge activation: the per-edge work is a max over ``(B, N, k, C)`` found without
autograd (:func:`~shapectrl.networks.knn.neighbourhood_max`), and backward only scatters to the winners. A LayerNorm follows the max. The graph is built once from the
coordinates (DGCNN rebuilds it in feature space at every layer, at O(N²) each).

Density: the neighbourhood holds ``k = round(neighbour_share · N)`` points (at least 4), a fixed
share of the cloud, so its radius, and the features, do not change when a cloud is sampled more densely.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F

from shapectrl.networks.knn import knn_indices, neighbourhood_max
from shapectrl.networks.pointnet import symmetric_pool

MIN_NEIGHBOURS = 4


class EdgeConvLayer(nn.Module):
    """``h (B, N, C_in)``, neighbours ``(B, N, k)`` -> ``(B, N, C_out)``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.centre = nn.Linear(in_dim, out_dim)
        self.neighbour = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, h: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        q = self.neighbour(h)
        return F.leaky_relu(self.norm(self.centre(h) - q + neighbourhood_max(q, neighbours)), 0.2)


class EdgeConvEncoder(nn.Module):
    """``points (B, N, 3) -> (B, 2·embed)``, invariant to the order of the points.

    Args:
        widths: EdgeConv layers. embed: width of the per-point map of all layers' features concatenated
            (DGCNN's 1,024; smaller here). neighbour_share: k/N (DGCNN: 20 of 1,024).
    An optional per-cloud ``ctx (B, widths[0])`` is added after the first layer.
    """

    def __init__(self, widths: Sequence[int] = (64, 64, 128), embed: int = 256, neighbour_share: float = 16 / 1024):
        super().__init__()
        dims = [3, *widths]
        self.layers = nn.ModuleList(EdgeConvLayer(a, b) for a, b in pairwise(dims))
        self.embed = nn.Sequential(nn.Linear(sum(widths), embed), nn.LayerNorm(embed), nn.LeakyReLU(0.2))
        self.neighbour_share = neighbour_share
        self.out_dim = 2 * embed

    def n_neighbours(self, n_points: int) -> int:
        return min(n_points, max(MIN_NEIGHBOURS, round(self.neighbour_share * n_points)))

    def forward(self, points: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        neighbours = knn_indices(points, self.n_neighbours(points.shape[1]))
        h, features = points, []
        for k, layer in enumerate(self.layers):
            h = layer(h, neighbours)
            if k == 0 and ctx is not None:
                h = h + ctx.unsqueeze(1)
            features.append(h)
        return symmetric_pool(self.embed(torch.cat(features, dim=-1)))
