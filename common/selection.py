"""Selection from a sampler by a reward: best-of-N (the highest reward of N draws per target) and redrawing
the draws a check refuses (a sample of the sampler's distribution restricted to what the check accepts)."""
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


@torch.no_grad()
def redraw_refused(draw: Callable[[torch.Tensor], torch.Tensor], accept: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   n: int, rounds: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` samples of the sampler ``draw(rows) -> (len(rows), ...)`` (one draw for each of the target rows
    ``rows``, long), each row drawn again while ``accept(x, rows) -> (len(rows),)`` bool refuses it, at most
    ``rounds`` times more. An accepted row is an exact draw of the sampler's distribution restricted to what
    ``accept`` accepts, p(x)·1[accept(x)] / P(accept). Returns the samples ``(n, ...)`` (a row refused on every
    draw keeps its last one), how many draws each row took ``(n,)`` and whether it was accepted ``(n,)``."""
    if rounds < 0:
        raise ValueError(f"rounds must be ≥ 0, got {rounds}")
    rows = torch.arange(n)
    x = draw(rows)
    draws = torch.ones(n, dtype=torch.long)
    accepted = accept(x, rows).cpu()
    for _ in range(rounds):
        refused = rows[~accepted]
        if not len(refused):
            break
        x[refused] = draw(refused)
        draws[refused] += 1
        accepted[refused] = accept(x[refused], refused).cpu()
    return x, draws, accepted
