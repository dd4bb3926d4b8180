"""Shipped weights (trained with the project's own CLI; each has a ``.md`` record beside it).

Property predictors are named ``<setting>-<arch>-<split>.pt``: the ``Da`` ones are the evaluators
that score generated molecules, the ``Db`` ones give rewards (the same split as the generators).
"""
from __future__ import annotations

from pathlib import Path

import torch

from molctrl.predictor import PropertyPredictor
from molctrl.prior import MoleculeDiffusion

WEIGHTS_DIR = Path(__file__).parent
DEFAULT_PRIOR = WEIGHTS_DIR / "qm9-noh-prior.pt"
PREDICTOR_NAMES = tuple(f"qm9-noh-{arch}-{split}" for split in ("Da", "Db") for arch in ("egnn", "e3nn"))
DEFAULT_EVALUATOR = "qm9-noh-egnn-Da"


def read_weights(path: str | Path) -> dict:
    """The payload of a weights file, with one-line errors for a missing file or one that is not torch's."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path}: not a torch weights file ({err.__class__.__name__})") from None


def load_prior(path: str | Path | None = None) -> MoleculeDiffusion:
    """A :class:`MoleculeDiffusion` from a ``model.pt`` (default: the shipped ``qm9-noh`` prior)."""
    return MoleculeDiffusion.from_export(read_weights(Path(path) if path is not None else DEFAULT_PRIOR))


def predictor_path(name_or_path: str | Path) -> Path:
    """A shipped predictor's file (by name, see :data:`PREDICTOR_NAMES`) or the path itself."""
    if str(name_or_path) in PREDICTOR_NAMES:
        return WEIGHTS_DIR / f"{name_or_path}.pt"
    return Path(name_or_path)


def load_predictor(name_or_path: str | Path = DEFAULT_EVALUATOR) -> PropertyPredictor:
    """A :class:`PropertyPredictor` (or a :class:`NoisyPropertyPredictor`, by the file's kind) from a
    shipped name or a ``model.pt`` of ``molctrl train predictor``."""
    from molctrl.noisy_predictor import NoisyPropertyPredictor

    path = predictor_path(name_or_path)
    payload = read_weights(path)
    cls = NoisyPropertyPredictor if payload.get("kind") == NoisyPropertyPredictor.kind else PropertyPredictor
    try:
        return cls.from_export(payload)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
