"""k-nearest-neighbour graphs of point clouds, computed densely in query chunks (no extra packages),
and the max of features over each neighbourhood."""
from __future__ import annotations

import torch

#: Largest (queries × points) distance block per cloud computed at once (bounds the memory at large N).
DISTANCE_BLOCK = 2**22


def knn_indices(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` nearest points of every point (itself included, first), ``points (B, N, C)``
    -> ``(B, N, k)`` int64; ``k`` is capped at N."""
    b, n, _ = points.shape
    k = min(k, n)
    chunk = max(1, DISTANCE_BLOCK // max(n * b, 1))
    sq = (points**2).sum(-1)  # (B, N)
    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            q = points[:, start : start + chunk]
            d = sq[:, start : start + chunk, None] - 2 * q @ points.transpose(1, 2) + sq[:, None, :]
            rows = torch.arange(start, start + q.shape[1], device=points.device)
            d[:, torch.arange(q.shape[1], device=points.device), rows] = -1.0  # self first, even with duplicates
            out.append(d.topk(k, dim=-1, largest=False, sorted=True).indices)
    return torch.cat(out, dim=1)


def gather_neighbours(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``features (B, N, C)`` at the neighbours ``index (B, N, k)`` -> ``(B, N, k, C)``."""
    b, n, c = features.shape
    offset = (torch.arange(b, device=index.device) * n).view(-1, 1, 1)
    return features.reshape(b * n, c)[(index + offset).reshape(-1)].view(*index.shape, c)


def neighbourhood_max(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Channel-wise max of ``features (B, N, C)`` over each point's neighbours ``index (B, N, k)``
    -> ``(B, N, C)``.

    The arg-max is found without autograd and the winners are gathered from ``features`` directly,
    so backward is a scatter into ``(B, N, C)`` instead of through a ``(B, N, k, C)`` tensor (measured
    about 8 times faster for a training step of the EdgeConv classifier on the CPU). The gradient is
    that of a max with one winner per channel.
    """
    with torch.no_grad():
        winner = gather_neighbours(features, index).max(2).indices  # (B, N, C) in [0, k); argmax is 3x slower
        source = index.gather(2, winner)  # (B, N, C) point indices
    return features.gather(1, source)
