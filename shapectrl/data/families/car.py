"""Cars: a rounded-box lower body (a superquadric), a cabin whose roof is shorter than its base
(sloped windscreen and rear window) and four wheels.

Frame before centring: the ground at y = 0 (wheel bottoms), the front at +z. Model units.
"""
from __future__ import annotations

import numpy as np

from shapectrl.data.families.draw import uniform
from shapectrl.data.mesh import (
    Mesh,
    cylinder,
    hexahedron,
    merge,
    rotation_z,
    superquadric,
)


def sample_params(rng: np.random.Generator) -> dict:
    """Car parameters. ``body_height`` is the lower body, ``clearance`` its gap above the ground,
    ``cabin_height`` the roof above the body top; ``cabin_length`` the cabin's base and
    ``roof_length`` its roof along z; ``cabin_offset`` shifts the cabin's base centre along z
    (+: forward); ``windscreen_share`` is the part of the base-minus-roof length taken by the
    windscreen slope. ``body_roundness`` is the superquadric exponent (small: boxy)."""
    length = uniform(rng, 0.75, 1.25)
    clearance = uniform(rng, 0.02, 0.10)
    body = uniform(rng, 0.10, 0.24)
    cabin = length * uniform(rng, 0.30, 0.70)
    return {
        "body_length": length,
        "body_width": uniform(rng, 0.32, 0.52),
        "body_height": body,
        "clearance": clearance,
        "body_roundness": uniform(rng, 0.10, 0.50),
        "cabin_length": cabin,
        "roof_length": cabin * uniform(rng, 0.40, 0.90),
        "cabin_height": uniform(rng, 0.07, 0.22),
        "cabin_offset": length * uniform(rng, -0.15, 0.12),
        "cabin_width_ratio": uniform(rng, 0.75, 0.95),
        "windscreen_share": uniform(rng, 0.50, 0.80),
        "wheel_radius": (clearance + body) * uniform(rng, 0.35, 0.55),
        "wheel_width": uniform(rng, 0.04, 0.09),
        "wheelbase_ratio": uniform(rng, 0.55, 0.75),
    }


def build(p: dict) -> Mesh:
    """The car mesh for parameters ``p`` (see :func:`sample_params`)."""
    length, width, body, clearance = p["body_length"], p["body_width"], p["body_height"], p["clearance"]
    e = p["body_roundness"]
    lower = superquadric((width / 2, body / 2, length / 2), e, e, 12, 24, (0.0, clearance + body / 2, 0.0))
    base_y = clearance + 0.75 * body
    roof_y = clearance + body + p["cabin_height"]
    cabin, roof = p["cabin_length"], p["roof_length"]
    front = p["cabin_offset"] + cabin / 2
    roof_front = front - (cabin - roof) * p["windscreen_share"]
    half_w = p["cabin_width_ratio"] * width / 2
    base = [(x, base_y, z) for x, z in ((-half_w, front - cabin), (half_w, front - cabin), (half_w, front), (-half_w, front))]
    top = [(0.9 * x, roof_y, z) for x, z in ((-half_w, roof_front - roof), (half_w, roof_front - roof), (half_w, roof_front),
                                              (-half_w, roof_front))]
    parts = [lower, hexahedron(np.array(base + top))]
    wr, ww = p["wheel_radius"], p["wheel_width"]
    wheel = cylinder(wr, ww, 18).moved(rotation_z(np.pi / 2))
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            parts.append(wheel.moved(offset=(sx * (width / 2 - ww / 2), wr, sz * p["wheelbase_ratio"] * length / 2)))
    return merge(parts)
