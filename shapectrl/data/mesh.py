"""Triangle meshes from primitives, and uniform sampling of points on their surface.

A :class:`Mesh` is ``vertices (V, 3)`` float64 and ``faces (F, 3)`` int64. The primitives are boxes
(and general hexahedra), surfaces of revolution about the y axis (cylinders, cones, lamp shades,
fuselages) and superquadrics; :func:`merge` joins them into one mesh. Face winding is not kept
consistent: only the surface matters here. Degenerate (zero-area) faces, such as those at the pole
of a surface of revolution, are allowed and are never sampled.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Corner order of :func:`hexahedron`: the bottom face 0-3, then the top face 4-7 above it.
_HEX_FACES = np.array([
    [0, 1, 2], [0, 2, 3],  # bottom
    [4, 6, 5], [4, 7, 6],  # top
    [0, 4, 5], [0, 5, 1],
    [1, 5, 6], [1, 6, 2],
    [2, 6, 7], [2, 7, 3],
    [3, 7, 4], [3, 4, 0],
], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh: ``vertices (V, 3)`` and ``faces (F, 3)`` indexing them."""

    vertices: np.ndarray
    faces: np.ndarray

    def moved(self, rotation: np.ndarray | None = None, offset: Sequence[float] | np.ndarray = (0.0, 0.0, 0.0)) -> Mesh:
        """The mesh rotated about the origin by ``rotation (3, 3)``, then translated by ``offset (3,)``."""
        v = self.vertices if rotation is None else self.vertices @ np.asarray(rotation).T
        return Mesh(v + np.asarray(offset, dtype=np.float64), self.faces)

    def scaled(self, factors: Sequence[float] | np.ndarray) -> Mesh:
        """The mesh scaled about the origin by ``factors (3,)`` along x, y and z."""
        return Mesh(self.vertices * np.asarray(factors, dtype=np.float64), self.faces)

    def mirrored_x(self) -> Mesh:
        """The mirror image across the plane x = 0."""
        return Mesh(self.vertices * np.array([-1.0, 1.0, 1.0]), self.faces[:, ::-1])

    def triangles(self) -> np.ndarray:
        """Corner coordinates per face, ``(F, 3, 3)``."""
        return self.vertices[self.faces]


def merge(meshes: Sequence[Mesh]) -> Mesh:
    """One mesh holding all the faces of ``meshes``."""
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return Mesh(
        np.concatenate([m.vertices for m in meshes]),
        np.concatenate([m.faces + k for m, k in zip(meshes, offsets)]),
    )


def rotation_x(angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians about the x axis (takes +y towards +z)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_y(angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians about the y axis (takes +z towards +x)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_z(angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians about the z axis (takes +x towards +y)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def hexahedron(corners: np.ndarray) -> Mesh:
    """A closed six-faced solid from ``corners (8, 3)``: one quadrilateral 0-3 in order round it,
    then the opposite one 4-7 with corner ``4 + i`` joined to corner ``i``. Faces need not be planar
    (tapered, swept wings are hexahedra)."""
    return Mesh(np.asarray(corners, dtype=np.float64), _HEX_FACES)


def box(size: Sequence[float], center: Sequence[float] = (0.0, 0.0, 0.0)) -> Mesh:
    """An axis-aligned box with edge lengths ``size (3,)`` around ``center (3,)``."""
    half = np.asarray(size, dtype=np.float64) / 2
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    corners = np.concatenate([
        np.column_stack([square[:, 0], -np.ones(4), square[:, 1]]),
        np.column_stack([square[:, 0], np.ones(4), square[:, 1]]),
    ])
    return hexahedron(corners * half + np.asarray(center, dtype=np.float64))


def _grid_faces(rows: int, cols: int) -> np.ndarray:
    """Faces of a ``rows x cols`` vertex grid that wraps around in the column direction."""
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols), indexing="ij")
    a = r * cols + c
    b = r * cols + (c + 1) % cols
    return np.concatenate([
        np.stack([a, b, a + cols], axis=-1).reshape(-1, 3),
        np.stack([b, b + cols, a + cols], axis=-1).reshape(-1, 3),
    ])


def revolve(radii: Sequence[float], heights: Sequence[float], segments: int = 24) -> Mesh:
    """Surface of revolution about the y axis of the profile ``(radii[k], heights[k])``.

    The profile is a polyline in the (r, y) half-plane; a radius of 0 closes the surface there, so
    ``radii=[0, r, r, 0], heights=[0, 0, h, h]`` is a closed cylinder and an open lamp shade is a
    profile that does not start or end at r = 0.
    """
    r = np.asarray(radii, dtype=np.float64)
    y = np.asarray(heights, dtype=np.float64)
    phi = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    vertices = np.stack([
        r[:, None] * np.cos(phi)[None, :],
        np.broadcast_to(y[:, None], (len(y), segments)),
        r[:, None] * np.sin(phi)[None, :],
    ], axis=-1).reshape(-1, 3)
    return Mesh(vertices, _grid_faces(len(r), segments))


def cylinder(radius: float, height: float, segments: int = 16, center: Sequence[float] = (0.0, 0.0, 0.0)) -> Mesh:
    """A closed cylinder along y, ``height`` long, around ``center``."""
    h = height / 2
    return revolve([0.0, radius, radius, 0.0], [-h, -h, h, h], segments).moved(offset=center)


def cylinder_between(start: Sequence[float], end: Sequence[float], radius: float, segments: int = 12) -> Mesh:
    """A closed cylinder of ``radius`` whose axis runs from ``start (3,)`` to ``end (3,)``."""
    p0, p1 = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    mesh = revolve([0.0, radius, radius, 0.0], [0.0, 0.0, length, length], segments)
    return mesh.moved(_rotation_y_to(axis / length), p0)


def _rotation_y_to(direction: np.ndarray) -> np.ndarray:
    """A rotation taking the unit vector +y to the unit vector ``direction``."""
    y = np.array([0.0, 1.0, 0.0])
    v = np.cross(y, direction)
    c = float(direction @ y)
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + k + k @ k / (1 + c)


def _signed_power(x: np.ndarray, e: float) -> np.ndarray:
    return np.sign(x) * np.abs(x) ** e


def superquadric(
    radii: Sequence[float], e1: float, e2: float, rings: int = 12, segments: int = 20,
    center: Sequence[float] = (0.0, 0.0, 0.0),
) -> Mesh:
    """A superellipsoid with semi-axes ``radii (3,)`` (x, y, z) around ``center``.

    ``e1`` shapes the vertical profile and ``e2`` the horizontal cross-section: 1 gives an
    ellipsoid, values towards 0 a box with rounded edges, 2 an octahedron-like solid.
    """
    v = np.linspace(-np.pi / 2, np.pi / 2, rings + 1)
    u = np.linspace(-np.pi, np.pi, segments, endpoint=False)
    cv, sv = _signed_power(np.cos(v), e1), _signed_power(np.sin(v), e1)
    cu, su = _signed_power(np.cos(u), e2), _signed_power(np.sin(u), e2)
    a, b, c = radii
    vertices = np.stack([
        a * cv[:, None] * cu[None, :],
        np.broadcast_to(b * sv[:, None], (len(v), len(u))),
        c * cv[:, None] * su[None, :],
    ], axis=-1).reshape(-1, 3)
    return Mesh(vertices + np.asarray(center, dtype=np.float64), _grid_faces(len(v), len(u)))


def _areas(corners: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)


def triangle_areas(mesh: Mesh) -> np.ndarray:
    """Area of every face, ``(F,)``."""
    return _areas(mesh.triangles())


def sample_surface(mesh: Mesh, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points drawn uniformly (by area) on the surface of ``mesh``, ``(n, 3)`` float64.

    A face is chosen with probability proportional to its area, then a point uniformly inside it
    (barycentric coordinates ``1 - sqrt(u), sqrt(u) (1 - v), sqrt(u) v``).
    """
    if n < 1:
        raise ValueError(f"cannot sample {n} points (expected at least 1)")
    corners = mesh.triangles()
    cumulative = np.cumsum(_areas(corners))
    if not cumulative[-1] > 0:
        raise ValueError("mesh has no area to sample points on")
    u = rng.random((3, n))
    face = np.minimum(np.searchsorted(cumulative, u[0] * cumulative[-1], side="right"), len(cumulative) - 1)
    t = corners[face]
    s = np.sqrt(u[1])[:, None]
    w = u[2][:, None]
    return (1 - s) * t[:, 0] + s * (1 - w) * t[:, 1] + s * w * t[:, 2]
