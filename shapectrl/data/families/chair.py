"""Chairs: a seat slab on legs (four straight, four splayed or a five-spoke pedestal), a backrest
(a panel or two posts with rails) tilted back by up to 25°, and optional armrests.

Frame before centring: floor at y = 0, the sitter faces +z, the backrest stands at the rear (-z).
Lengths are in model units (about metres).
"""
from __future__ import annotations

import numpy as np

from shapectrl.data.families.draw import chance, pick, uniform
from shapectrl.data.mesh import (
    Mesh,
    box,
    cylinder,
    cylinder_between,
    merge,
    rotation_x,
    rotation_y,
)

LEG_STYLES = ("square", "round", "splayed", "pedestal")
BACK_STYLES = ("panel", "posts")


def sample_params(rng: np.random.Generator) -> dict:
    """Chair parameters.

    ``seat_height`` is the top of the seat above the floor; ``back_height`` the length of the
    backrest above the seat top along its (tilted) axis; ``back_tilt`` in degrees from vertical;
    ``arm_height`` the armrest top above the seat top (never above 80 % of the backrest).
    """
    back_height = uniform(rng, 0.15, 0.75)
    return {
        "seat_width": uniform(rng, 0.38, 0.70),
        "seat_depth": uniform(rng, 0.36, 0.65),
        "seat_height": uniform(rng, 0.30, 0.55),
        "seat_thickness": uniform(rng, 0.03, 0.09),
        "leg_style": pick(rng, LEG_STYLES),
        "leg_thickness": uniform(rng, 0.025, 0.07),
        "back_style": pick(rng, BACK_STYLES),
        "back_height": back_height,
        "back_tilt": uniform(rng, 0.0, 25.0),
        "back_thickness": uniform(rng, 0.02, 0.07),
        "armrests": chance(rng, 0.35),
        "arm_height": min(uniform(rng, 0.15, 0.28), 0.8 * back_height),
    }


def build(p: dict) -> Mesh:
    """The chair mesh for parameters ``p`` (see :func:`sample_params`)."""
    w, d, h, t = p["seat_width"], p["seat_depth"], p["seat_height"], p["seat_thickness"]
    parts = [box((w, t, d), (0.0, h - t / 2, 0.0))]
    parts += _legs(p, h - t)
    parts.append(_back(p).moved(rotation_x(-np.radians(p["back_tilt"])), (0.0, h, -d / 2 + p["back_thickness"] / 2)))
    if p["armrests"]:
        a = p["arm_height"]
        for side in (-1.0, 1.0):
            x = side * (w / 2 - 0.025)
            parts.append(box((0.03, a, 0.03), (x, h + a / 2, d / 2 - 0.05)))
            parts.append(box((0.05, 0.03, 0.85 * d), (x, h + a, -0.075 * d)))
    return merge(parts)


def _legs(p: dict, top: float) -> list[Mesh]:
    """Legs from the floor up to the underside of the seat at height ``top``."""
    w, d, lt, style = p["seat_width"], p["seat_depth"], p["leg_thickness"], p["leg_style"]
    if style == "pedestal":
        spoke = 0.25 + 0.2 * (w - 0.38)
        base = [box((0.045, 0.035, spoke), (0.0, 0.0175, spoke / 2)).moved(rotation_y(2 * np.pi * k / 5)) for k in range(5)]
        column = cylinder(max(lt, 0.03), top - 0.035, 16, (0.0, 0.035 + (top - 0.035) / 2, 0.0))
        return [*base, column]
    corners = [(sx * (w / 2 - lt / 2 - 0.01), sz * (d / 2 - lt / 2 - 0.01)) for sx in (-1, 1) for sz in (-1, 1)]
    if style == "square":
        return [box((lt, top, lt), (x, top / 2, z)) for x, z in corners]
    if style == "round":
        return [cylinder(lt / 2, top, 12, (x, top / 2, z)) for x, z in corners]
    splay = 0.12 * top
    return [cylinder_between((x + np.sign(x) * splay, 0.0, z + np.sign(z) * splay), (x, top, z), lt / 2) for x, z in corners]


def _back(p: dict) -> Mesh:
    """The backrest, upright, its bottom edge centred on the origin (tilted and placed by :func:`build`)."""
    w, bh, bt = p["seat_width"], p["back_height"], p["back_thickness"]
    if p["back_style"] == "panel":
        return box((w, bh, bt), (0.0, bh / 2, 0.0))
    rail = max(0.04, 0.25 * bh)
    post = min(bt, 0.05)
    return merge([
        box((post, bh, bt), (-(w / 2 - post / 2), bh / 2, 0.0)),
        box((post, bh, bt), (w / 2 - post / 2, bh / 2, 0.0)),
        box((w - 2 * post, rail, bt * 0.8), (0.0, bh - rail / 2, 0.0)),
        box((w - 2 * post, rail * 0.5, bt * 0.8), (0.0, 0.45 * bh, 0.0)),
    ])
