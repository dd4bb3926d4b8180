"""Shipped shape weights (trained with the project's own CLI; each has a ``.md`` record beside it).

The controlled generators are named by method (:data:`DEFAULT_MODELS`); the ``pointnet`` classifier
gives the rewards and the ``dgcnn`` one evaluates generated shapes, so the network that scores a
result is never the one it was trained against.
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent
DEFAULT_MODELS = {"rgdm": "shapes-rgdm-data.pt", "ctrl": "shapes-ctrl.pt", "cond": "shapes-cond.pt"}
RGDM_PRIOR_POOL = "shapes-rgdm.pt"  # RGDM with the prior's own samples as proposal (the first shipped RGDM)
PRIOR = "shapes-prior.pt"
REWARD_CLASSIFIER = "shapes-classifier-pointnet.pt"
EVALUATOR = "shapes-classifier-dgcnn.pt"
SHIPPED = (*DEFAULT_MODELS.values(), RGDM_PRIOR_POOL, PRIOR, REWARD_CLASSIFIER, EVALUATOR)


def weight_path(name_or_path: str | Path) -> Path:
    """A shipped file's path (by its name, see :data:`SHIPPED`) or the path itself.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
    """
    path = WEIGHTS_DIR / str(name_or_path) if str(name_or_path) in SHIPPED else Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    return path
