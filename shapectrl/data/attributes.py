"""Attributes measured from points alone, for attribute rewards and their evaluation.

Every function takes torch points ``(N, 3)`` -> scalar tensor, or ``(B, N, 3)`` -> ``(B,)``, in
**model units** (the un-normalised canonical frame of :mod:`shapectrl.data.procedural`: y up, front
+z, mirror plane x = 0). Clouds in a data set's normalised frame must first go through
``normalisation.denormalise``. Lengths are model units; ratios are dimensionless. Extents are
max − min along an axis, so a stray point moves them.

Class-specific attributes are defined for any cloud but mean something only for their class
(:data:`ATTRIBUTE_CLASS`). Two use the **densest horizontal layer** (:func:`densest_level`): the y
window 0.1 model units tall holding the most points (horizontal surfaces such as a seat or a table
top put many points at one height); its level is the mean y of the points in it.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from shapectrl.metrics.chamfer import as_batch, nearest_sq_distances

_BINS = 200


def _batched(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Let ``fn`` written for ``(B, N, 3)`` also take ``(N, 3)`` (giving a scalar)."""

    @functools.wraps(fn)
    def wrapper(points: torch.Tensor) -> torch.Tensor:
        batch, single = as_batch(points)
        out = fn(batch)
        return out[0] if single else out

    return wrapper


def extents(points: torch.Tensor) -> torch.Tensor:
    """Bounding-box size along x, y, z: ``(N, 3)`` -> ``(3,)``, ``(B, N, 3)`` -> ``(B, 3)``; model units."""
    return points.amax(dim=-2) - points.amin(dim=-2)


@_batched
def width(points: torch.Tensor) -> torch.Tensor:
    """Extent along x (left-right), model units."""
    return extents(points)[:, 0]


@_batched
def height(points: torch.Tensor) -> torch.Tensor:
    """Extent along y (up), model units."""
    return extents(points)[:, 1]


@_batched
def depth(points: torch.Tensor) -> torch.Tensor:
    """Extent along z (back-front), model units."""
    return extents(points)[:, 2]


@_batched
def width_to_height(points: torch.Tensor) -> torch.Tensor:
    """Aspect ratio extent_x / extent_y (dimensionless)."""
    e = extents(points)
    return e[:, 0] / e[:, 1]


@_batched
def depth_to_height(points: torch.Tensor) -> torch.Tensor:
    """Aspect ratio extent_z / extent_y (dimensionless)."""
    e = extents(points)
    return e[:, 2] / e[:, 1]


@_batched
def width_to_depth(points: torch.Tensor) -> torch.Tensor:
    """Aspect ratio extent_x / extent_z (dimensionless)."""
    e = extents(points)
    return e[:, 0] / e[:, 2]


@_batched
def asymmetry(points: torch.Tensor) -> torch.Tensor:
    """Left-right asymmetry (dimensionless, 0 = mirror-symmetric, lower is more symmetric).

    The cloud is mirrored across the plane x = (x_min + x_max) / 2; the score is the mean distance
    (not squared) from each point to its nearest mirrored point, divided by the bounding-box
    diagonal. Mirroring is an isometry, so this one-sided mean equals the symmetric Chamfer-style
    mean. Two independent samplings of one symmetric surface still score about the point spacing
    over the diagonal (≈ 0.005–0.01 for 2,048 points), not 0.
    """
    e = extents(points)
    plane = (points[:, :, 0].amax(dim=1) + points[:, :, 0].amin(dim=1)) / 2
    mirrored = points.clone()
    mirrored[:, :, 0] = 2 * plane.unsqueeze(1) - points[:, :, 0]
    to_mirror, _ = nearest_sq_distances(points, mirrored)
    return to_mirror.sqrt().mean(dim=1) / e.norm(dim=1)


def densest_level(points: torch.Tensor, window: float = 0.1, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Height (model units) of the densest horizontal layer of ``points (B, N, 3)``, ``(B,)``.

    The layer is the y window ``window`` model units tall (rounded to 1/200 of the cloud's height)
    holding the most points, among windows whose centre lies between ``low`` and ``high``
    (fractions of the height from the bottom); its level is the mean y of the points inside it.
    A window taller than a slab's thickness takes both of its faces, so the level is about the
    slab's mid-plane. Ties go to the lowest window.
    """
    y = points[:, :, 1]
    bottom, top = y.amin(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)
    span = (top - bottom).clamp(min=1e-12)
    idx = ((y - bottom) / span * _BINS).long().clamp_(0, _BINS - 1)
    counts = torch.zeros(y.shape[0], _BINS, dtype=y.dtype, device=y.device).scatter_add_(1, idx, torch.ones_like(y))
    csum = torch.nn.functional.pad(counts.cumsum(dim=1), (1, 0))  # csum[:, k] = points in bins [0, k)
    w = (window / span * _BINS).round().long().clamp(1, _BINS)  # (B, 1) window width in bins
    start = torch.arange(_BINS, device=y.device).expand(y.shape[0], _BINS)  # candidate first bins
    end = start + w
    sums = csum.gather(1, end.clamp(max=_BINS)) - csum.gather(1, start)
    centres = (start + w / 2) / _BINS
    allowed = (end <= _BINS) & (centres >= low) & (centres <= high)
    allowed[:, 0] |= ~allowed.any(dim=1)  # a window taller than the allowed band: start at the bottom
    first = sums.masked_fill(~allowed, -1.0).argmax(dim=1, keepdim=True)
    inside = ((idx >= first) & (idx < first + w)).to(y.dtype)
    return (y * inside).sum(dim=1) / inside.sum(dim=1).clamp(min=1.0)


@_batched
def chair_back_height(points: torch.Tensor) -> torch.Tensor:
    """Chair: how far the top of the chair rises above the seat, relative to the overall height
    (dimensionless, 0 to 1): ``(y_max − y_seat) / (y_max − y_min)``.

    ``y_seat`` is the densest horizontal layer (:func:`densest_level`, window 0.1 model units)
    centred between 10 % and 90 % of the height: about the seat slab's mid-plane. For a chair, ``y_max`` is the top of
    the backrest, so this is the backrest's height above the seat as a fraction of the chair's.
    """
    y = points[:, :, 1]
    top, bottom = y.amax(dim=1), y.amin(dim=1)
    seat = densest_level(points, window=0.1, low=0.1, high=0.9)
    return (top - seat) / (top - bottom)


@_batched
def table_top_height(points: torch.Tensor) -> torch.Tensor:
    """Table: height of the table top's mid-plane above the lowest point, model units.

    The top is the densest horizontal layer (:func:`densest_level`, window 0.1 model units) centred
    in the upper half of the cloud, which excludes a pedestal's floor disc.
    """
    bottom = points[:, :, 1].amin(dim=1)
    return densest_level(points, window=0.1, low=0.5, high=1.0) - bottom


@_batched
def airplane_wing_span(points: torch.Tensor) -> torch.Tensor:
    """Airplane: wing span relative to length, extent_x / extent_z (dimensionless). The wings are
    the widest part in x and the fuselage the longest in z (front along +z)."""
    e = extents(points)
    return e[:, 0] / e[:, 2]


@_batched
def lamp_shade_radius(points: torch.Tensor) -> torch.Tensor:
    """Lamp: radius of the shade's widest point relative to the lamp's height (dimensionless).

    Among the points in the upper half of the height, the largest horizontal distance from the
    vertical axis through the centre of their x-z bounding box, divided by extent_y. The base,
    however wide, lies in the lower half and is ignored.
    """
    y = points[:, :, 1]
    bottom, top = y.amin(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)
    upper = y >= (bottom + top) / 2
    xz = points[:, :, [0, 2]]
    big = torch.finfo(points.dtype).max
    lo = xz.masked_fill(~upper.unsqueeze(-1), big).amin(dim=1, keepdim=True)
    hi = xz.masked_fill(~upper.unsqueeze(-1), -big).amax(dim=1, keepdim=True)
    r = (xz - (lo + hi) / 2).norm(dim=-1).masked_fill(~upper, 0.0)
    return r.amax(dim=1) / (top - bottom).squeeze(1)


@_batched
def car_roof_length(points: torch.Tensor) -> torch.Tensor:
    """Car: length of the roof relative to the car's length (dimensionless): the z extent of the
    points in the top 5 % of the height, divided by extent_z."""
    y = points[:, :, 1]
    bottom, top = y.amin(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)
    roof = y >= top - 0.05 * (top - bottom)
    z = points[:, :, 2]
    big = torch.finfo(points.dtype).max
    length = z.masked_fill(~roof, -big).amax(dim=1) - z.masked_fill(~roof, big).amin(dim=1)
    return length / extents(points)[:, 2]


#: Attribute name -> function of points ``(N, 3)`` or ``(B, N, 3)``; units in each docstring.
ATTRIBUTES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "width": width,
    "height": height,
    "depth": depth,
    "width_to_height": width_to_height,
    "depth_to_height": depth_to_height,
    "width_to_depth": width_to_depth,
    "asymmetry": asymmetry,
    "chair_back_height": chair_back_height,
    "table_top_height": table_top_height,
    "airplane_wing_span": airplane_wing_span,
    "lamp_shade_radius": lamp_shade_radius,
    "car_roof_length": car_roof_length,
}

#: The class a class-specific attribute is meant for; attributes not listed apply to every class.
ATTRIBUTE_CLASS: dict[str, str] = {
    "chair_back_height": "chair",
    "table_top_height": "table",
    "airplane_wing_span": "airplane",
    "lamp_shade_radius": "lamp",
    "car_roof_length": "car",
}


def measure(points: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The attributes ``names`` (default: all of :data:`ATTRIBUTES`) of ``points (B, N, 3)`` or ``(N, 3)``."""
    names = list(ATTRIBUTES) if names is None else names
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown attribute {unknown[0]!r} (expected one of {', '.join(ATTRIBUTES)})")
    return {name: ATTRIBUTES[name](points) for name in names}
