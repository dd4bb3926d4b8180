"""One global normalisation for a whole data set (the PointFlow / PVD / LION protocol).

The mean ``(3,)`` is the mean of every training point and the std a single scalar: the standard
deviation of all training coordinates pooled together, as PointFlow computes it
(``all_points.reshape(-1).std()``, i.e. about the pooled scalar mean, not per axis). It is fitted on
the training split only and the same values are applied to the validation and test splits. Shapes
are *not* normalised one by one, so size and aspect ratio survive normalisation.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

Points = TypeVar("Points", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Normalisation:
    """``normalised = (points - mean) / std`` with ``mean (3,)`` and a scalar ``std``."""

    mean: tuple[float, float, float]
    std: float

    @classmethod
    def fit(cls, points: np.ndarray | torch.Tensor) -> Normalisation:
        """Fit on training points ``(M, N, 3)`` (or any ``(..., 3)``); statistics in float64."""
        flat = (points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)).reshape(-1, 3)
        if len(flat) == 0:
            raise ValueError("cannot fit a normalisation on no points")
        mean = flat.mean(axis=0, dtype=np.float64)
        std = float(flat.reshape(-1).std(dtype=np.float64))
        if not std > 0:
            raise ValueError("cannot fit a normalisation: all coordinates are equal (std 0)")
        return cls(tuple(float(v) for v in mean), std)

    @classmethod
    def identity(cls) -> Normalisation:
        return cls((0.0, 0.0, 0.0), 1.0)

    def _mean_like(self, points: Points) -> Points:
        if isinstance(points, torch.Tensor):
            return torch.tensor(self.mean, dtype=points.dtype, device=points.device)
        return np.asarray(self.mean, dtype=points.dtype if points.dtype.kind == "f" else np.float64)

    def normalise(self, points: Points) -> Points:
        """Model-unit points ``(..., 3)`` to the normalised frame (NumPy or torch, same type out)."""
        return (points - self._mean_like(points)) / self.std

    def denormalise(self, points: Points) -> Points:
        """Normalised points ``(..., 3)`` back to model units; attributes are measured there."""
        return points * self.std + self._mean_like(points)

    def to_dict(self) -> dict[str, list[float] | float]:
        return {"mean": list(self.mean), "std": self.std}

    @classmethod
    def from_dict(cls, data: dict) -> Normalisation:
        mean = [float(v) for v in data["mean"]]
        if len(mean) != 3:
            raise ValueError(f"normalisation mean has {len(mean)} values (expected 3)")
        return cls((mean[0], mean[1], mean[2]), float(data["std"]))


class NormalisedClouds:
    """A split of labelled clouds, ``points (M, N, 3)`` in model units and ``labels (M,)``, with the
    training split's :class:`Normalisation` (the base of every data set a shape model trains on)."""

    points: torch.Tensor
    labels: torch.Tensor
    normalisation: Normalisation

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def normalised_points(self) -> torch.Tensor:
        """``(M, N, 3)`` points in the normalised frame (what a model is trained on)."""
        return self.normalisation.normalise(self.points)

    @staticmethod
    def split_normalisation(split: str, points: Points, train_split: Callable[[], NormalisedClouds]) -> Normalisation:
        """Fitted on ``points`` for the ``train`` split; for another split, that of ``train_split()``."""
        return Normalisation.fit(points) if split == "train" else train_split().normalisation
