"""Test accuracy of the shape classifiers (the reward PointNet and the EdgeConv evaluator).

    python -m benchmarks.shapes_classifiers -n 100 --seed 0 --threads 2 \\
        --classifier shapectrl/weights/shapes-classifier-pointnet.safetensors \\
        --classifier shapectrl/weights/shapes-classifier-dgcnn.safetensors --out benchmarks/results/shapes_classifiers.json

For each classifier: accuracy and calibrated negative log-likelihood on ``n`` shapes per class of the
procedural *test* split, at 512 points (the training size) and at 2,048 (the generation size), in the
classifier's own normalisation; and the accuracy on 2,048-point clouds with Gaussian jitter of 0.02
model units per coordinate added, a first look at robustness to imperfect (generated) surfaces.
"""
from __future__ import annotations

import sys

import click
import torch
import torch.nn.functional as F

from benchmarks.record import command_line, emit, machine_info
from shapectrl.classifier import ShapeClassifier
from shapectrl.data.procedural import ProceduralShapes

JITTER = 0.02


def _scores(classifier: ShapeClassifier, points: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    logits = classifier.predict_logits_model_units(points)
    nll = F.cross_entropy(logits / classifier.temperature, labels)
    return {"accuracy": round(float((logits.argmax(1) == labels).float().mean()), 4), "nll": round(float(nll), 4)}


@click.command()
@click.option("--classifier", "paths", multiple=True, required=True, help="A classifier's model.safetensors (repeatable).")
@click.option("-n", "n_per_class", type=click.IntRange(1), default=100, show_default=True, help="Test shapes per class.")
@click.option("--data-dir", default=None, help="Procedural data cache (default: shapectrl's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the jitter.")
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def main(paths, n_per_class, data_dir, seed, threads, out) -> None:
    """Accuracy of shape classifiers on the procedural test split."""
    if threads:
        torch.set_num_threads(threads)
    from shapectrl.cli.train import default_data_dir

    rows = []
    for path in paths:
        model = ShapeClassifier.load(path).eval()
        test = ProceduralShapes("test", n_per_class, 2048, model.classes, 0, data_dir or default_data_dir(),
                                model.normalisation)
        labels = model.labels_from_dataset(test.labels)
        jitter = JITTER * torch.randn(test.points.shape, generator=torch.Generator().manual_seed(seed))
        row = {"classifier": path, "arch": model.config.arch, "temperature": round(model.temperature, 4),
               "points_512": _scores(model, test.points[:, :512], labels),
               "points_2048": _scores(model, test.points, labels),
               "points_2048_jitter": _scores(model, test.points + jitter, labels)}
        print(row, file=sys.stderr)
        rows.append(row)
    record = {"split": "test", "per_class": n_per_class, "jitter": JITTER, "rows": rows,
              "threads": torch.get_num_threads(),
              "command": command_line("benchmarks.shapes_classifiers"), "machine": machine_info()}
    emit(record, out, indent=1)


if __name__ == "__main__":
    main()
