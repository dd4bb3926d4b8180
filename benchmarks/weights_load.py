"""How long loading each shipped model takes: the safe loader against the pickle loader it replaced.

    python -m benchmarks.weights_load [--repeats 7] [--threads 1] [--out benchmarks/results/weights_load.json]

For every shipped weights file (``molctrl/weights``, ``shapectrl/weights``), two ways to the same
trained network on the CPU, each timed from the file name to the model with its weights:

* ``safetensors``: :func:`common.exports.load_module` — the SHA-256 check against the record, the
  safetensors read, the typed config, the network built and every tensor checked before loading;
* ``pickle``: what every loader did before: ``torch.load(..., weights_only=False)`` of the same tree
  written with ``torch.save`` (the old ``.pt`` files were exactly that), the network built, then
  ``load_state_dict``. It runs whatever the pickle says, so it is timed here only on files this
  command itself wrote.

The two are interleaved (round robin) in one process; each time is the median of ``--repeats``.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click
import torch

from benchmarks.record import emit, machine_info
from common.exports import load_module
from common.weights import read_tree
from molctrl.noisy_predictor import NoisyPropertyPredictor
from molctrl.predictor import PropertyPredictor
from molctrl.prior import MoleculeDiffusion
from molctrl.weights import WEIGHTS_DIR as MOLECULE_WEIGHTS
from shapectrl.classifier import ShapeClassifier
from shapectrl.prior import ShapeDiffusion
from shapectrl.weights import WEIGHTS_DIR as SHAPE_WEIGHTS

CLASSES = (MoleculeDiffusion, PropertyPredictor, NoisyPropertyPredictor, ShapeDiffusion, ShapeClassifier)


def _pickle_load(path: Path) -> torch.nn.Module:
    tree = torch.load(path, map_location="cpu", weights_only=False)  # the replaced loader; files written below
    model = {cls.kind: cls for cls in CLASSES}[tree["kind"]].from_metadata(tree)
    model.load_state_dict(tree["state_dict"])
    return model


def _seconds(load, path: Path) -> float:
    t0 = time.perf_counter()
    load(path)
    return time.perf_counter() - t0


@click.command()
@click.option("--repeats", type=click.IntRange(1), default=7, show_default=True, help="Timings per file and loader.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch CPU threads.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON record here.")
def main(repeats: int, threads: int, out: str | None) -> None:
    """Median load time of every shipped model, safetensors against the pickle loader it replaced."""
    torch.set_num_threads(threads)
    files = sorted([*MOLECULE_WEIGHTS.glob("*.safetensors"), *SHAPE_WEIGHTS.glob("*.safetensors")])
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        pickles = {path: Path(folder) / f"{path.stem}.pt" for path in files}
        for path, legacy in pickles.items():
            torch.save(read_tree(path), legacy)
        safe = lambda path: load_module(path, CLASSES)  # noqa: E731
        for path in files:  # one untimed load of each, so that neither loader pays for first imports
            safe(path), _pickle_load(pickles[path])
        times = {path: {"safetensors": [], "pickle": []} for path in files}
        for _ in range(repeats):
            for path in files:
                times[path]["safetensors"].append(_seconds(safe, path))
                times[path]["pickle"].append(_seconds(_pickle_load, pickles[path]))
    for path in files:
        ms = {name: round(1000 * statistics.median(values), 2) for name, values in times[path].items()}
        rows[path.name] = ms | {"ratio": round(ms["safetensors"] / ms["pickle"], 3),
                                "megabytes": round(path.stat().st_size / 1e6, 2)}
    total = {name: round(sum(row[name] for row in rows.values()), 1) for name in ("safetensors", "pickle")}
    emit({"benchmark": "weights_load", "command": f"python -m benchmarks.weights_load --repeats {repeats} "
                                                  f"--threads {threads}",
          "repeats": repeats, "threads": threads, "machine": machine_info(), "milliseconds": rows,
          "total_ms": total}, out)


if __name__ == "__main__":
    main()
