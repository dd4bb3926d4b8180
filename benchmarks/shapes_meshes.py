"""Surfaces of clouds (``shapectrl generate --mesh``): how often watertight, how close to the points, how fast.

    python -m benchmarks.shapes_meshes [-n 8] [--points 2048] [--solver ancestral] [--method offset
        --method ball-pivoting] [--seed 0] [--threads 1] [--out benchmarks/results/shapes_meshes.json]

Two sources of clouds per class (airplane, chair, car): ``n`` test shapes of the procedural split and
``n`` clouds of the default controlled model (``shapectrl generate --class C`` with ``--points``,
``--steps`` and ``--solver``). Every cloud is meshed by every ``--method`` (:mod:`shapectrl.mesh`).
Per source and method:

* ``watertight``: the share of closed two-manifold surfaces; ``faces``: their mean count;
* ``seconds_per_cloud`` of the reconstruction alone (one thread);
* fidelity, in units of each cloud's median nearest-neighbour spacing s: ``surface_to_cloud`` is the
  mean and the 95th percentile, over 20,000 points drawn on the surface ∝ triangle area, of the
  distance to the nearest cloud point (surface where the cloud has no points shows as a large tail);
  ``cloud_to_surface`` the mean distance of a cloud point to the nearest drawn surface point (points
  the surface leaves out). The offset surface lies r = 3 s from the points by construction.
"""
from __future__ import annotations

import statistics
import sys
import time

import click
import numpy as np
import torch
from scipy.spatial import cKDTree

from benchmarks.record import command_line, emit, machine_info
from shapectrl.data.procedural import ProceduralShapes
from shapectrl.mesh import MESH_METHODS, Surface, median_spacing, reconstruct
from shapectrl.pipeline import ShapeGenerationConfig, ShapeGenerator

CLASSES = ("airplane", "chair", "car")
SURFACE_SAMPLES = 20_000


def surface_points(surface: Surface, n: int, generator: np.random.Generator) -> np.ndarray:
    """``n`` points drawn uniformly on ``surface`` (a triangle ∝ its area, then uniform barycentric)."""
    corners = surface.vertices[surface.faces].astype(np.float64)  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    faces = generator.choice(len(areas), n, p=areas / areas.sum())
    u, v = generator.random((2, n))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    a, b, c = corners[faces, 0], corners[faces, 1], corners[faces, 2]
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)


def fidelity(cloud: np.ndarray, surface: Surface, generator: np.random.Generator) -> dict[str, float]:
    """Distances between ``cloud (N, 3)`` and ``surface`` in units of the cloud's median spacing."""
    spacing = median_spacing(cloud)
    drawn = surface_points(surface, SURFACE_SAMPLES, generator)
    to_cloud = cKDTree(cloud).query(drawn)[0] / spacing
    to_surface = cKDTree(drawn).query(cloud)[0] / spacing
    return {"surface_to_cloud_mean": float(to_cloud.mean()), "surface_to_cloud_p95": float(np.quantile(to_cloud, 0.95)),
            "cloud_to_surface_mean": float(to_surface.mean())}


def mesh_row(clouds: list[np.ndarray], method: str, seed: int) -> dict:
    """Watertightness, size, time and fidelity of ``method``'s surfaces of ``clouds``, averaged."""
    generator = np.random.default_rng(seed)
    made, seconds, failed = [], [], 0
    for cloud in clouds:
        start = time.perf_counter()
        try:
            surface = reconstruct(cloud, method)
        except ValueError:
            failed += 1
            continue
        seconds.append(time.perf_counter() - start)
        made.append({"watertight": surface.watertight, "faces": len(surface.faces),
                     **fidelity(cloud, surface, generator)})
    row = {"method": method, "clouds": len(clouds), "failed": failed,
           "seconds_per_cloud": round(statistics.mean(seconds), 3) if seconds else None}
    for key in ("watertight", "faces", "surface_to_cloud_mean", "surface_to_cloud_p95", "cloud_to_surface_mean"):
        row[key] = round(statistics.mean(float(m[key]) for m in made), 4) if made else None
    return row


@click.command()
@click.option("-n", "n_per_class", type=click.IntRange(1), default=8, show_default=True, help="Clouds per class and source.")
@click.option("--points", type=click.IntRange(4), default=2048, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True)
@click.option("--solver", type=click.Choice(["ancestral", "dpm2"]), default="ancestral", show_default=True,
              help="Of the generated clouds (ancestral: the better one at 2,048 points, docs/sampling.md).")
@click.option("--method", "methods", type=click.Choice(MESH_METHODS), multiple=True, help="[default: all]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(n_per_class: int, points: int, steps: int, solver: str, methods: tuple[str, ...], seed: int,
         threads: int | None, out: str | None) -> None:
    """Mesh test and generated clouds by each method and print one JSON record."""
    if threads:
        torch.set_num_threads(threads)
    generator = ShapeGenerator.load(ShapeGenerationConfig(points=points, steps=steps, solver=solver), device="cpu")
    test = ProceduralShapes("test", n_per_class, 2048, CLASSES, 0, None, None)
    sources = {"data (test split)": [], "generated": []}
    for k, name in enumerate(CLASSES):
        data = test.points[test.labels == k][:, :points]
        sources["data (test split)"] += [c.numpy() for c in data]
        sources["generated"] += [c.numpy() for c in generator.sample(name, n=n_per_class, seed=seed).clouds]
    rows = []
    for source, clouds in sources.items():
        for method in methods or MESH_METHODS:
            rows.append({"source": source, **mesh_row(clouds, method, seed)})
            print(rows[-1], file=sys.stderr)
    emit({"clouds_per_class": n_per_class, "classes": list(CLASSES), "points": points,
          "generated_by": {"model": str(generator.path), "steps": steps, "solver": solver,
                           "guidance_scale": generator.config.guidance_scale},
          "seed": seed, "rows": rows, "threads": torch.get_num_threads(),
          "command": command_line("benchmarks.shapes_meshes"), "machine": machine_info()}, out)


if __name__ == "__main__":
    main()
