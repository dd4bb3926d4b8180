"""Small helpers for drawing shape parameters from a NumPy generator (plain Python values out)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A float drawn uniformly from ``[low, high)``."""
    return float(low + (high - low) * rng.random())


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, each equally likely."""
    return options[int(rng.integers(len(options)))]


def chance(rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p``."""
    return bool(rng.random() < p)
