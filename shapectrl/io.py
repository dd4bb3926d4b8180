"""Reading and writing point clouds: PLY files (one cloud, or one surface, each) and ``.npz`` sets of clouds.

Readers report the first problem as a :class:`ShapeFileError` whose message is one line,
``<path>[:<line>]: <what is wrong> (<what was expected>)``. Writers are atomic: they write a
temporary file next to the target and move it into place only when everything was written.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement, PlyHeaderParseError, PlyParseError

from common.runtime import atomic_path, read_bytes

PLY_SUFFIX = ".ply"
NPZ_SUFFIX = ".npz"


class ShapeFileError(ValueError):
    """A point-cloud file or folder that cannot be read; the message names it (and the line)."""


def _as_array(points: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    return np.asarray(points)


def write_ply(path: str | os.PathLike, points: np.ndarray | torch.Tensor, faces: np.ndarray | None = None) -> None:
    """Write ``points (N, 3)`` as a binary little-endian PLY of float32 ``x, y, z`` vertices, with
    triangles ``faces (F, 3)`` (vertex indices) as a ``vertex_indices`` face element when given, atomically."""
    array = _as_array(points)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{path}: cannot write points of shape {array.shape} (expected (N, 3))")
    vertices = np.empty(len(array), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    for k, axis in enumerate("xyz"):
        vertices[axis] = array[:, k]
    elements = [PlyElement.describe(vertices, "vertex")]
    if faces is not None:
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3 or (faces.size and not 0 <= faces.min() <= faces.max() < len(array)):
            raise ValueError(f"{path}: faces of shape {faces.shape} are not triangles of the {len(array)} vertices")
        triangles = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
        triangles["vertex_indices"] = faces
        elements.append(PlyElement.describe(triangles, "face"))
    data = PlyData(elements, text=False, byte_order="<")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        data.write(handle)


def read_ply(path: str | os.PathLike) -> np.ndarray:
    """The ``x, y, z`` vertex coordinates of a PLY file (text or binary), ``(N, 3)`` float32.

    Raises:
        ShapeFileError: the file is missing, not a PLY file, truncated, or has no x/y/z vertices.
    """
    path = Path(path)
    raw = read_bytes(path, ShapeFileError, "a .ply file")
    try:
        data = PlyData.read(io.BytesIO(raw))
    except PlyHeaderParseError as err:
        where = f"{path}:{err.line}" if err.line else str(path)
        raise ShapeFileError(f"{where}: {err.message} (expected a PLY header: 'ply', 'format ...', 'end_header')") from None
    except (PlyParseError, ValueError, EOFError) as err:
        raise ShapeFileError(f"{path}: {_one_line(err)} (expected a complete PLY file)") from None
    if "vertex" not in data:
        raise ShapeFileError(f"{path}: no 'vertex' element (expected vertices with x, y, z)")
    vertex = data["vertex"]
    missing = [axis for axis in "xyz" if axis not in vertex.data.dtype.names]
    if missing:
        raise ShapeFileError(f"{path}: vertices lack property '{missing[0]}' (expected x, y, z)")
    points = np.stack([np.asarray(vertex[axis], dtype=np.float32) for axis in "xyz"], axis=1)
    if not np.isfinite(points).all():
        raise ShapeFileError(f"{path}: vertex {int(np.argmin(np.isfinite(points).all(axis=1)))} is not finite")
    return points


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def write_point_sets(path: str | os.PathLike, points: np.ndarray | torch.Tensor, **arrays: np.ndarray) -> None:
    """Write clouds ``points (M, N, 3)`` (float32) and any extra arrays to an ``.npz``, atomically."""
    array = _as_array(points)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{path}: cannot write clouds of shape {array.shape} (expected (M, N, 3))")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, points=array.astype(np.float32), **arrays)


def read_point_sets(path: str | os.PathLike) -> np.ndarray:
    """Clouds ``(M, N, 3)`` float32 from an ``.npz`` (key ``points``, shape ``(M, N, 3)`` or one
    cloud ``(N, 3)``), from a folder of ``.ply`` files (read in name order, all with N points) or
    from a single ``.ply`` file (M = 1).

    Raises:
        ShapeFileError: missing path, unreadable file, wrong key or shape, or differing cloud sizes.
    """
    path = Path(path)
    if path.is_dir():
        return _read_ply_folder(path)
    if not path.exists():
        raise ShapeFileError(f"{path}: no such file or folder (expected an .npz file or a folder of .ply files)")
    if path.suffix.lower() == PLY_SUFFIX:
        return read_ply(path)[None]
    if path.suffix.lower() != NPZ_SUFFIX:
        raise ShapeFileError(f"{path}: unknown file type '{path.suffix}' (expected .npz, .ply or a folder of .ply files)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "points" not in data:
                keys = ", ".join(data.files) or "none"
                raise ShapeFileError(f"{path}: no array 'points' (found {keys}; expected clouds under the key 'points')")
            points = np.asarray(data["points"])
    except ShapeFileError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise ShapeFileError(f"{path}: not a readable .npz file ({_one_line(err)})") from None
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[2] != 3 or 0 in points.shape:
        raise ShapeFileError(f"{path}: 'points' has shape {points.shape} (expected (M, N, 3) clouds)")
    if not np.isfinite(points).all():
        raise ShapeFileError(f"{path}: 'points' holds values that are not finite")
    return points.astype(np.float32)


def _read_ply_folder(path: Path) -> np.ndarray:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == PLY_SUFFIX)
    if not files:
        raise ShapeFileError(f"{path}: no .ply files in the folder (expected one cloud per .ply file)")
    clouds = [read_ply(f) for f in files]
    for f, cloud in zip(files, clouds):
        if cloud.shape != clouds[0].shape:
            raise ShapeFileError(f"{f}: {len(cloud)} points (expected {len(clouds[0])}, as in {files[0].name})")
    return np.stack(clouds)
