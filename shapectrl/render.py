"""Contact sheets: many point clouds (or their surfaces) side by side in one PNG, for a person to look at.

Each cloud is a 3D scatter seen from the front-left and a little above (the canonical frame has
y up and the front facing +z, see :mod:`shapectrl.data.procedural`), coloured by height. All panels
share one scale, so differences in size between clouds show; each is centred on its own bounding box.
Boxes are robust: they span the 0.5 % to 99.5 % quantiles of each coordinate, so that a few stray
points of a generated cloud do not shrink every panel; points outside a panel's cube are not drawn.
Surfaces (:class:`shapectrl.mesh.Surface`) are drawn shaded in one colour, framed by their cloud's box.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from common.runtime import atomic_path
from shapectrl.mesh import Surface

ELEVATION = 20.0
AZIMUTH = -60.0
PANEL_INCHES = 2.4  # side of a cloud's square panel
LINE_INCHES = 0.14  # height of a caption line
TITLE_INCHES = 0.35
DPI = 100


def _as_cloud(points: np.ndarray | torch.Tensor) -> np.ndarray:
    array = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if array.ndim != 2 or array.shape[1] != 3 or len(array) == 0:
        raise ValueError(f"cannot draw points of shape {array.shape} (expected (N, 3) with N >= 1)")
    return array.astype(np.float32)


def _box(cloud: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The robust bounding box ``(low (3,), high (3,))`` of a cloud: its 0.5 % and 99.5 % quantiles."""
    low, high = np.quantile(cloud, [0.005, 0.995], axis=0)
    return low, high


def _half_range(clouds: Sequence[np.ndarray]) -> float:
    """Half the largest robust bounding-box side over all clouds (the shared scale of the panels)."""
    sides = [float(np.subtract(*_box(c)[::-1]).max()) for c in clouds]
    return max(max(sides) / 2, 1e-6)


def _draw(ax, cloud: np.ndarray, half: float, point_size: float, surface: Surface | None = None) -> None:
    """One cloud ``(N, 3)`` on 3D axes, or its ``surface`` shaded: data y is the vertical axis, a
    cloud's colour is the height."""
    centre = sum(_box(cloud)) / 2
    if surface is None:
        cloud = cloud[(np.abs(cloud - centre) <= half).all(axis=1)]
        ax.scatter(cloud[:, 0], cloud[:, 1], cloud[:, 2], c=cloud[:, 1], cmap="viridis", s=point_size,
                   linewidths=0, depthshade=False)
    else:
        v = surface.vertices
        ax.plot_trisurf(v[:, 0], v[:, 1], v[:, 2], triangles=surface.faces, color="lightsteelblue", shade=True,
                        linewidth=0, antialiased=False)
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1), zoom=1.4)
    ax.view_init(elev=ELEVATION, azim=AZIMUTH, vertical_axis="y")
    ax.set_axis_off()


def contact_sheet(clouds: Sequence[np.ndarray | torch.Tensor], captions: Sequence[str], path: str | os.PathLike,
                  columns: int | None = None, point_size: float = 3.0, title: str | None = None,
                  surfaces: Sequence[Surface | None] | None = None) -> None:
    """Write clouds ``(N_i, 3)`` in model units (or one ``(B, N, 3)`` tensor) as a grid of panels, a
    caption over each, to a PNG at ``path`` (atomically, rendered by Agg without a display).
    ``columns`` defaults to a near-square grid; ``title`` heads the sheet; ``surfaces`` (one per cloud)
    are drawn instead of the points (where a surface is None, the points)."""
    if len(clouds) != len(captions) or len(clouds) == 0 or (surfaces is not None and len(surfaces) != len(clouds)):
        raise ValueError(f"expected one caption per cloud (and one surface, if any) and at least one cloud, got "
                         f"{len(clouds)} clouds, {len(captions)} captions"
                         + ("" if surfaces is None else f" and {len(surfaces)} surfaces"))
    arrays = [_as_cloud(c) for c in clouds]
    columns = min(columns or math.ceil(math.sqrt(len(arrays))), len(arrays))
    rows = math.ceil(len(arrays) / columns)
    band = LINE_INCHES * max(caption.count("\n") + 1 for caption in captions)
    head = TITLE_INCHES if title else 0.0
    width, height = columns * PANEL_INCHES, rows * (PANEL_INCHES + band) + head
    fig = Figure(figsize=(width, height), dpi=DPI)
    if title:
        fig.text(0.5, 1 - 0.5 * head / height, title, ha="center", va="center", fontsize=10)
    half = _half_range(arrays)
    for k, (cloud, caption) in enumerate(zip(arrays, captions)):
        row, column = divmod(k, columns)
        top = height - head - row * (PANEL_INCHES + band)
        left = column * PANEL_INCHES
        fig.text((left + PANEL_INCHES / 2) / width, top / height, caption, ha="center", va="top", fontsize=7,
                 linespacing=1.1)
        ax = fig.add_axes((left / width, (top - band - PANEL_INCHES) / height, PANEL_INCHES / width,
                           PANEL_INCHES / height), projection="3d")
        _draw(ax, cloud, half, point_size, None if surfaces is None else surfaces[k])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
