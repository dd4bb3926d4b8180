"""Property targets for conditioned generation: how they are drawn, and how a model sees them.

Targets live in one vector per molecule, ``y (B, 6)`` over :data:`molctrl.predictor.PROPERTIES`, with a
mask ``y_mask (B, 6)`` saying which are conditioned (any subset). A model sees the condition vector
    c = [ clip((y − mean)/MAD, ±5) · y_mask,  y_mask ]   ``(B, 12)``,
with the label statistics of the conditioning split (Db) (:func:`common.conditioning.standard_scores`;
μ reaches 19 MADs in Db, α −10; 0.2 % of labels lie beyond 5). Targets are drawn as EDM's protocol draws them: an atom count N, then c ~ p(c | N) — here the labels of a random Db molecule with N atoms,
which is the empirical p(c | N) jointly over the six properties.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from common.conditioning import standard_scores
from molctrl.data.qm9 import QM9Split
from molctrl.predictor import PROPERTIES


class PropertyConditions:
    """Label statistics and the joint label distribution per atom count of a labelled split.

    Args: n_atoms ``(M,)``, labels ``(M, 6)`` in the units of :data:`molctrl.data.qm9.PROPERTY_UNITS`.
    """

    cond_dim = 2 * len(PROPERTIES)

    def __init__(self, n_atoms: np.ndarray, labels: np.ndarray):
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.n_atoms = torch.as_tensor(n_atoms, dtype=torch.long)
        self.mean = self.labels.mean(0)
        self.scale = (self.labels - self.mean).abs().mean(0)
        self._by_size = {int(n): torch.nonzero(self.n_atoms == n).view(-1) for n in torch.unique(self.n_atoms)}

    @classmethod
    def from_split(cls, split: QM9Split) -> PropertyConditions:
        return cls(split.n_atoms, split.labels(PROPERTIES))

    def encode(self, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        """``y (B, 6)``, ``y_mask (B, 6)`` -> condition ``(B, 12)``; unconditioned entries of y are ignored."""
        m = y_mask.to(y.dtype)
        return torch.cat([standard_scores(y, self.mean, self.scale) * m, m], dim=-1)

    def to_dict(self) -> dict:
        """What a conditioned model's weights file keeps of them: the label statistics."""
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    def sample(self, n_atoms: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Targets ``(B, 6)`` from p(c | N) for atom counts ``n_atoms (B,)``."""
        out = torch.empty(len(n_atoms), len(PROPERTIES))
        for k, n in enumerate(n_atoms.tolist()):
            if n not in self._by_size:
                raise ValueError(f"no molecule with {n} atoms in the conditioning split")
            rows = self._by_size[n]
            out[k] = self.labels[rows[torch.randint(len(rows), (1,), generator=generator)]]
        return out

    @staticmethod
    def random_mask(batch: int, properties: Sequence[str], generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch, 6)``: each of ``properties`` conditioned with probability ½, at least one per row (a
        random one when none was drawn); nothing when ``properties`` is empty (an unconditional reward)."""
        y_mask = torch.zeros(batch, len(PROPERTIES), dtype=torch.bool)
        if properties:
            chosen = torch.rand(batch, len(properties), generator=generator) < 0.5
            chosen[~chosen.any(1), torch.randint(len(properties), (1,), generator=generator)] = True
            y_mask[:, [PROPERTIES.index(p) for p in properties]] = chosen
        return y_mask

    def mask_from_names(self, names: list[str], batch: int) -> torch.Tensor:
        """``(batch, 6)`` mask with the named properties conditioned."""
        unknown = [p for p in names if p not in PROPERTIES]
        if unknown:
            raise ValueError(f"unknown properties {unknown} (expected some of {', '.join(PROPERTIES)})")
        row = torch.tensor([p in names for p in PROPERTIES])
        return row.expand(batch, -1).clone()
