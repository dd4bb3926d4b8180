"""``shapectrl data``: build and cache the procedural shape data set."""
from __future__ import annotations

import json
from pathlib import Path

import click

from common.cli import comma_names
from common.runtime import atomic_open
from shapectrl.data.families import CLASSES
from shapectrl.data.procedural import SPLIT_SEED_RANGES, ProceduralShapes


@click.group()
def data() -> None:
    """Procedural labelled shapes: build the cached splits."""


@data.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the cached .npz splits and normalisation.json.")
@click.option("--per-class", type=click.IntRange(1), default=2000, show_default=True, help="Training shapes per class.")
@click.option("--eval-per-class", type=click.IntRange(1), default=None,
              help="Validation and test shapes per class  [default: PER_CLASS / 5, at least 1]")
@click.option("--points", type=click.IntRange(1), default=2048, show_default=True, help="Points per shape.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Data-set seed: which shape seeds each split takes from its range.")
@click.option("--classes", default=",".join(CLASSES), show_default=True, help="Comma-separated class names.")
def build(out: Path, per_class: int, eval_per_class: int | None, points: int, seed: int, classes: str) -> None:
    """Generate the train, valid and test splits into OUT (reused when already there).

    Shape seeds: train from [0, 1e6), valid from [1e6, 2e6), test from [2e6, 3e6). Points are
    stored in model units; one global normalisation (PointFlow's: mean of all training points and
    one std of all their coordinates) is fitted on train and written to OUT/normalisation.json.
    """
    names = comma_names(classes, CLASSES, "--classes", "class")
    eval_per_class = eval_per_class or max(1, per_class // 5)
    train = None
    for split, count in (("train", per_class), ("valid", eval_per_class), ("test", eval_per_class)):
        norm = None if train is None else train.normalisation
        shapes = ProceduralShapes(split, count, points, names, seed, out, norm)
        train = train or shapes
        r = SPLIT_SEED_RANGES[split]
        how = (f"built in {shapes.build_seconds:.1f} s ({1e3 * shapes.build_seconds / len(shapes):.2f} ms/shape)"
               if shapes.build_seconds else "cached")
        click.echo(f"{split:5s}: {len(shapes)} shapes ({len(names)} classes x {count}) x {points} points, "
                   f"seeds in [{r.start}, {r.stop}), {how} -> {shapes.cache_path}")
    norm_path = out / "normalisation.json"
    with atomic_open(norm_path) as handle:
        json.dump({**train.normalisation.to_dict(), "fitted_on": train.cache_path.name,
                   "protocol": "PointFlow global: mean of all training points, std of all their coordinates"},
                  handle, indent=1)
        handle.write("\n")
    mean = ", ".join(f"{v:.4f}" for v in train.normalisation.mean)
    click.echo(f"normalisation (train): mean [{mean}], std {train.normalisation.std:.4f} -> {norm_path}")
