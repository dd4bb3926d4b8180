"""The parametric shape families, one module each, and the class list.

Every family has ``sample_params(rng) -> dict`` (plain floats, ints, bools and strings) and
``build(params) -> Mesh``. Meshes come out in the family's own frame (floor at y = 0 for chairs,
tables, lamps and cars); :func:`shapectrl.data.procedural.shape_mesh` centres them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import torch

from shapectrl.data.families import airplane, car, chair, lamp, table
from shapectrl.data.mesh import Mesh

#: Class names in label order: airplane 0, chair 1, car 2, table 3, lamp 4.
CLASSES: tuple[str, ...] = ("airplane", "chair", "car", "table", "lamp")
CLASS_IDS: dict[str, int] = {name: k for k, name in enumerate(CLASSES)}

_MODULES: dict[str, ModuleType] = {"airplane": airplane, "chair": chair, "car": car, "table": table, "lamp": lamp}


def class_id(name: str) -> int:
    """The label of class ``name``; a ``ValueError`` naming the known classes otherwise."""
    try:
        return CLASS_IDS[name]
    except KeyError:
        raise ValueError(f"unknown shape class {name!r} (expected one of {', '.join(CLASSES)})") from None


def local_labels(labels: torch.Tensor, classes: Sequence[str], owner: str = "the classes") -> torch.Tensor:
    """Global class ids (:data:`CLASSES` order) ``(M,)`` -> indices into ``classes`` ``(M,)``, on the
    labels' device; a ``ValueError`` naming ``owner`` for a class that ``classes`` lacks."""
    lookup = torch.full((len(CLASSES),), -1, dtype=torch.long)
    for k, name in enumerate(classes):
        lookup[class_id(name)] = k
    out = lookup[labels.long().cpu()]
    if (out < 0).any():
        unknown = CLASSES[int(labels.cpu()[out < 0][0])]
        raise ValueError(f"class {unknown!r} is not one of {owner} ({', '.join(classes)})")
    return out.to(labels.device)


def sampler(name: str) -> Callable[[np.random.Generator], dict]:
    """The parameter sampler of class ``name``."""
    class_id(name)
    return _MODULES[name].sample_params


def builder(name: str) -> Callable[[dict], Mesh]:
    """The mesh builder of class ``name``."""
    class_id(name)
    return _MODULES[name].build
