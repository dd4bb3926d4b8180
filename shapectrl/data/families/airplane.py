"""Airplanes: a fuselage of revolution (round nose, tapered tail cone), tapered swept wings with
dihedral mounted low, mid or high, a horizontal tail, a vertical fin and 0, 2 or 4 engine nacelles.

Frame before centring: the fuselage axis is the z axis with the nose at z = +length/2 and the tail
at z = -length/2; wings span x; the fin points up (+y). Model units.
"""
from __future__ import annotations

import numpy as np

from shapectrl.data.families.draw import pick, uniform
from shapectrl.data.mesh import Mesh, cylinder, hexahedron, merge, revolve, rotation_x

ENGINE_COUNTS = ("0", "2", "4")


def sample_params(rng: np.random.Generator) -> dict:
    """Airplane parameters. ``wing_span`` is tip to tip; ``wing_position`` the distance of the
    wing root's leading edge behind the nose, as a fraction of the fuselage length; ``wing_mount``
    the root's height in fuselage radii (-: low wing, +: high wing); angles are in degrees.
    ``wing_sweep`` is the leading-edge sweep after limiting it so the wing tips end ahead of the tail.
    """
    length = uniform(rng, 0.7, 1.3)
    span = uniform(rng, 0.5, 1.5)
    root_chord = length * uniform(rng, 0.10, 0.30)
    taper = uniform(rng, 0.25, 1.0)
    position = uniform(rng, 0.30, 0.55)
    # Leading-edge displacement of the tip, limited so the tip's trailing edge stays 5 % ahead of the tail.
    room = length / 2 - position * length - taper * root_chord + 0.45 * length
    sweep_shift = min(np.tan(np.radians(uniform(rng, 0.0, 40.0))) * span / 2, room)
    return {
        "fuselage_length": length,
        "fuselage_radius": uniform(rng, 0.035, 0.09),
        "nose_fraction": uniform(rng, 0.08, 0.20),
        "tail_fraction": uniform(rng, 0.20, 0.35),
        "tail_radius_ratio": uniform(rng, 0.10, 0.40),
        "wing_span": span,
        "wing_root_chord": root_chord,
        "wing_taper": taper,
        "wing_sweep": float(np.degrees(np.arctan2(sweep_shift, span / 2))),
        "wing_position": position,
        "wing_mount": uniform(rng, -0.6, 0.6),
        "wing_dihedral": uniform(rng, -4.0, 8.0),
        "wing_thickness_ratio": uniform(rng, 0.06, 0.14),
        "tail_span": span * uniform(rng, 0.25, 0.55),
        "tail_chord": length * uniform(rng, 0.06, 0.14),
        "fin_height": uniform(rng, 0.06, 0.25),
        "fin_chord": length * uniform(rng, 0.08, 0.18),
        "engines": int(pick(rng, ENGINE_COUNTS)),
        "engine_radius": uniform(rng, 0.018, 0.045),
        "engine_length": uniform(rng, 0.08, 0.20),
    }


def _fuselage(p: dict) -> Mesh:
    length, r = p["fuselage_length"], p["fuselage_radius"]
    half = length / 2
    nose = p["nose_fraction"] * length
    s = np.linspace(0.0, 1.0, 6)
    radii = np.concatenate([[0.0, p["tail_radius_ratio"] * r, r], r * np.sqrt(1 - s[1:] ** 2)])
    heights = np.concatenate([[-half, -half, -half + p["tail_fraction"] * length], half - nose + nose * s[1:]])
    # Revolved about y, then turned so that +y (the nose) points along +z.
    return revolve(radii, heights, 20).moved(rotation_x(np.pi / 2))


def _surface(root: tuple[float, float, float], tip: tuple[float, float, float], root_chord: float,
             tip_chord: float, thickness_ratio: float, axis: int) -> Mesh:
    """A tapered lifting surface from the root's leading edge ``root (3,)`` to the tip's ``tip (3,)``;
    chords run towards -z and the thickness is along ``axis`` (1: a wing, 0: a fin)."""
    outline = np.array([root, root, tip, tip], dtype=np.float64)
    outline[1, 2] -= root_chord
    outline[2, 2] -= tip_chord
    offset = np.zeros((4, 3))
    offset[:, axis] = thickness_ratio * np.array([root_chord, root_chord, tip_chord, tip_chord]) / 2
    return hexahedron(np.concatenate([outline - offset, outline + offset]))


def build(p: dict) -> Mesh:
    """The airplane mesh for parameters ``p`` (see :func:`sample_params`)."""
    length, r = p["fuselage_length"], p["fuselage_radius"]
    half_span = p["wing_span"] / 2
    root_chord, tip_chord = p["wing_root_chord"], p["wing_root_chord"] * p["wing_taper"]
    root_le = length / 2 - p["wing_position"] * length
    root_y = p["wing_mount"] * r
    shift = np.tan(np.radians(p["wing_sweep"])) * half_span
    rise = np.tan(np.radians(p["wing_dihedral"])) * half_span
    wing = _surface((0.0, root_y, root_le), (half_span, root_y + rise, root_le - shift),
                    root_chord, tip_chord, p["wing_thickness_ratio"], axis=1)
    tail_le = -length / 2 + 0.02 * length + p["tail_chord"]
    tail = _surface((0.0, 0.3 * r, tail_le), (p["tail_span"] / 2, 0.3 * r, tail_le - 0.6 * p["tail_chord"]),
                    p["tail_chord"], 0.5 * p["tail_chord"], 0.10, axis=1)
    fin_le = -length / 2 + 0.02 * length + p["fin_chord"]
    fin = _surface((0.0, 0.0, fin_le), (0.0, r + p["fin_height"], fin_le - 0.7 * p["fin_chord"]),
                   p["fin_chord"], 0.6 * p["fin_chord"], 0.10, axis=0)
    parts = [_fuselage(p), wing, wing.mirrored_x(), tail, tail.mirrored_x(), fin]
    stations = {0: (), 2: (0.35,), 4: (0.3, 0.6)}[p["engines"]]
    er, el = p["engine_radius"], p["engine_length"]
    for f in stations:
        x = f * half_span
        y = root_y + f * rise - p["wing_thickness_ratio"] * root_chord / 2 - er
        z = root_le - f * shift + 0.1 * el - el / 2
        nacelle = cylinder(er, el, 14).moved(rotation_x(np.pi / 2), (x, y, z))
        parts += [nacelle, nacelle.mirrored_x()]
    return merge(parts)
