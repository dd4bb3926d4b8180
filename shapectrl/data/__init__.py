"""Shape data: procedural labelled shapes (five parametric families), attributes measured from
points, PointFlow's global normalisation, and a loader for ShapeNetCore.v2.PC15k.

Canonical frame of every shape: y up, front along +z, mirror plane x = 0, bounding box centred on
the origin, lengths in model units (about metres). See :mod:`shapectrl.data.procedural`.
"""
from shapectrl.data.attributes import ATTRIBUTE_CLASS, ATTRIBUTES, extents, measure
from shapectrl.data.families import CLASS_IDS, CLASSES
from shapectrl.data.normalisation import Normalisation
from shapectrl.data.pc15k import SYNSETS, ShapeNetPC15k
from shapectrl.data.procedural import (
    SPLIT_SEED_RANGES,
    SPLITS,
    ProceduralShapes,
    Shape,
    make_shape,
    shape_mesh,
    shape_params,
    split_seeds,
)

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_CLASS",
    "CLASSES",
    "CLASS_IDS",
    "SPLITS",
    "SPLIT_SEED_RANGES",
    "SYNSETS",
    "Normalisation",
    "ProceduralShapes",
    "Shape",
    "ShapeNetPC15k",
    "extents",
    "make_shape",
    "measure",
    "shape_mesh",
    "shape_params",
    "split_seeds",
]
