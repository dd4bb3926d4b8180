"""Shipped shape weights (trained with the project's own CLI; each has a ``.md`` record beside it).

The controlled generators are named by method (:data:`DEFAULT_MODELS`); the ``pointnet`` classifier
gives the rewards and the ``dgcnn`` one evaluates generated shapes, so the network that scores a
result is never the one it was trained against.
"""
from __future__ import annotations

from pathlib import Path

from common.weights import SUFFIX

WEIGHTS_DIR = Path(__file__).parent
DEFAULT_MODELS = {"rgdm": f"shapes-rgdm-data{SUFFIX}", "ctrl": f"shapes-ctrl{SUFFIX}", "cond": f"shapes-cond{SUFFIX}"}
#: Models of one class each (``train control --target-classes``) that draw the targets of their class, alone or with
#: attributes (docs/shapes.md, "One model per class").
CLASS_MODELS = {"rgdm": {c: f"shapes-rgdm-data-{c}{SUFFIX}" for c in ("airplane", "chair", "car")}}
RGDM_PRIOR_POOL = f"shapes-rgdm{SUFFIX}"  # RGDM with the prior's own samples as proposal (the first shipped RGDM)
PRIOR = f"shapes-prior{SUFFIX}"
REWARD_CLASSIFIER = f"shapes-classifier-pointnet{SUFFIX}"
EVALUATOR = f"shapes-classifier-dgcnn{SUFFIX}"
SHIPPED = (*DEFAULT_MODELS.values(), *(f for files in CLASS_MODELS.values() for f in files.values()), RGDM_PRIOR_POOL,
           PRIOR, REWARD_CLASSIFIER, EVALUATOR)


def weight_path(name_or_path: str | Path) -> Path:
    """A shipped file's path (by its name, see :data:`SHIPPED`) or the path itself."""
    return WEIGHTS_DIR / str(name_or_path) if str(name_or_path) in SHIPPED else Path(name_or_path)


def weight_name(path: str | Path) -> str:
    """How a summary names a weights file: a shipped file by its name (the same on every machine), any
    other by its path."""
    path = Path(path)
    return path.name if path.name in SHIPPED and path.resolve() == (WEIGHTS_DIR / path.name).resolve() else str(path)
