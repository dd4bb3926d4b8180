"""``shapectrl sample``: draw point clouds from a trained prior and write them as PLY files."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
from tqdm import tqdm

from common.cli import compute_device, compute_options, precision_option, solver_option
from common.diffusion import SOLVERS
from common.runtime import resolve_precision, seed_everything, set_precision
from shapectrl.io import write_ply
from shapectrl.prior import ShapeDiffusion


@click.command()
@click.option("-n", "n_samples", type=click.IntRange(1), default=16, show_default=True, help="Clouds to draw.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A model.safetensors from 'shapectrl train prior'.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the PLY files (created if missing).")
@click.option("--points", type=click.IntRange(1), default=2048, show_default=True,
              help="Points per cloud (the denoiser runs on any N, also more than it was trained on).")
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True,
              help="Reverse steps; below the model's T a respaced sampler is used.")
@solver_option("dpm2")
@precision_option()
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--prefix", default="sample", show_default=True, help="File names are PREFIX_0000.ply, ...")
@click.option("--normalised", is_flag=True, help="Write the model's normalised frame instead of model units.")
@click.option("--overwrite", is_flag=True, help="Replace PLY files of the same names already in OUT.")
@click.option("--seed", type=int, default=0, show_default=True)
@compute_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def sample(n_samples, model_path, out, points, steps, solver, precision, batch_size, prefix, normalised, overwrite, seed, device, threads,
           as_json) -> None:
    """Sample N clouds from a shape prior into OUT/PREFIX_0000.ply, ... (in model units unless --normalised)."""
    dev = compute_device(device, threads)
    precision = resolve_precision(precision, dev)
    model = set_precision(ShapeDiffusion.load(model_path).to(dev).eval(), precision)
    width = max(4, len(str(n_samples - 1)))
    paths = [out / f"{prefix}_{k:0{width}d}.ply" for k in range(n_samples)]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise click.UsageError(f"{existing[0]} already exists ({len(existing)} of the {n_samples} files): "
                               "pass --overwrite or choose another --out or --prefix")
    generator = seed_everything(seed)
    t0 = time.perf_counter()
    with tqdm(total=n_samples, desc="sampling", unit="cloud", disable=None) as bar:
        clouds = model.sample_many(n_samples, points, steps, generator, batch_size, on_batch=bar.update,
                                   solver=SOLVERS[solver])
    seconds = time.perf_counter() - t0
    if not normalised:
        clouds = model.denormalise(clouds)
    out.mkdir(parents=True, exist_ok=True)
    for path, cloud in zip(paths, clouds):
        write_ply(path, cloud)
    summary = {"out": str(out), "clouds": n_samples, "points": points, "sampling_steps": min(steps, model.config.n_steps), "solver": solver,
               "precision": precision, "frame": "normalised" if normalised else "model units", "seconds": round(seconds, 2),
               "device": str(dev)}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"wrote {n_samples} clouds of {points} points to {out} ({summary['frame']}) in {seconds:.1f} s "
                   f"({summary['sampling_steps']} {solver} steps, {precision}, {dev})")
