"""How generated clouds of a class differ from the test clouds: the spread of their sizes and attributes,
and how thick their surfaces are.

    python -m benchmarks.studies.shapes_spread [--model shapectrl/weights/shapes-rgdm-data.safetensors]
        [-n 64] [--points 2048] [--seed 0] [--threads 1] [--out benchmarks/studies/results/shapes_spread.json]

For each class (airplane, chair, car), ``n`` clouds are sampled as ``shapectrl generate --class C`` samples
them (the model itself, w = 1, clouds the reward classifier puts in another class drawn again up to
``--redraw`` times, 50 ``dpm2`` steps, bfloat16 where the CPU has it), and set beside the class's first ``n``
clouds of the procedural test split (the references of ``benchmarks.shapes_conditional``), all in model units:

* **extent** — the bounding box's width, height and depth (x, y, z): from the extreme points, and robustly,
  between the 0.5 % and 99.5 % quantiles of each coordinate (a diffuse fringe of points widens the first only);
* **attribute** — the class's attribute (chair back height, wing span, roof length), as ``measure_attributes``
  reads it for rewards and errors, with its histogram on ``--bins`` even bins over the test values' range;
* **thickness** — per point, the root of the smallest eigenvalue of the covariance of its 16 nearest
  neighbours (its distance scale off the local tangent plane), averaged over the points of a cloud.

Every quantity is given as mean and standard deviation over the clouds of a set.
"""
from __future__ import annotations

import sys

import click
import torch

from benchmarks.record import command_line, emit, machine_info
from shapectrl.conditions import measure_attributes
from shapectrl.data.families import CLASSES
from shapectrl.data.procedural import ProceduralShapes
from shapectrl.pipeline import load
from shapectrl.weights import DEFAULT_MODELS, weight_path

CLASS_ATTRIBUTE = {"airplane": "airplane_wing_span", "chair": "chair_back_height", "car": "car_roof_length"}


def local_thickness(clouds: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Mean over points of √λ_min of the covariance of each point's ``k`` nearest neighbours (itself
    included), ``clouds (B, N, 3) -> (B,)``."""
    out = []
    for x in clouds:
        nearest = torch.cdist(x, x).topk(k, largest=False).indices  # (N, k)
        centred = x[nearest] - x[nearest].mean(1, keepdim=True)  # (N, k, 3)
        smallest = torch.linalg.eigvalsh(centred.transpose(1, 2) @ centred / k)[:, 0]
        out.append(smallest.clamp(min=0).sqrt().mean())
    return torch.stack(out)


def extents(clouds: torch.Tensor, quantile: float = 0.0) -> torch.Tensor:
    """Bounding-box sizes ``(B, 3)`` of ``clouds (B, N, 3)`` between the ``quantile`` and 1 − ``quantile``
    quantiles of each coordinate (0: the extreme points)."""
    q = torch.tensor([quantile, 1 - quantile], dtype=clouds.dtype)
    bounds = torch.quantile(clouds, q, dim=1)  # (2, B, 3)
    return bounds[1] - bounds[0]


def _spread(values: torch.Tensor) -> dict[str, float]:
    return {"mean": round(float(values.mean()), 4), "sd": round(float(values.std()), 4)}


def describe(clouds: torch.Tensor, attribute: str, edges: torch.Tensor) -> dict:
    """Extents, the attribute (with its histogram on ``edges``) and thickness of clouds ``(B, N, 3)``."""
    full, robust = extents(clouds), extents(clouds, 0.005)
    values = measure_attributes(clouds, [attribute])[:, 0]
    return {
        "extent": {axis: _spread(full[:, i]) for i, axis in enumerate("xyz")},
        "robust_extent": {axis: _spread(robust[:, i]) for i, axis in enumerate("xyz")},
        attribute: _spread(values),
        "histogram": torch.histogram(values.clamp(edges[0], edges[-1]), edges).hist.int().tolist(),
        "thickness": _spread(local_thickness(clouds)),
    }


@click.command()
@click.option("--model", "model_path", default=None, metavar="FILE",
              help="A controlled shape model [default: the shipped default, shapes-rgdm-data].")
@click.option("-n", "n_samples", type=click.IntRange(2), default=64, show_default=True,
              help="Clouds per class, generated and from the test split.")
@click.option("--points", type=click.IntRange(16), default=2048, show_default=True)
@click.option("--redraw", type=click.IntRange(0), default=4, show_default=True,
              help="As shapectrl generate --redraw.")
@click.option("--bins", type=click.IntRange(2), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads (one per job when two run).")
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(model_path, n_samples, points, redraw, bins, seed, threads, out) -> None:
    """Spread of sizes and attributes, and surface thickness, of generated clouds against test clouds."""
    if threads:
        torch.set_num_threads(threads)
    generator = load("rgdm", model=model_path, redraw=redraw, points=points)
    test = ProceduralShapes("test", n_samples, 2048, CLASSES, 0)
    classes = {}
    for cls, attribute in CLASS_ATTRIBUTE.items():
        references = test.points[test.labels == CLASSES.index(cls)][:, :points].float()
        result = generator.sample(cls, n=n_samples, seed=seed)
        edges = torch.linspace(*measure_attributes(references, [attribute])[:, 0].aminmax(), bins + 1)
        classes[cls] = {"attribute": attribute, "bin_edges": [round(e, 4) for e in edges.tolist()],
                        "test": describe(references, attribute, edges),
                        "generated": describe(result.clouds.float(), attribute, edges),
                        "sampling_seconds": round(result.seconds, 1)}
        print(cls, classes[cls], file=sys.stderr)
    emit({"benchmark": "shapes_spread", "command": command_line("benchmarks.studies.shapes_spread"), "model": str(weight_path(model_path or
          DEFAULT_MODELS["rgdm"])), "n": n_samples, "points": points, "redraw": redraw, "seed": seed,
          "sampler": f"{generator.config.steps} {generator.config.solver} steps, {generator.config.precision}",
          "machine": machine_info(), "classes": classes}, out)


if __name__ == "__main__":
    main()
