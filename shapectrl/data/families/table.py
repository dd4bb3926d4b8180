"""Tables: a rectangular or elliptical top on four legs (square or round, with an optional apron),
a central pedestal on a disc, or two trestle panels joined by a stretcher.

Frame before centring: floor at y = 0, the long side of the top along x. Model units (about metres).
"""
from __future__ import annotations

import numpy as np

from shapectrl.data.families.draw import chance, pick, uniform
from shapectrl.data.mesh import Mesh, box, cylinder, merge

TOP_SHAPES = ("rect", "round")
LEG_STYLES = ("four_square", "four_round", "pedestal", "trestle")


def sample_params(rng: np.random.Generator) -> dict:
    """Table parameters: ``height`` is the top surface above the floor; ``top_depth`` is at most
    ``top_width``; a ``round`` top is an ellipse with those diameters. ``apron`` applies to four legs
    under a rectangular top, ``pedestal_radius`` and ``base_ratio`` to the pedestal style only."""
    width = uniform(rng, 0.6, 1.8)
    return {
        "top_shape": pick(rng, TOP_SHAPES),
        "top_width": width,
        "top_depth": width * uniform(rng, 0.4, 1.0),
        "height": uniform(rng, 0.40, 1.10),
        "top_thickness": uniform(rng, 0.02, 0.08),
        "leg_style": pick(rng, LEG_STYLES),
        "leg_thickness": uniform(rng, 0.03, 0.10),
        "apron": chance(rng, 0.5),
        "apron_height": uniform(rng, 0.05, 0.12),
        "pedestal_radius": uniform(rng, 0.04, 0.10),
        "base_ratio": uniform(rng, 0.25, 0.40),
    }


def build(p: dict) -> Mesh:
    """The table mesh for parameters ``p`` (see :func:`sample_params`)."""
    w, d, h, t = p["top_width"], p["top_depth"], p["height"], p["top_thickness"]
    round_top = p["top_shape"] == "round"
    if round_top:
        top = cylinder(1.0, t, 40, (0.0, h - t / 2, 0.0)).scaled((w / 2, 1.0, d / 2))
    else:
        top = box((w, t, d), (0.0, h - t / 2, 0.0))
    under = h - t
    lt, style = p["leg_thickness"], p["leg_style"]
    if style == "pedestal":
        base_r = min(0.45, 1.2 * p["base_ratio"] * min(w, d))
        return merge([
            top,
            cylinder(p["pedestal_radius"], under - 0.03, 20, (0.0, 0.03 + (under - 0.03) / 2, 0.0)),
            cylinder(base_r, 0.03, 32, (0.0, 0.015, 0.0)),
        ])
    if style == "trestle":
        x = w / 2 - max(0.12 * w, lt)
        return merge([
            top,
            box((lt, under, 0.8 * d), (-x, under / 2, 0.0)),
            box((lt, under, 0.8 * d), (x, under / 2, 0.0)),
            box((2 * x, 0.05, 0.05), (0.0, 0.3 * under, 0.0)),
        ])
    # Four legs: at the corners of a rectangular top, at ±45° on a 70 % ellipse under a round one.
    if round_top:
        x, z = 0.7 * (w / 2) * np.sqrt(0.5), 0.7 * (d / 2) * np.sqrt(0.5)
    else:
        x, z = w / 2 - lt / 2 - 0.03, d / 2 - lt / 2 - 0.03
    corners = [(sx * x, sz * z) for sx in (-1, 1) for sz in (-1, 1)]
    if style == "four_square":
        legs = [box((lt, under, lt), (cx, under / 2, cz)) for cx, cz in corners]
    else:
        legs = [cylinder(lt / 2, under, 12, (cx, under / 2, cz)) for cx, cz in corners]
    parts = [top, *legs]
    if p["apron"] and not round_top:
        a = min(p["apron_height"], 0.5 * under)
        parts += [
            box((2 * x, a, 0.02), (0.0, under - a / 2, -z)),
            box((2 * x, a, 0.02), (0.0, under - a / 2, z)),
            box((0.02, a, 2 * z), (-x, under - a / 2, 0.0)),
            box((0.02, a, 2 * z), (x, under - a / 2, 0.0)),
        ]
    return merge(parts)
