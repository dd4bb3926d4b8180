"""``shapectrl evaluate``: MMD, COV and 1-NNA of sampled clouds against reference clouds."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch

from common.cli import comma_names, compute_device, compute_options
from shapectrl.io import ShapeFileError, read_point_sets
from shapectrl.metrics.generation import DISTANCES, compute_all_metrics

_NAMES = {"cd": "CD", "emd": "EMD (PointFlow approxmatch)", "emd-auction": "EMD (auction)", "emd-exact": "EMD (exact)"}


class InputFileError(click.ClickException):
    """A cloud file that cannot be read: one ``Error: ...`` line on stderr, exit code 2."""

    exit_code = 2


def _read(path: Path, limit: int | None) -> torch.Tensor:
    try:
        points = read_point_sets(path)
    except ShapeFileError as err:
        raise InputFileError(str(err)) from None
    return torch.from_numpy(points[:limit])


@click.command("evaluate")
@click.argument("samples", type=click.Path(path_type=Path))
@click.argument("reference", type=click.Path(path_type=Path))
@click.option("--metrics", "metric_text", default="cd,emd", show_default=True,
              help="Cloud distances: cd, emd (PointFlow's approximate EMD, comparable with published numbers), "
                   "emd-auction (within 0.1 % of exact), emd-exact (POT).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first LIMIT clouds of each set.")
@compute_options
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
def evaluate(samples: Path, reference: Path, metric_text: str, limit: int | None, device: str, threads: int | None,
             as_json: bool) -> None:
    """MMD, COV and 1-NNA (PointFlow's definitions) of SAMPLES against REFERENCE.

    Each is an .npz with clouds under the key 'points' (M, N, 3) or a folder of .ply files; both
    sets need the same N and the same frame. CD is the sum of both mean squared nearest-neighbour
    distances; EMD the mean matched Euclidean distance. COV and 1-NNA are printed in %.
    """
    metrics = comma_names(metric_text, DISTANCES, "--metrics", "metric")
    dev = compute_device(device, threads)
    s, r = _read(samples, limit), _read(reference, limit)
    if s.shape[1] != r.shape[1]:
        raise click.ClickException(f"{samples} has {s.shape[1]} points per cloud but {reference} has {r.shape[1]} "
                                   "(expected the same N)")
    t0 = time.perf_counter()

    def progress(label: str, done: int, total: int) -> None:
        if done == total:
            click.echo(f"  {label}: {total} pairs done at {time.perf_counter() - t0:.1f} s", err=True)

    results = compute_all_metrics(s.to(dev), r.to(dev), metrics, progress=progress)
    seconds = time.perf_counter() - t0
    if as_json:
        out = {"samples": str(samples), "reference": str(reference), "n_samples": len(s), "n_reference": len(r),
               "n_points": s.shape[1], "seconds": round(seconds, 3), "metrics": results}
        click.echo(json.dumps(out, indent=1))
        return
    lines = [f"{samples}: {len(s)} clouds vs {reference}: {len(r)} clouds, {s.shape[1]} points each ({seconds:.1f} s)"]
    for metric in metrics:
        lines.append(f"  {_NAMES[metric]:28s} MMD {results[f'mmd-{metric}']:.4e}   "
                     f"COV {100 * results[f'cov-{metric}']:6.2f} %   1-NNA {100 * results[f'1nna-{metric}']:6.2f} %")
    click.echo("\n".join(lines))
