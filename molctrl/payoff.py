"""RGDM with a fixed proposal: a pool of molecules resampled per target by the pay-off weights.

For a target y the pay-off distribution is q(x | y) ∝ p(x)·exp(r(x; y)/τ), with r = log p̂(y | x).
Proposals drawn from p itself need no importance ratio, so self-normalised importance resampling
over a pool of M samples of p,
    j ~ softmax_j( r(x_j; y)/τ ),   over the pool molecules with y's atom count,
gives (approximate) samples of q(x | y), which the conditioned model fits by the denoising loss with y
as its condition (:class:`common.control.ConditionedDenoising`). The fixed point is p_θ(x | y) = q.
The pool is either the prior's own samples (p = p_pre) or the unlabelled molecules the prior was
trained on (p = p_data, :meth:`PriorPool.from_split`; the reward reads them, their labels are not used).
The resampling itself is :class:`common.control.PayoffBatches`; this module holds the molecules' pool.

Why not proposals from the model (:func:`common.rgdm.rgdm_trajectory_loss`): on QM9 the calibrated
likelihood is sharp, and the path ratio p_pre(τ)/p_θ(τ) degenerates as soon as θ moves (measured: ESS
≈ 1 in batches of 32 from the first step). A fixed pool is also cheap: the reward model reads each
pool molecule once, r(x_j; y) for any target is closed-form from the cached predictions, and a
training step costs one denoising step, like EDM-cond's.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import click
import torch

from common.control import ScoredPool
from common.rewards import GaussianLogLikelihood, Reward
from molctrl.data.qm9 import QM9Split
from molctrl.prior import MoleculeDiffusion


@dataclass
class PriorPool(ScoredPool):
    """M molecules (prior samples, or a data split's) as padded arrays and what the reward needs of them.

    ``types (M, N)`` (−1 = padding), ``positions (M, N, 3)``, ``scores``: for a likelihood reward the
    predicted means ``(M, P)`` (label units; any target's log-likelihood follows in closed form), for
    a reward without targets the rewards ``(M,)``. ``sampling_steps`` and ``seconds`` say how they were made.
    """

    kind = "molctrl.pool"  # what its weights file holds (common.exports.save_fields)

    types: torch.Tensor
    positions: torch.Tensor
    scores: torch.Tensor
    sampling_steps: int
    seconds: float

    def __post_init__(self) -> None:
        m = len(self.types)
        if self.types.dim() != 2 or self.types.is_floating_point():
            raise ValueError(f"types: expected integer (M, N), got {self.types.dtype} {tuple(self.types.shape)}")
        if self.positions.shape != (*self.types.shape, 3):
            raise ValueError(f"positions: expected {(*self.types.shape, 3)} for types {tuple(self.types.shape)}, "
                             f"got {tuple(self.positions.shape)}")
        if self.scores.numel() and len(self.scores) != m:
            raise ValueError(f"scores: expected one row per molecule ({m}), got {len(self.scores)}")

    def __len__(self) -> int:
        return len(self.types)

    @property
    def n_atoms(self) -> torch.Tensor:
        return (self.types >= 0).sum(1)

    @classmethod
    def from_split(cls, data: QM9Split) -> PriorPool:
        """The molecules of a data split, unscored and without their labels (``sampling_steps`` 0)."""
        return cls(torch.from_numpy(data.types).long(), torch.from_numpy(data.positions).float(), torch.empty(0), 0, 0.0)

    @classmethod
    @torch.no_grad()
    def sample(cls, prior: MoleculeDiffusion, reward: Reward, n_atoms: torch.Tensor,
               sampling_steps: int, generator: torch.Generator | None = None, batch_size: int = 250) -> PriorPool:
        """Draw one molecule from ``prior`` per atom count of ``n_atoms (M,)`` and score them."""
        t0 = time.perf_counter()
        n_atoms = n_atoms.sort().values  # batches of similar sizes pad little
        size, n_max = len(n_atoms), int(n_atoms.max())
        types = torch.full((size, n_max), -1, dtype=torch.long)
        positions = torch.zeros(size, n_max, 3)
        with click.progressbar(length=size, label="pool of prior samples", file=sys.stderr) as bar:
            for start in range(0, size, batch_size):
                k = min(batch_size, size - start)
                x, mask = prior.sample_states(k, sampling_steps, generator, n_atoms[start : start + k])
                n = x.shape[1]
                types[start : start + k, :n] = torch.where(mask, x[..., 3:].argmax(-1), -1).cpu()
                positions[start : start + k, :n] = (x[..., :3] * mask.unsqueeze(-1)).cpu().float()
                bar.update(k)
        pool = cls(types, positions, torch.empty(0), sampling_steps, time.perf_counter() - t0)
        return pool.scored(prior, reward, batch_size)

    def scored(self, prior: MoleculeDiffusion, reward: Reward, batch_size: int = 250) -> PriorPool:
        """The same molecules with ``reward``'s scores: a likelihood reward's predicted means, another's values."""
        def score(rows: slice) -> torch.Tensor:
            types = self.types[rows]
            n = int((types >= 0).sum(1).max())
            clean, mask = prior.encode(types[:, :n], self.positions[rows, :n])
            return reward.predict(clean, mask) if isinstance(reward, GaussianLogLikelihood) else reward(clean, mask)

        return self.rescored(score, batch_size)

    def groups(self, sizes: list[int]) -> dict[int, torch.Tensor]:
        """The molecules with each atom count."""
        n_atoms = self.n_atoms
        missing = sorted(set(sizes) - set(n_atoms.unique().tolist()))
        if missing:
            raise ValueError(f"the pool has no molecule with {missing} atoms; sample a larger pool")
        return {n: torch.nonzero(n_atoms == n).view(-1) for n in sizes}

    def take(self, rows: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``(types (B, n), positions (B, n, 3))`` of the rows, trimmed to the largest."""
        n = int(sizes.max())
        return self.types[rows, :n], self.positions[rows, :n]


def pool_atom_counts(target_n_atoms: torch.Tensor, size: int, floor: int = 32,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``(M,)`` atom counts for a pool: ``floor`` of every size the targets have (QM9's rare small
    molecules too), the rest drawn like the targets' sizes; M = ``size`` or more when the floors need it."""
    sizes = target_n_atoms.unique()
    rest = max(size - floor * len(sizes), 0)
    drawn = target_n_atoms[torch.randint(len(target_n_atoms), (rest,), generator=generator)]
    return torch.cat([sizes.repeat_interleave(floor), drawn])
