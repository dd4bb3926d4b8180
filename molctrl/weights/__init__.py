"""Shipped weights (trained with the project's own CLI; each has a ``.md`` record beside it)."""
from __future__ import annotations

from pathlib import Path

import torch

from molctrl.prior import MoleculeDiffusion

WEIGHTS_DIR = Path(__file__).parent
DEFAULT_PRIOR = WEIGHTS_DIR / "qm9-noh-prior.pt"


def load_prior(path: str | Path | None = None) -> MoleculeDiffusion:
    """A :class:`MoleculeDiffusion` from a ``model.pt`` (default: the shipped ``qm9-noh`` prior)."""
    path = Path(path) if path is not None else DEFAULT_PRIOR
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path}: not a torch weights file ({err.__class__.__name__})") from None
    return MoleculeDiffusion.from_export(payload)
