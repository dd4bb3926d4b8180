"""Does a shape prior stay accurate above the cloud size it was trained on? Its ε-prediction loss on
real clouds at N points, with the ``pvd`` voxel grid averaging all N points or the training size's.

    python -m benchmarks.shapes_points [--model PATH] [--points 512 --points 2048] [--t 300 ...] [-n 32]
        [--seed 0] [--out benchmarks/results/shapes_points.json]

The clouds are the first ``n`` of the procedural validation split (``n / 5`` per class, 2,048 points
each, the model's normalisation); a cloud of N points is the first N of them (they are in random
order). For each diffusion step t, every cloud is noised once (seed fixed, the same ε for every row)
and the loss is mean ‖ε − ε̂‖² per coordinate. A model whose features depend on N shows it as a loss
that grows with N at a fixed t; the training size's row is the reference.
"""
from __future__ import annotations

import sys

import click
import torch

from benchmarks.record import command_line, emit, machine_info
from shapectrl.data.procedural import ProceduralShapes
from shapectrl.prior import ShapeDiffusion
from shapectrl.weights import PRIOR, weight_path


def epsilon_loss(model: ShapeDiffusion, clouds: torch.Tensor, t: int, seed: int) -> float:
    """Mean squared ε error of ``model`` on ``clouds (B, N, 3)`` (normalised) noised to step ``t``."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.full((len(clouds),), t)
    z, eps = model.diffusion.add_noise(clouds, steps, model.full_mask(clouds), generator)
    with torch.no_grad():
        eps_hat = model.denoiser(z, steps.to(z.dtype) / model.diffusion.n_steps)
    return float(((eps_hat - eps) ** 2).mean())


def loss_table(model: ShapeDiffusion, clouds: torch.Tensor, sizes: tuple[int, ...], steps: tuple[int, ...],
               seed: int = 0) -> list[dict]:
    """One row per (N, grid): the loss at every t; ``grid`` is ``all`` (the voxel grid averages the N
    points) or ``training size`` (it averages the first ``n_train_points``)."""
    denoiser = model.denoiser
    trained = getattr(denoiser, "grid_points", None)
    rows = []
    try:
        for n in sizes:
            grids = [("all", None)] + ([("training size", trained)] if trained is not None and n > trained else [])
            for name, k in grids:
                if trained is not None:  # a pvd denoiser: its grid reads k points (None: all)
                    denoiser.grid_points = k
                rows.append({"points": n, "grid": name,
                             "loss": {str(t): round(epsilon_loss(model, clouds[:, :n], t, seed), 5) for t in steps}})
                print(rows[-1], file=sys.stderr)
    finally:
        if trained is not None:
            denoiser.grid_points = trained
    return rows


@click.command()
@click.option("--model", "model_path", default=None, help="A shape prior (default: the shipped one).")
@click.option("--points", "sizes", type=click.IntRange(1), multiple=True, default=(512, 1024, 2048), show_default=True)
@click.option("--t", "steps", type=click.IntRange(0), multiple=True, default=(50, 150, 300, 500, 800), show_default=True)
@click.option("-n", "n_clouds", type=click.IntRange(5), default=40, show_default=True, help="Validation clouds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(model_path, sizes, steps, n_clouds, seed, threads, out) -> None:
    """Print (and optionally write) the loss table as one JSON record."""
    if threads:
        torch.set_num_threads(threads)
    path = str(weight_path(model_path or PRIOR))
    model = ShapeDiffusion.load(path).eval()
    if max(sizes) > 2048:
        raise click.BadParameter("the procedural clouds hold 2,048 points", param_hint="--points")
    shapes = ProceduralShapes("valid", per_class=n_clouds // 5, n_points=2048)
    clouds = model.normalisation.normalise(torch.as_tensor(shapes.points, dtype=torch.float32))
    record = {"model": path, "n_train_points": model.config.n_train_points, "clouds": len(clouds), "seed": seed,
              "rows": loss_table(model, clouds, tuple(sizes), tuple(steps), seed), "threads": torch.get_num_threads(),
              "command": command_line("benchmarks.shapes_points"), "machine": machine_info()}
    emit(record, out, indent=1)


if __name__ == "__main__":
    main()
