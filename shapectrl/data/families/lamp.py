"""Lamps: a base (disc, square or dome), a straight stem, a bulb and an open shade that is a surface
of revolution (cone, cylinder, bell or dome) hanging over the top of the stem.

Frame before centring: floor at y = 0, everything rotationally symmetric about the y axis except a
square base. The shade's widest point is its bottom rim. Model units (about metres).
"""
from __future__ import annotations

import numpy as np

from shapectrl.data.families.draw import pick, uniform
from shapectrl.data.mesh import Mesh, box, cylinder, merge, revolve, superquadric

BASE_SHAPES = ("disc", "square", "dome")
SHADE_SHAPES = ("cone", "cylinder", "bell", "dome")


def sample_params(rng: np.random.Generator) -> dict:
    """Lamp parameters. ``shade_radius`` is the radius of the shade's bottom rim (its widest point);
    ``shade_top_ratio`` the top radius over it (0 for a closed dome). The shade hangs so that 60 % of
    its height is below the top of the stem; ``shade_height`` is at most 60 % of ``stem_height``,
    which keeps the shade in the upper half of the lamp."""
    stem = uniform(rng, 0.25, 1.40)
    shape = pick(rng, SHADE_SHAPES)
    top_ratio = {"cone": uniform(rng, 0.3, 0.8), "cylinder": 1.0, "bell": uniform(rng, 0.25, 0.5), "dome": 0.0}[shape]
    return {
        "base_shape": pick(rng, BASE_SHAPES),
        "base_radius": uniform(rng, 0.07, 0.22),
        "base_height": uniform(rng, 0.015, 0.06),
        "stem_height": stem,
        "stem_radius": uniform(rng, 0.006, 0.025),
        "shade_shape": shape,
        "shade_height": uniform(rng, 0.08, min(0.40, 0.6 * stem)),
        "shade_radius": uniform(rng, 0.08, 0.35),
        "shade_top_ratio": top_ratio,
    }


def shade_profile(p: dict, rows: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Radii and heights (from the bottom rim, ``(rows,)`` each) of the shade's profile."""
    s = np.linspace(0.0, 1.0, rows)
    r0, h, top = p["shade_radius"], p["shade_height"], p["shade_top_ratio"]
    shape = p["shade_shape"]
    if shape == "dome":
        return r0 * np.cos(s * np.pi / 2), h * np.sin(s * np.pi / 2)
    if shape == "bell":
        return r0 * (top + (1 - top) * (1 - s) ** 2), h * s
    return r0 * (1 - s * (1 - top)), h * s


def build(p: dict) -> Mesh:
    """The lamp mesh for parameters ``p`` (see :func:`sample_params`)."""
    br, bh = p["base_radius"], p["base_height"]
    stem_top = bh + p["stem_height"]
    if p["base_shape"] == "disc":
        base = cylinder(br, bh, 28, (0.0, bh / 2, 0.0))
    elif p["base_shape"] == "square":
        base = box((2 * br, bh, 2 * br), (0.0, bh / 2, 0.0))
    else:
        a = np.linspace(0.0, np.pi / 2, 6)
        base = revolve(np.concatenate([[0.0], br * np.cos(a)]), np.concatenate([[0.0], 2 * bh * np.sin(a)]), 28)
    stem = cylinder(p["stem_radius"], p["stem_height"], 10, (0.0, bh + p["stem_height"] / 2, 0.0))
    radii, heights = shade_profile(p)
    shade = revolve(radii, heights + stem_top - 0.6 * p["shade_height"], 32)
    bulb_r = min(0.04, 0.4 * p["shade_radius"], 0.3 * p["shade_height"])
    bulb = superquadric((bulb_r, bulb_r, bulb_r), 1.0, 1.0, 6, 10, (0.0, stem_top, 0.0))
    return merge([base, stem, bulb, shade])
