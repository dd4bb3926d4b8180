"""Surfaces for point clouds, made by MeshLab's filters (pymeshlab), for a person to open in a mesh tool.

Two recipes (:data:`MESH_METHODS`), both starting from normals estimated on the k nearest points:

* ``ball-pivoting`` (Bernardini et al. 1999): a ball of the cloud's spacing rolls over the points and
  every position where it rests on three of them makes a triangle. The surface interpolates the points
  (its vertices are the cloud's) and stays open wherever the cloud is sparse or noisy.
* ``offset`` (the default): the ball-pivoting surface S thickened into a solid shell, whose boundary
  {x : d(x, S) = r} is extracted by marching cubes on a uniform grid (MeshLab's uniform resampling with
  absolute distances). The level set of a distance is closed, so the mesh is watertight once the rare
  non-manifold edges of marching cubes' ambiguous cells are split and the few-edge holes that leaves
  are filled (checked, not assumed: :attr:`Surface.watertight`); holes of the pivoting surface narrower
  than about 2r close, and every part is r thicker. r = 3 × the cloud's median nearest-neighbour
  spacing, the grid cell r / 4.

Screened Poisson reconstruction was tried on generated chairs and not kept: normals from local planes
flip across thin parts (seats, backs), which gives sheets and bulges, and MeshLab crops the result to
the cloud's bounding box, which leaves it open.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

MESH_METHODS = ("offset", "ball-pivoting")
NORMAL_NEIGHBOURS = 10
OFFSET_SPACINGS = 3.0  # r in median nearest-neighbour spacings
CELLS_PER_OFFSET = 4.0
MENDED_HOLE_EDGES = 30
MEND_PASSES = 2
MAX_FACES = 20_000  # larger surfaces are simplified (quadric edge collapse, topology kept)


@dataclass(frozen=True)
class Surface:
    """A triangle mesh: ``vertices (V, 3)`` float32 in the cloud's units, ``faces (F, 3)`` int32 vertex
    indices; ``watertight`` when it is a closed two-manifold (no boundary edge)."""

    vertices: np.ndarray
    faces: np.ndarray
    watertight: bool


def mesh_missing() -> str | None:
    """Why surfaces cannot be made here (pymeshlab is not installed), or None."""
    try:
        import pymeshlab  # noqa: F401
    except ImportError:
        return "surfaces need pymeshlab: pip install pymeshlab (or the package's [mesh] extra)"
    return None


def _mend(meshes) -> None:
    """Split the rare edges of four faces that marching cubes' ambiguous cells leave where vertices are
    merged (and vertices that join two fans), then close the few-edge holes splitting leaves; a second
    pass where the first left a defect (MeshLab's hole filling reads adjacency the measuring refreshes)."""
    for _ in range(MEND_PASSES):
        meshes.meshing_repair_non_manifold_edges()
        meshes.meshing_repair_non_manifold_vertices()
        meshes.meshing_close_holes(maxholesize=MENDED_HOLE_EDGES)
        meshes.meshing_remove_unreferenced_vertices()
        if _closed(meshes.get_topological_measures()):
            return


def _closed(topology: dict) -> bool:
    return topology["boundary_edges"] == 0 and bool(topology["is_mesh_two_manifold"])


def median_spacing(points: np.ndarray) -> float:
    """The median distance from a point of ``points (N, 3)`` to its nearest other point."""
    distances, _ = cKDTree(points).query(points, k=2)
    return float(np.median(distances[:, 1]))


def reconstruct(points: np.ndarray | torch.Tensor, method: str = "offset", max_faces: int = MAX_FACES) -> Surface:
    """The surface of one cloud ``points (N, 3)`` by ``method`` (one of :data:`MESH_METHODS`).

    Raises:
        ValueError: an unknown method, a cloud that is not ``(N, 3)`` with N >= 4 finite points, or one on
            which no triangle could be made (e.g. all points on a line).
    """
    import pymeshlab

    if method not in MESH_METHODS:
        raise ValueError(f"unknown mesh method {method!r} (expected one of {', '.join(MESH_METHODS)})")
    cloud = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if cloud.ndim != 2 or cloud.shape[1] != 3 or len(cloud) < 4:
        raise ValueError(f"cannot mesh points of shape {cloud.shape} (expected (N, 3) with N >= 4)")
    if not np.isfinite(cloud).all():
        raise ValueError(f"cannot mesh a cloud with {int((~np.isfinite(cloud)).any(axis=1).sum())} non-finite points")
    cloud = cloud.astype(np.float64)
    meshes = pymeshlab.MeshSet()
    meshes.add_mesh(pymeshlab.Mesh(vertex_matrix=cloud))
    meshes.compute_normal_for_point_clouds(k=NORMAL_NEIGHBOURS)
    meshes.generate_surface_reconstruction_ball_pivoting()
    if meshes.current_mesh().face_number() == 0:
        raise ValueError(f"ball pivoting made no triangle from {len(cloud)} points (a degenerate cloud?)")
    meshes.meshing_remove_unreferenced_vertices()
    if method == "offset":
        r = OFFSET_SPACINGS * median_spacing(cloud)
        meshes.generate_resampled_uniform_mesh(cellsize=pymeshlab.PureValue(r / CELLS_PER_OFFSET),
                                               offset=pymeshlab.PureValue(r), absdist=True, mergeclosevert=True)
        _mend(meshes)
    if meshes.current_mesh().face_number() > max_faces:
        meshes.meshing_decimation_quadric_edge_collapse(targetfacenum=max_faces, preservetopology=True)
        if method == "offset":
            _mend(meshes)
    mesh = meshes.current_mesh()
    return Surface(mesh.vertex_matrix().astype(np.float32), mesh.face_matrix().astype(np.int32),
                   _closed(meshes.get_topological_measures()))
