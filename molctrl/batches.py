"""Training batches of padded molecules, a deterministic function of the step (see common.training)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from common.training import EpochSampler
from molctrl.data.qm9 import QM9Split


class MoleculeBatches:
    """``(types (B, n), positions (B, n, 3))`` for a step, trimmed to the largest molecule in the batch,
    followed by ``labels (B, P)`` when ``properties`` are named, or by the rows of ``labels (M, P)``
    (e.g. a predictor's outputs) when those are given."""

    def __init__(self, split: QM9Split, batch_size: int, seed: int = 0, properties: Sequence[str] = (),
                 labels: torch.Tensor | None = None):
        self.types = torch.from_numpy(split.types.astype("int64"))
        self.positions = torch.from_numpy(split.positions)
        self.n_atoms = torch.from_numpy(split.n_atoms)
        if labels is not None and len(labels) != len(split):
            raise ValueError(f"{len(labels)} label rows for a split of {len(split)} molecules")
        self.labels = labels if labels is not None else (
            torch.from_numpy(split.labels(properties)).float() if properties else None)
        self.sampler = EpochSampler(len(split), batch_size, seed)

    def __len__(self) -> int:
        return len(self.n_atoms)

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        idx = torch.from_numpy(self.sampler.indices(step, rank, world_size))
        n = int(self.n_atoms[idx].max())
        batch = (self.types[idx, :n], self.positions[idx, :n])
        return batch if self.labels is None else (*batch, self.labels[idx])
