"""Surfaces of point clouds (``shapectrl.mesh``) and ``shapectrl generate --mesh``."""
from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData

from shapectrl.io import read_ply, write_ply
from shapectrl.mesh import OFFSET_SPACINGS, median_spacing, mesh_missing, reconstruct

pytestmark = pytest.mark.skipif(mesh_missing() is not None, reason="pymeshlab is not installed")


@pytest.fixture(scope="module")
def sphere() -> np.ndarray:
    """1,024 points spread evenly over the unit sphere (a Fibonacci lattice)."""
    k = np.arange(1024) + 0.5
    polar, azimuth = np.arccos(1 - 2 * k / 1024), np.pi * (1 + 5**0.5) * k
    return np.stack([np.cos(azimuth) * np.sin(polar), np.cos(polar), np.sin(azimuth) * np.sin(polar)], 1)


def test_offset_surface_of_a_sphere_is_watertight_at_the_offset_distance(sphere):
    """The boundary of the r-neighbourhood of the unit sphere is two spheres, of radii 1 − r and 1 + r."""
    surface = reconstruct(sphere, "offset")
    r = OFFSET_SPACINGS * median_spacing(sphere)
    radii = np.linalg.norm(surface.vertices, axis=1)
    assert surface.watertight and surface.faces.shape[1] == 3 and surface.faces.max() < len(surface.vertices)
    cell = r / 4  # marching cubes places vertices on grid edges: within a cell of the level set
    assert abs(radii.max() - (1 + r)) < cell and abs(radii.min() - (1 - r)) < cell
    assert np.all((np.abs(radii - (1 + r)) < cell) | (np.abs(radii - (1 - r)) < cell))


def test_ball_pivoting_triangulates_the_points_themselves(sphere):
    surface = reconstruct(sphere, "ball-pivoting")
    assert np.allclose(np.linalg.norm(surface.vertices, axis=1), 1, atol=1e-6)  # vertices are input points
    assert len(surface.faces) > len(sphere)  # a closed triangulation of V points has about 2V faces


@pytest.mark.parametrize("points, message", [(np.zeros((3, 3)), "expected (N, 3) with N >= 4"),
                                             (np.full((8, 3), np.nan), "8 non-finite points"),
                                             (np.zeros((8, 2)), "expected (N, 3)")])
def test_bad_clouds_get_one_line_errors(points, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        reconstruct(points)
    with pytest.raises(ValueError, match="unknown mesh method 'poisson'"):
        reconstruct(np.random.default_rng(0).normal(size=(16, 3)), "poisson")


def test_surfaces_round_trip_through_ply(tmp_path, sphere):
    surface = reconstruct(sphere, "ball-pivoting")
    write_ply(tmp_path / "s.ply", surface.vertices, surface.faces)
    ply = PlyData.read(str(tmp_path / "s.ply"))
    assert np.array_equal(np.stack(ply["face"]["vertex_indices"]), surface.faces)
    assert np.array_equal(read_ply(tmp_path / "s.ply"), surface.vertices)
    with pytest.raises(ValueError, match="not triangles of the 3 vertices"):
        write_ply(tmp_path / "bad.ply", np.zeros((3, 3)), np.array([[0, 1, 3]]))
    assert not (tmp_path / "bad.ply").exists()
