"""Best-of-N: draw N candidates per target and keep the one with the highest reward."""
from __future__ import annotations

from collections.abc import Callable

import torch

from common.rewards import Reward


@torch.no_grad()
def best_of_n(draw: Callable[[], torch.Tensor], reward: Reward, mask: torch.Tensor, n: int,
              y: torch.Tensor | None = None, y_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw()`` returns one candidate per row, ``(B, N, D)`` on ``mask (B, N)``; after ``n`` draws the
    best candidate of each row and its reward, ``(B, N, D)`` and ``(B,)``, are returned."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    best, best_r = None, None
    for _ in range(n):
        x = draw()
        r = reward(x, mask, y, y_mask)
        if best is None:
            best, best_r = x, r
        else:
            better = r > best_r
            best = torch.where(better.view(-1, 1, 1), x, best)
            best_r = torch.where(better, r, best_r)
    return best, best_r
